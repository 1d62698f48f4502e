"""The audit log: who did what, from where, to which license and activation.

Every change at HQ appends its event in the same transaction as the change (``event``
builds it); ``AuditLog.record_audit`` is for events that have no change of their own (a
revocation sent over MQTT, a technician's pickups). The log is append-only: nothing
here, or anywhere, updates or deletes an event. An event never holds a license key, and
is one line: a control character in any of its texts is written as an escape.
"""

import re

from ..models import Actor, AuditEvent
from ..storage import Store

# C0, DEL, C1, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str | None) -> str | None:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``): one line."""
    if text is None or not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def event(
    now: int,
    actor: Actor,
    action: str,
    license_id: str | None = None,
    activation_id: str | None = None,
    detail: str | None = None,
) -> AuditEvent:
    return AuditEvent(
        now,
        one_line(actor.who) or "",
        one_line(actor.source) or "",
        one_line(action) or "",
        one_line(license_id),
        one_line(activation_id),
        one_line(detail),
    )


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def audit(self, limit: int, license_id: str | None = None) -> list[AuditEvent]:
        """The newest ``limit`` events (of one license), oldest first."""
        with self.store.read() as tx:
            return tx.list_audit(limit, license_id)

    def record_audit(self, *events: AuditEvent) -> None:
        """Append ``events`` in one transaction (all or none), one line each."""
        with self.store.write() as tx:
            for ev in events:
                tx.append_audit(
                    event(
                        ev.at,
                        Actor(ev.actor, ev.source),
                        ev.action,
                        ev.license_id,
                        ev.activation_id,
                        ev.detail,
                    )
                )
