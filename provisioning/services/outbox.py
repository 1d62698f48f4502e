"""The outbox: what each device must be told after HQ changed its standing, until the
device's own status confirms it.

``licenses.set_status`` (suspend, revoke, reinstate) and ``issuing.deactivate`` (an
operator's) write one entry per device in the transaction of the change
(``Tx.outbox_license``, ``Tx.outbox_activation``); a newer change replaces an older
one. A deliverer (the MQTT bridge, ``push``) then:

- ``take_due``: claims the entries due now (of several replicas, one wins each), makes
  what each publishes the first time it is taken — a signed revocation dated at the
  change (``suspended``, ``revoked``; ``deactivated``, which agents of 0.1.0 do not
  read: activations of claims format 1 without a device key are sent ``revoked``),
  audited ``mqtt_revocation``, or, for a reinstatement, a fresh machine file, issued
  and audited like any renewal (``renew``) — and sets when it is due again
  unless confirmed (``RETRY_S``, doubling up to ``RETRY_MAX_S``);
- ``deliver``: the same for chosen activations, due or not (``push``);
- ``confirm``: what a device's status says it holds (``Held``) confirms its entry, or
  makes it due again now (the device is connected), at most every ``RESEND_GAP_S``; a
  file that did not lift the device's revocation is replaced by a newer one;
- a return (services/usage.py) drops a reinstatement still to be sent, and one
  prepared before it (an older HQ's) is dropped when next taken: the device refuses
  any file of a returned activation, and HQ issues it none;
- ``rearm``: after an outage of the broker or of the deliverer, everything sent and
  unconfirmed is due now (what the broker kept retained may be lost, and so may the
  status a device sent when it reconnected): a reinstatement with a new file, since a
  device answers a copy of the file it holds with nothing.

Nothing here publishes, reads the clock or logs; ``now`` comes from the caller.
"""

from dataclasses import dataclass

from agent.wire import revocation

from ..models import LICENSE_ACTIVE, Activation, Actor, OutboxEntry
from ..storage import Store, Tx
from .audit import event
from .issuing import Issuing
from .licenses import license_status

RETRY_S = 30
RETRY_MAX_S = 3600
RESEND_GAP_S = 10
BATCH = 500
_REASON = {"suspend": "suspended", "revoke": "revoked", "deactivate": "deactivated"}
FOREVER = 1 << 62


def reason_for(action: str, act: Activation) -> str:
    """The revocation reason a device is sent for ``action``. Agents of 0.1.0 know only
    ``revoked`` and ``suspended``: an activation that reads claims format 1 and has no
    device key (which only later agents make) may run one."""
    reason = _REASON[action]
    later_agent = act.claims_format >= 2 or act.device_key is not None
    if reason not in revocation.REASONS_V0_1 and not later_agent:
        return "revoked"
    return reason


def _takes_files(act: Activation) -> bool:
    """HQ may send the activation a file: live, and not given back (a returned device
    refuses any file of it, and a copy of its data put back must get none)."""
    return act.deactivated_at is None and act.return_frees_at is None


def retry_after_s(attempts: int) -> int:
    return min(RETRY_MAX_S, RETRY_S << min(attempts, 20))


@dataclass(frozen=True)
class Held:
    """What a device's status says it holds: its file's serial, the revocation it
    recorded (its reason, "" for none) and when HQ issued it (None: the status of an
    agent of 0.1.0 does not say, nor which reason)."""

    serial: int
    revoked: str
    revoked_at: int | None


@dataclass(frozen=True)
class Delivery:
    """An entry taken for delivery and what to publish for it."""

    activation: Activation
    entry: OutboxEntry
    payload: bytes


def confirms(entry: OutboxEntry, act: Activation, held: Held) -> bool:
    if entry.is_file:
        return entry.serial is not None and held.serial >= entry.serial and not held.revoked
    if not held.revoked:
        return False
    if held.revoked_at is None:  # an agent of 0.1.0: it says only that it is revoked
        return True
    return held.revoked == reason_for(entry.action, act) and held.revoked_at >= entry.created_at


class Outbox:
    def __init__(self, store: Store, issuing: Issuing) -> None:
        self.store = store
        self.issuing = issuing

    def pending(self, license_id: str | None = None) -> list[OutboxEntry]:
        with self.store.read() as tx:
            return tx.outbox_pending(license_id)

    def get(self, activation_id: str) -> OutboxEntry | None:
        with self.store.read() as tx:
            return tx.outbox_get(activation_id)

    def take_due(self, now: int, actor: Actor, limit: int = BATCH) -> list[Delivery]:
        """Claim and make the entries due at ``now`` (at most ``limit``)."""
        with self.store.write() as tx:
            due = tx.outbox_due(now, limit)
            return self._take(tx, due, now, actor, due_by=now)

    def deliver(self, activation_ids: list[str], now: int, actor: Actor) -> list[Delivery]:
        """Claim and make the pending entries of these activations, due or not; a
        reinstatement with a new file (``push`` renews: a device that holds the file
        already says nothing of a copy, and would never confirm)."""
        out: list[Delivery] = []
        for start in range(0, len(activation_ids), BATCH):
            with self.store.write() as tx:
                entries = [tx.outbox_get(a) for a in activation_ids[start : start + BATCH]]
                pending = [e for e in entries if e is not None and e.confirmed_at is None]
                out += self._take(tx, pending, now, actor, due_by=FOREVER, fresh_files=True)
        return out

    def _take(
        self,
        tx: Tx,
        entries: list[OutboxEntry],
        now: int,
        actor: Actor,
        due_by: int,
        fresh_files: bool = False,
    ) -> list[Delivery]:
        out = []
        for entry in entries:
            act = tx.get_activation(entry.activation_id)
            next_at = now + retry_after_s(entry.attempts)
            if act is None or not tx.outbox_claim(act.id, now, next_at, due_by):
                continue
            payload = None if fresh_files and entry.is_file else entry.payload
            if payload is not None and entry.is_file and not _takes_files(act):
                self._drop(tx, act, now, actor)  # prepared before the device gave it back
                continue
            if payload is None:
                payload = self._make(tx, entry, act, now, actor)
                made = tx.outbox_get(act.id)
                if payload is None or made is None:
                    continue
                entry = made
            out.append(Delivery(act, entry, payload))
        return out

    def _make(
        self, tx: Tx, entry: OutboxEntry, act: Activation, now: int, actor: Actor
    ) -> bytes | None:
        """What the entry publishes, recorded with it; None when nothing can be told
        any more (a reinstated license that can get no file now: the entry is dropped)."""
        if not entry.is_file:
            reason = reason_for(entry.action, act)
            signing = self.issuing.keys.signing_key(tx, act.keyring)
            # Dated at the change, and after the last file HQ issued the device: a device
            # ignores a revocation that is not newer than the file it holds.
            issued_at = max(entry.created_at, act.last_issued_at + 1)
            token = revocation.sign_revocation(
                signing, revocation.Revocation(act.id, issued_at, reason)
            )
            tx.outbox_prepared(act.id, reason, None, token)
            tx.append_audit(event(now, actor, "mqtt_revocation", act.license_id, act.id, reason))
            return token
        lic = tx.get_license(act.license_id)
        usable = lic is not None and license_status(lic, now) == LICENSE_ACTIVE
        if lic is None or not usable or not _takes_files(act):
            self._drop(tx, act, now, actor)
            return None
        tx.lock_license(lic.id)
        rec = self.issuing.issuer(tx, lic).issue(tx, act, None, now, new=False)
        detail = f"serial={rec.claims.serial} reinstated"
        tx.append_audit(event(now, actor, "renew", lic.id, act.id, detail))
        machine_file = rec.seal().machine_file
        tx.outbox_prepared(act.id, None, rec.claims.serial, machine_file)
        return machine_file

    @staticmethod
    def _drop(tx: Tx, act: Activation, now: int, actor: Actor) -> None:
        tx.outbox_drop(act.id)
        tx.append_audit(event(now, actor, "mqtt_refused", act.license_id, act.id, "outbox"))

    def confirm(self, act: Activation, held: Held, now: int) -> OutboxEntry | None:
        """Record what the device's status says it holds: returns the entry it confirms
        (None if it confirms nothing). An unconfirmed entry is made due now, at most
        every RESEND_GAP_S: the device is connected to hear it."""
        with self.store.read() as tx:
            entry = tx.outbox_get(act.id)
        if entry is None or entry.confirmed_at is not None:
            return None
        with self.store.write() as tx:
            if confirms(entry, act, held):
                return entry if tx.outbox_confirm(act.id, now) else None
            stuck = held.revoked and held.revoked_at is not None
            if entry.is_file and entry.serial is not None and held.serial >= entry.serial and stuck:
                # It installed the file, which did not lift its revocation (issued in the
                # same second as it, or before): a newer one, strictly later.
                assert held.revoked_at is not None
                tx.outbox_unprepare(act.id, max(now, held.revoked_at + 1))
            else:
                tx.outbox_hasten(act.id, now, now - RESEND_GAP_S)
        return None

    def heard_from(self, activation_id: str, now: int) -> None:
        """The device sent something, so it is connected: its unconfirmed entry is due
        now, at most every RESEND_GAP_S."""
        with self.store.write() as tx:
            tx.outbox_hasten(activation_id, now, now - RESEND_GAP_S)

    def rearm(self, now: int) -> int:
        with self.store.write() as tx:
            return tx.outbox_rearm(now)
