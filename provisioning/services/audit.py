"""The audit log: who did what, from where, to which license and activation.

Every change at HQ appends its event in the same transaction as the change (``event``
builds it); ``AuditLog.record_audit`` is for events that have no change of their own (a
revocation sent over MQTT, a technician's pickups). The log is append-only: nothing
here, or anywhere, updates or deletes an event. An event never holds a license key.
"""

from ..models import Actor, AuditEvent
from ..storage import Store


def event(
    now: int,
    actor: Actor,
    action: str,
    license_id: str | None = None,
    activation_id: str | None = None,
    detail: str | None = None,
) -> AuditEvent:
    return AuditEvent(now, actor.who, actor.source, action, license_id, activation_id, detail)


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def audit(self, limit: int, license_id: str | None = None) -> list[AuditEvent]:
        """The newest ``limit`` events (of one license), oldest first."""
        with self.store.read() as tx:
            return tx.list_audit(limit, license_id)

    def record_audit(self, *events: AuditEvent) -> None:
        """Append ``events`` in one transaction: all or none."""
        with self.store.write() as tx:
            for ev in events:
                tx.append_audit(ev)
