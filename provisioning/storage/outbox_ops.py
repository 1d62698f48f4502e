"""The operations of the MQTT channel's state (schema version 7): the bridges' last
answer per activation (the rate limit's check-and-set, which every replica shares) and
the outbox of what each device must be told.

Portable SQL, like storage/tx.py, which mixes these into ``Tx``: named parameters,
``ON CONFLICT ... DO UPDATE`` with ``excluded``, no engine's own functions. Payloads are
base64 text, so that no engine needs a binary type.
"""

import base64
from typing import Any

from ..models import BridgeAnswer, OutboxEntry

_OUTBOX = (
    "SELECT activation_id, license_id, action, created_at, next_at, attempts, sent_at, "
    "reason, serial, payload, confirmed_at FROM device_outbox"
)
# A newer change replaces what a device had still to be told. A reinstatement that
# follows a revocation in the same second waits one second: a file lifts a recorded
# revocation only if HQ issued it strictly later (agent/verdict.py).
_OUTBOX_UPSERT = (
    " ON CONFLICT (activation_id) DO UPDATE SET action = excluded.action, "
    "created_at = excluded.created_at, attempts = 0, sent_at = NULL, reason = NULL, "
    "serial = NULL, payload = NULL, confirmed_at = NULL, next_at = CASE "
    "WHEN excluded.action = 'reinstate' AND device_outbox.action IN ('suspend', 'revoke') "
    "AND device_outbox.created_at >= excluded.created_at "
    "THEN device_outbox.created_at + 1 ELSE excluded.next_at END"
)
_OUTBOX_ONE = (  # constants only, no input
    "INSERT INTO device_outbox (activation_id, license_id, action, created_at, next_at, "  # noqa: S608
    "attempts) VALUES (:id, :lid, :action, :now, :now, 0)" + _OUTBOX_UPSERT
)
_OUTBOX_LICENSE = (
    "INSERT INTO device_outbox (activation_id, license_id, action, created_at, next_at, "  # noqa: S608
    "attempts) SELECT id, license_id, :action, :now, :now, 0 FROM activations "
    "WHERE license_id = :lid AND deactivated_at IS NULL" + _OUTBOX_UPSERT
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _outbox(row: Any) -> OutboxEntry:
    values = list(row)
    values[9] = None if values[9] is None else base64.b64decode(values[9])
    return OutboxEntry(*values)


class OutboxOps:
    """Mixed into ``Tx``, which supplies the three query helpers."""

    def _one(self, sql: str, **params: Any) -> Any:  # pragma: no cover - Tx's
        raise NotImplementedError

    def _all(self, sql: str, **params: Any) -> list[Any]:  # pragma: no cover - Tx's
        raise NotImplementedError

    def _run(self, sql: str, **params: Any) -> int:  # pragma: no cover - Tx's
        raise NotImplementedError

    # -- the MQTT bridges' answers -----------------------------------------------------
    def bridge_answer(self, activation_id: str) -> BridgeAnswer | None:
        row = self._one(
            "SELECT activation_id, answered_at, serial, machine_file FROM bridge_answers "
            "WHERE activation_id = :id",
            id=activation_id,
        )
        if row is None:
            return None
        return BridgeAnswer(row[0], row[1], row[2], base64.b64decode(row[3]))

    def claim_bridge_answer(self, activation_id: str, now: int, min_interval_s: int) -> bool:
        """The right to issue this activation a new file over MQTT at ``now``: granted
        once per ``min_interval_s``, whichever process or host asks (one guarded
        statement: of two replicas asking at once, one wins)."""
        return (
            self._run(
                "INSERT INTO bridge_answers (activation_id, answered_at, serial, machine_file) "
                "VALUES (:id, :now, 0, '') ON CONFLICT (activation_id) DO UPDATE "
                "SET answered_at = excluded.answered_at "
                "WHERE bridge_answers.answered_at <= :latest",
                id=activation_id,
                now=now,
                latest=now - min_interval_s,
            )
            == 1
        )

    def store_bridge_file(self, activation_id: str, serial: int, machine_file: bytes) -> None:
        self._run(
            "UPDATE bridge_answers SET serial = :serial, machine_file = :file "
            "WHERE activation_id = :id",
            serial=serial,
            file=_b64(machine_file),
            id=activation_id,
        )

    # -- the outbox: what devices must be told ---------------------------------------
    def outbox_license(self, license_id: str, action: str, now: int) -> int:
        """Record ``action`` (suspend, revoke, reinstate) for every live activation of a
        license; returns how many."""
        return self._run(_OUTBOX_LICENSE, action=action, now=now, lid=license_id)

    def outbox_activation(self, activation_id: str, license_id: str, action: str, now: int) -> None:
        """Record ``action`` (deactivate) for one activation."""
        self._run(_OUTBOX_ONE, id=activation_id, lid=license_id, action=action, now=now)

    def outbox_get(self, activation_id: str) -> OutboxEntry | None:
        row = self._one(f"{_OUTBOX} WHERE activation_id = :id", id=activation_id)
        return None if row is None else _outbox(row)

    def outbox_pending(self, license_id: str | None = None) -> list[OutboxEntry]:
        """Every entry no status has confirmed yet (of one license)."""
        if license_id is None:
            rows = self._all(f"{_OUTBOX} WHERE confirmed_at IS NULL ORDER BY next_at")
        else:
            rows = self._all(
                f"{_OUTBOX} WHERE confirmed_at IS NULL AND license_id = :lid ORDER BY next_at",
                lid=license_id,
            )
        return [_outbox(r) for r in rows]

    def outbox_due(self, now: int, limit: int) -> list[OutboxEntry]:
        rows = self._all(
            f"{_OUTBOX} WHERE confirmed_at IS NULL AND next_at <= :now "
            "ORDER BY next_at LIMIT :limit",
            now=now,
            limit=limit,
        )
        return [_outbox(r) for r in rows]

    def outbox_claim(self, activation_id: str, now: int, next_at: int, due_by: int) -> bool:
        """Take a pending entry due by ``due_by`` for delivery now (of two deliverers
        asking, one wins) and set when it is due again unless confirmed."""
        return (
            self._run(
                "UPDATE device_outbox SET next_at = :next, attempts = attempts + 1, "
                "sent_at = :now WHERE activation_id = :id AND confirmed_at IS NULL "
                "AND next_at <= :due",
                next=next_at,
                now=now,
                id=activation_id,
                due=due_by,
            )
            == 1
        )

    def outbox_prepared(
        self, activation_id: str, reason: str | None, serial: int | None, payload: bytes
    ) -> None:
        self._run(
            "UPDATE device_outbox SET reason = :reason, serial = :serial, payload = :payload "
            "WHERE activation_id = :id",
            reason=reason,
            serial=serial,
            payload=_b64(payload),
            id=activation_id,
        )

    def outbox_unprepare(self, activation_id: str, next_at: int) -> None:
        """Forget a file that did not lift the device's revocation: a newer one is made
        at ``next_at``."""
        self._run(
            "UPDATE device_outbox SET serial = NULL, payload = NULL, next_at = :next "
            "WHERE activation_id = :id AND confirmed_at IS NULL",
            next=next_at,
            id=activation_id,
        )

    def outbox_hasten(self, activation_id: str, now: int, sent_before: int) -> bool:
        """Make a pending entry due now if it was last sent before ``sent_before`` (the
        device was heard from, so it is connected)."""
        return (
            self._run(
                "UPDATE device_outbox SET next_at = :now WHERE activation_id = :id "
                "AND confirmed_at IS NULL AND next_at > :now "
                "AND (sent_at IS NULL OR sent_at < :before)",
                now=now,
                id=activation_id,
                before=sent_before,
            )
            == 1
        )

    def outbox_confirm(self, activation_id: str, now: int) -> bool:
        return (
            self._run(
                "UPDATE device_outbox SET confirmed_at = :now "
                "WHERE activation_id = :id AND confirmed_at IS NULL",
                now=now,
                id=activation_id,
            )
            == 1
        )

    def outbox_drop(self, activation_id: str) -> None:
        """Nothing can be told any more (the license can get no file)."""
        self._run("DELETE FROM device_outbox WHERE activation_id = :id", id=activation_id)

    def outbox_drop_file(self, activation_id: str) -> None:
        """A reinstatement's file is no longer to be sent (the device gave its license
        back: it refuses any file of the activation, and HQ issues it none)."""
        self._run(
            "DELETE FROM device_outbox WHERE activation_id = :id AND action = 'reinstate'",
            id=activation_id,
        )

    def outbox_rearm(self, now: int) -> int:
        """Every entry sent and not confirmed is due now (after a broker or bridge
        outage: what the broker kept retained may be lost), a reinstatement with a new
        file (a device that holds the old one says nothing of a copy)."""
        return self._run(
            "UPDATE device_outbox SET next_at = :now, "
            "payload = CASE WHEN action = 'reinstate' THEN NULL ELSE payload END, "
            "serial = CASE WHEN action = 'reinstate' THEN NULL ELSE serial END "
            "WHERE confirmed_at IS NULL AND sent_at IS NOT NULL",
            now=now,
        )
