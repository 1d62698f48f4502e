"""The operations HQ's services run inside one transaction: every query, in SQL that
every engine runs as written.

The SQL here is the portable kind: named parameters (``:name``), ``ON CONFLICT ... DO
UPDATE``, no engine's own functions or types. An engine (``storage/sqlite.py``) supplies
the connection and, in its ``Tx`` subclass, what differs: ``lock_license`` (a no-op on
SQLite, whose write transaction already holds the database's writer lock; ``SELECT ...
FOR UPDATE`` on PostgreSQL), and the parameter style if its driver wants another
(psycopg's ``%(name)s``: translate in ``_execute``). DDL is not here: each engine writes
its own for every migration (``storage/migrations.py``).

A statement whose result nobody reads goes through ``_send``, one whose rows are read
later through ``_execute``: an engine that batches (PostgreSQL) sends such statements
on without waiting, so that the reads of one step and the writes before the commit
each cost one round trip, and an error of a sent write surfaces at the next read or at
the commit, inside the same transaction.

Never commits, rolls back or opens anything: the engine's ``Store`` does, and turns the
driver's errors into ``Conflict`` and ``StorageError``. Never logs (rows hold license keys).
"""

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from ..errors import Conflict, DeviceKeyInUse, StorageError
from ..models import (
    Activation,
    AuditEvent,
    EntitlementRow,
    KeyInfo,
    License,
    Plan,
    PlanMeter,
    TokenInfo,
)
from .outbox_ops import OutboxOps
from .sealing import PREFIX as SEALED_PREFIX
from .sealing import UNSEALED, LicenseKeys
from .sessions import SessionRows
from .usage_ops import (
    DUE_RETURNS,
    PLAN_COUNTERS,
    PLAN_METERS,
    RAISE_FILES_RUN_UNTIL,
    UsageOps,
)
from .views import FleetViews

# The one constraint a request runs into on its own: a device key holds one live
# activation (the partial unique index of schema 4).
DEVICE_KEY_INDEX = "activations_by_device_key"


def refused(detail: str, constraint: str | None) -> Conflict:
    """What a write the database refused (an integrity error) becomes: a device key with
    a live activation already as DeviceKeyInUse, anything else as Conflict naming the
    database's words (``constraint``: the index the engine names, None if it names none)."""
    if constraint == DEVICE_KEY_INDEX:
        return DeviceKeyInUse(
            "this device's key holds a live activation already: give that one back "
            "(`fieldpass return`) or deactivate it first"
        )
    return Conflict(f"refused by the database: {detail}")


class Cursor(Protocol):
    """What a DB-API cursor gives back (``sqlite3.Cursor``, ``psycopg.Cursor``)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchmany(self, size: int) -> list[Any]: ...


class Connection(Protocol):
    """The part of a DB-API connection the operations use."""

    def execute(self, sql: str, parameters: Mapping[str, Any], /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Mapping[str, Any]], /) -> Cursor: ...


# The columns of each record, in the order of its dataclass (models.py).
_ACTIVATION = (
    "SELECT id, license_id, fingerprint, serial, created_at, last_issued_at, "
    "last_expires_at, deactivated_at, device_key, agent_version, claims_format, "
    "last_seen_at, last_channel, keyring, return_frees_at FROM activations"
)
_LICENSE = (
    "SELECT id, license_key, plan, status, expires_at, created_at, updated_at, "
    "seats_used, seats FROM licenses"
)
_LIVE = f"{_ACTIVATION} WHERE license_id = :id AND fingerprint = :fp AND deactivated_at IS NULL"
_PLAN = "SELECT name, product, offline_ttl_s, grace_s, seats, warn_s, created_at FROM plans"
_ENTITLEMENTS = (
    "SELECT feature, expires_at FROM entitlements WHERE license_id = :id ORDER BY feature"
)
_KEYS = (
    "SELECT kid, public_key, created_at, active, retired_at FROM signing_keys "
    "ORDER BY created_at, kid"
)
_TOKEN = "SELECT name, created_at, expires_at, revoked_at FROM api_tokens"  # noqa: S105
_AUDIT = "SELECT at, actor, source, action, license_id, activation_id, detail, id FROM audit"


SERIAL_CHANGED = "activation serial changed under a write transaction"

# A plan, its meters, its usage counters, HQ's signing keys (Tx.plan_rows).
PlanRows = tuple[Plan | None, list[PlanMeter], tuple[str, ...], list[KeyInfo]]


def select_all(table: str, columns: Sequence[str], order: Sequence[str]) -> str:
    """A whole table's rows in key order. The names come from storage/copy.py's TABLES
    and the engine's own catalogue, never from input."""
    return f"SELECT {', '.join(columns)} FROM {table} ORDER BY {', '.join(order)}"  # noqa: S608


def _activation(row: Any) -> Activation:
    values = list(row)
    values[8] = None if values[8] is None else base64.b64decode(values[8])
    values[13] = tuple(values[13].split()) if values[13] else ()
    return Activation(*values)


def keys_of(rows: Iterable[Sequence[Any]]) -> list[KeyInfo]:
    """``KeyInfo`` of signing_keys rows (kid, public_key, created_at, active, retired_at)."""
    return [KeyInfo(r[0], base64.b64decode(r[1]), r[2], bool(r[3]), r[4]) for r in rows]


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


class Tx(UsageOps, OutboxOps, FleetViews, SessionRows):
    """The operations, inside one transaction. Obtain one from ``Store.read/write``.
    The usage and MQTT channel's operations (storage/usage_ops.py, outbox_ops.py), the
    fleet views' queries (storage/views.py) and the console's session rows
    (storage/sessions.py) are in their own modules."""

    def __init__(self, conn: Connection, license_keys: LicenseKeys = UNSEALED) -> None:
        self._conn = conn
        self.license_keys = license_keys  # seals and opens licenses.license_key

    def _execute(self, sql: str, params: Mapping[str, Any]) -> Cursor:
        return self._conn.execute(sql, params)

    def _execute_many(self, sql: str, params: Iterable[Mapping[str, Any]]) -> Cursor:
        return self._conn.executemany(sql, params)

    def _one(self, sql: str, **params: Any) -> Any:
        return self._execute(sql, params).fetchone()

    def _all(self, sql: str, **params: Any) -> list[Any]:
        return self._execute(sql, params).fetchall()

    def _run(self, sql: str, **params: Any) -> int:
        return self._execute(sql, params).rowcount

    def _send(self, sql: str, **params: Any) -> None:
        """A statement whose result (rows, row count) is never read."""
        self._execute(sql, params)

    # -- locking ---------------------------------------------------------------------
    def lock_license(self, license_id: str) -> None:
        """Serialize seat changes of one license until the transaction ends: no other
        activation of it can interleave between a seat count and an insert. Each engine
        says how (``SQLiteTx``: its writer lock, already held)."""
        raise NotImplementedError

    # -- schema: for storage.migrations only -----------------------------------------
    def create_schema_table(self) -> None:
        self._run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")

    def schema_version(self) -> int:
        """The newest migration applied; 0 on an empty database."""
        row = self._one("SELECT MAX(version) FROM schema_version")
        return int(row[0] or 0)

    def apply_migration(self, version: int, statements: Sequence[str]) -> None:
        for statement in statements:
            self._run(statement)
        self._run("INSERT INTO schema_version (version) VALUES (:version)", version=version)

    # -- whole tables: for storage.copy only (db copy, backup, restore) ----------------
    def columns(self, table: str) -> list[str]:
        """The columns of ``table`` in table order (each engine reads its catalogue)."""
        raise NotImplementedError

    def table_names(self) -> set[str]:
        raise NotImplementedError

    def iter_rows(self, table: str, columns: Sequence[str], order: Sequence[str]) -> Iterable[Any]:
        """Every row of ``table`` in key order (``order``: the key's columns), streamed."""
        cur = self._execute(select_all(table, columns, order), {})
        while rows := cur.fetchmany(2000):
            yield from rows

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        names = ", ".join(columns)
        marks = ", ".join(f":c{i}" for i in range(len(columns)))
        self._execute_many(
            f"INSERT INTO {table} ({names}) VALUES ({marks})",  # noqa: S608 - see select_all
            ({f"c{i}": v for i, v in enumerate(row)} for row in rows),
        )

    def before_load(self) -> None:
        """Before whole tables are inserted into an empty database (PostgreSQL: the
        seat-count triggers off, so that a license with many devices is not updated once
        per row)."""

    def after_load(self) -> None:
        """After rows were inserted with their own ids: what the engine must catch up
        on (PostgreSQL: the seat counts, the triggers, the audit id sequence)."""

    def recount_seats(self) -> None:
        """Every license's seats in use counted again from its live activations."""
        self._run(
            "UPDATE licenses SET seats_used = (SELECT COUNT(*) FROM activations a "
            "WHERE a.license_id = licenses.id AND a.deactivated_at IS NULL)"
        )

    # -- signing keys ----------------------------------------------------------------
    def insert_key(self, kid: str, public_key: bytes, now: int) -> None:
        self._run(
            "INSERT INTO signing_keys (kid, public_key, created_at, active) "
            "VALUES (:kid, :pk, :now, 0)",
            kid=kid,
            pk=base64.b64encode(public_key).decode("ascii"),
            now=now,
        )

    def activate_key(self, kid: str) -> None:
        self._run("UPDATE signing_keys SET active = 0 WHERE active = 1")
        self._run("UPDATE signing_keys SET active = 1 WHERE kid = :kid", kid=kid)

    def list_keys(self) -> list[KeyInfo]:
        return keys_of(self._all(_KEYS))

    def retire_key(self, kid: str, now: int) -> int:
        return self._run(
            "UPDATE signing_keys SET retired_at = :now, active = 0 "
            "WHERE kid = :kid AND retired_at IS NULL",
            now=now,
            kid=kid,
        )

    def active_kid(self) -> str | None:
        row = self._one("SELECT kid FROM signing_keys WHERE active = 1 AND retired_at IS NULL")
        return None if row is None else str(row[0])

    # -- plans -----------------------------------------------------------------------
    def insert_plan(self, plan: Plan) -> None:
        self._run(
            "INSERT INTO plans (name, product, offline_ttl_s, grace_s, warn_s, seats, "
            "created_at) VALUES (:name, :product, :ttl, :grace, :warn, :seats, :now)",
            name=plan.name,
            product=plan.product,
            ttl=plan.offline_ttl_s,
            grace=plan.grace_s,
            warn=plan.warn_s,
            seats=plan.seats,
            now=plan.created_at,
        )

    def get_plan(self, name: str) -> Plan | None:
        row = self._one(
            f"{_PLAN} WHERE name = :name",
            name=name,
        )
        return None if row is None else Plan(*row)

    def list_plans(self) -> list[Plan]:
        rows = self._all(f"{_PLAN} ORDER BY name")
        return [Plan(*r) for r in rows]

    def update_plan(self, plan: Plan) -> None:
        """Store a plan's seats, TTL, grace and warning window (its name, product and
        creation stay)."""
        self._run(
            "UPDATE plans SET offline_ttl_s = :ttl, grace_s = :grace, warn_s = :warn, "
            "seats = :seats WHERE name = :name",
            ttl=plan.offline_ttl_s,
            grace=plan.grace_s,
            warn=plan.warn_s,
            seats=plan.seats,
            name=plan.name,
        )

    # -- licenses --------------------------------------------------------------------
    def insert_license(self, lic: License) -> None:
        self._run(
            "INSERT INTO licenses (id, license_key, plan, status, expires_at, created_at, "
            "updated_at) VALUES "
            "(:id, :key, :plan, :status, :expires_at, :created_at, :updated_at)",
            id=lic.id,
            key=self.license_keys.seal(lic.id, lic.license_key),
            plan=lic.plan,
            status=lic.status,
            expires_at=lic.expires_at,
            created_at=lic.created_at,
            updated_at=lic.updated_at,
        )
        for ent in lic.entitlements:
            self._run(
                "INSERT INTO entitlements (license_id, feature, expires_at) "
                "VALUES (:id, :feature, :expires_at)",
                id=lic.id,
                feature=ent.feature,
                expires_at=ent.expires_at,
            )

    # -- license keys sealed at rest (storage/sealing.py) ---------------------------
    def sealing_kid(self, name: str) -> str | None:
        """The name of the secret that seals ``name`` (``license_keys``), if recorded."""
        row = self._one("SELECT kid FROM sealing WHERE name = :name", name=name)
        return None if row is None else str(row[0])

    def record_sealing_kid(self, name: str, kid: str) -> None:
        """Record ``kid`` unless a secret is recorded already (the first HQ wins)."""
        self._run(
            "INSERT INTO sealing (name, kid) VALUES (:name, :kid) ON CONFLICT (name) DO NOTHING",
            name=name,
            kid=kid,
        )

    def keys_in_clear(self, limit: int | None = None) -> list[tuple[str, str]]:
        """``(license id, key)`` of the licenses whose key is not sealed yet (``limit``:
        at most so many)."""
        rows = self._all(
            "SELECT id, license_key FROM licenses WHERE license_key NOT LIKE :sealed "
            "ORDER BY id LIMIT :limit",
            sealed=f"{SEALED_PREFIX}%",
            limit=2**62 if limit is None else limit,
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def a_sealed_key(self) -> str | None:
        """One sealed value of the column (it names its secret), None if none is."""
        row = self._one(
            "SELECT license_key FROM licenses WHERE license_key LIKE :sealed LIMIT 1",
            sealed=f"{SEALED_PREFIX}%",
        )
        return None if row is None else str(row[0])

    def seal_license_key(self, license_id: str, key: str) -> None:
        """Replace a key in clear with its sealed form (``license_keys.seal``)."""
        self._send(
            "UPDATE licenses SET license_key = :value WHERE id = :id",
            value=self.license_keys.seal(license_id, key),
            id=license_id,
        )

    def _license(self, row: Any, ents: list[Any] | None = None) -> License:
        """``ents``: the license's entitlement rows if read already."""
        if ents is None:
            ents = self._all(_ENTITLEMENTS, id=row[0])
        return License(
            id=row[0],
            license_key=self.license_keys.open(row[0], row[1]),
            plan=row[2],
            status=row[3],
            expires_at=row[4],
            created_at=row[5],
            updated_at=row[6],
            entitlements=tuple(EntitlementRow(f, e) for f, e in ents),
            seats_used=row[7],
            seats=row[8],
        )

    def get_license(self, license_id: str) -> License | None:
        return self._get_license(license_id, "")

    def _get_license(self, license_id: str, lock: str) -> License | None:
        """``lock``: what an engine appends to lock the row it reads (`` FOR UPDATE``)."""
        found = self._execute(f"{_LICENSE} WHERE id = :id{lock}", {"id": license_id})
        ents = self._execute(_ENTITLEMENTS, {"id": license_id})  # sent before either is read
        row = found.fetchone()
        return None if row is None else self._license(row, ents.fetchall())

    def list_licenses(self) -> list[License]:
        rows = self._all(f"{_LICENSE} ORDER BY created_at, id")
        return [self._license(r) for r in rows]

    def set_license_seats(self, license_id: str, seats: int | None, now: int) -> None:
        """A license's own seat limit (None: its plan's)."""
        self._run(
            "UPDATE licenses SET seats = :seats, updated_at = :now WHERE id = :id",
            seats=seats,
            now=now,
            id=license_id,
        )

    def set_license_status(self, license_id: str, status: str, now: int) -> None:
        self._run(
            "UPDATE licenses SET status = :status, updated_at = :now WHERE id = :id",
            status=status,
            now=now,
            id=license_id,
        )

    # -- activations -----------------------------------------------------------------
    def count_seats(self, license_id: str) -> int:
        row = self._one("SELECT seats_used FROM licenses WHERE id = :id", id=license_id)
        return 0 if row is None else int(row[0])

    def find_live_activation(self, license_id: str, fingerprint: str) -> Activation | None:
        row = self._one(_LIVE, id=license_id, fp=fingerprint)
        return None if row is None else _activation(row)

    def get_activation(self, activation_id: str) -> Activation | None:
        row = self._one(f"{_ACTIVATION} WHERE id = :id", id=activation_id)
        return None if row is None else _activation(row)

    def list_activations(self, license_id: str | None = None) -> list[Activation]:
        if license_id is None:
            rows = self._all(f"{_ACTIVATION} ORDER BY created_at")
        else:
            rows = self._all(
                f"{_ACTIVATION} WHERE license_id = :id ORDER BY created_at", id=license_id
            )
        return [_activation(r) for r in rows]

    def find_live_and_due(
        self, license_id: str, fingerprint: str, now: int
    ) -> tuple[Activation | None, list[str]]:
        """``find_live_activation`` and ``due_returns`` at once (both sent before either
        is read)."""
        live = self._execute(_LIVE, {"id": license_id, "fp": fingerprint})
        due = self._execute(DUE_RETURNS, {"l": license_id, "now": now})
        row = live.fetchone()
        return None if row is None else _activation(row), [str(r[0]) for r in due.fetchall()]

    def issue_reads(
        self, license_id: str, fingerprint: str, now: int
    ) -> tuple[License | None, Activation | None, list[str], PlanRows]:
        """What an activation reads before it decides: the license (``get_license``:
        locked first in a write transaction), this device's live activation and the
        license's due returns (``find_live_and_due``), its plan's rows (``plan_rows``).
        Nothing but the license when there is none."""
        lic = self.get_license(license_id)
        if lic is None:
            return None, None, [], (None, [], (), [])
        live, due = self.find_live_and_due(license_id, fingerprint, now)
        return lic, live, due, self.plan_rows(lic.plan)

    def plan_rows(self, plan: str) -> PlanRows:
        """What every file issued under ``plan`` reads: the plan, its meters, its usage
        counters, and HQ's signing keys (all sent before any is read)."""
        sent = [
            self._execute(f"{_PLAN} WHERE name = :name", {"name": plan}),
            self._execute(PLAN_METERS, {"p": plan}),
            self._execute(PLAN_COUNTERS, {"p": plan}),
            self._execute(_KEYS, {}),
        ]
        row = sent[0].fetchone()
        meters = [PlanMeter(*r) for r in sent[1].fetchall()]
        counters = tuple(str(r[0]) for r in sent[2].fetchall())
        return None if row is None else Plan(*row), meters, counters, keys_of(sent[3].fetchall())

    def insert_activation(self, act: Activation, runs_until: int | None = None) -> None:
        """``runs_until``: when its first file stops running (expiry and grace)."""
        from agent.wire.device_key import key_id

        self._send(
            "INSERT INTO activations (id, license_id, fingerprint, serial, created_at, "
            "last_issued_at, last_expires_at, deactivated_at, device_key, device_key_id, "
            "agent_version, claims_format, last_seen_at, last_channel, keyring, "
            "files_run_until) "
            "VALUES (:id, :license_id, :fp, :serial, :created_at, :issued, :expires, NULL, "
            ":dk, :dkid, :agent, :format, :seen, :channel, :keyring, :runs)",
            id=act.id,
            license_id=act.license_id,
            fp=act.fingerprint,
            serial=act.serial,
            created_at=act.created_at,
            issued=act.last_issued_at,
            expires=act.last_expires_at,
            dk=_b64(act.device_key),
            dkid=None if act.device_key is None else key_id(act.device_key),
            agent=act.agent_version,
            format=act.claims_format,
            seen=act.last_seen_at,
            channel=act.last_channel,
            keyring=" ".join(act.keyring) or None,
            runs=runs_until,
        )

    def find_by_device_key(self, device_key_id: str) -> Activation | None:
        """The live activation whose device key has this id."""
        row = self._one(
            f"{_ACTIVATION} WHERE device_key_id = :kid AND deactivated_at IS NULL",
            kid=device_key_id,
        )
        return None if row is None else _activation(row)

    def find_by_device_key_any(self, device_key_id: str) -> Activation | None:
        """The newest activation, live or not, whose device key has this id (so that a
        deactivated device can still be told so)."""
        row = self._one(
            f"{_ACTIVATION} WHERE device_key_id = :kid "
            "ORDER BY CASE WHEN deactivated_at IS NULL THEN 0 ELSE 1 END, created_at DESC "
            "LIMIT 1",
            kid=device_key_id,
        )
        return None if row is None else _activation(row)

    def set_device_key(self, activation_id: str, device_key: bytes | None) -> None:
        from agent.wire.device_key import key_id

        self._send(
            "UPDATE activations SET device_key = :dk, device_key_id = :dkid WHERE id = :id",
            dk=_b64(device_key),
            dkid=None if device_key is None else key_id(device_key),
            id=activation_id,
        )

    def record_contact(
        self, activation_id: str, now: int, channel: str, agent_version: str, claims_format: int
    ) -> None:
        """When and how the device was last heard from, and what its agent reads."""
        self._send(
            "UPDATE activations SET last_seen_at = :now, last_channel = :channel, "
            "agent_version = :agent, claims_format = :format WHERE id = :id",
            now=now,
            channel=channel,
            agent=agent_version,
            format=claims_format,
            id=activation_id,
        )

    def set_keyring(self, activation_id: str, kids: Sequence[str]) -> None:
        """The ids of the signing keys the device says its keyring holds."""
        self._send(
            "UPDATE activations SET keyring = :keyring WHERE id = :id",
            keyring=" ".join(kids) or None,
            id=activation_id,
        )

    def keyring_counts(self) -> dict[str, int]:
        """How many live activations reported each signing key in their keyring."""
        counts: dict[str, int] = {}
        for kids in self._live_keyrings():
            for kid in kids:
                counts[kid] = counts.get(kid, 0) + 1
        return counts

    def trusting_only(self, kid: str, others: "set[str]") -> int:
        """How many live activations reported ``kid`` in their keyring and none of
        ``others``: the devices a retirement of ``kid`` would leave with no key to
        renew with."""
        return sum(1 for kids in self._live_keyrings() if kid in kids and not kids & others)

    def _live_keyrings(self) -> "list[set[str]]":
        """The key ids each live activation reported in its keyring (those that did)."""
        rows = self._all(
            "SELECT keyring FROM activations WHERE deactivated_at IS NULL AND keyring IS NOT NULL"
        )
        return [set(str(text).split()) for (text,) in rows]

    # -- server challenges -------------------------------------------------------------
    def insert_challenge(self, challenge: str, now: int) -> None:
        self._run(
            "INSERT INTO challenges (challenge, created_at, used_at) VALUES (:c, :now, NULL)",
            c=challenge,
            now=now,
        )

    def use_challenge(self, challenge: str, now: int, oldest: int) -> bool:
        """Spend a challenge issued at or after ``oldest``; False if unknown, used or old."""
        return (
            self._run(
                "UPDATE challenges SET used_at = :now WHERE challenge = :c "
                "AND used_at IS NULL AND created_at >= :oldest",
                now=now,
                c=challenge,
                oldest=oldest,
            )
            == 1
        )

    def prune_challenges(self, before: int) -> int:
        return self._run("DELETE FROM challenges WHERE created_at < :before", before=before)

    def record_issues(self, issues: list[tuple[str, int, int, int, int]]) -> None:
        """Store the serials of files being issued: (activation id, serial, now, expires
        at, runs until: the expiry and the file's grace), each serial the activation's
        last + 1 (checked: another writer's change in between fails the whole
        transaction)."""
        if not issues:
            return
        cur = self._execute_many(
            "UPDATE activations SET serial = :serial, last_issued_at = :now, "  # noqa: S608 - constants only
            f"last_expires_at = :expires, {RAISE_FILES_RUN_UNTIL} "
            "WHERE id = :id AND serial = :serial - 1",
            [
                {"serial": serial, "now": now, "expires": expires, "runs": runs, "id": act_id}
                for act_id, serial, now, expires, runs in issues
            ],
        )
        if cur.rowcount != len(issues):
            raise StorageError(SERIAL_CHANGED)

    def deactivate(self, activation_id: str, now: int) -> None:
        self._send(
            "UPDATE activations SET deactivated_at = :now WHERE id = :id "
            "AND deactivated_at IS NULL",
            now=now,
            id=activation_id,
        )

    # -- sites -----------------------------------------------------------------------
    def assign_site(self, activation_id: str, site: str, now: int) -> None:
        # The upsert both engines spell the same way (ON CONFLICT ... DO UPDATE).
        self._run(
            "INSERT INTO sites (activation_id, site, assigned_at) VALUES (:id, :site, :now) "
            "ON CONFLICT (activation_id) DO UPDATE SET site = :site, assigned_at = :now",
            id=activation_id,
            site=site,
            now=now,
        )

    def unassign_site(self, activation_id: str) -> int:
        return self._run("DELETE FROM sites WHERE activation_id = :id", id=activation_id)

    def site_of(self, activation_id: str) -> str | None:
        row = self._one("SELECT site FROM sites WHERE activation_id = :id", id=activation_id)
        return None if row is None else str(row[0])

    def site_activations(self, site: str) -> set[str]:
        return {r[0] for r in self._all("SELECT activation_id FROM sites WHERE site = :s", s=site)}

    def list_sites(self) -> list[tuple[str, int]]:
        rows = self._all(
            "SELECT s.site, COUNT(*) FROM sites s JOIN activations a ON a.id = s.activation_id "
            "WHERE a.deactivated_at IS NULL GROUP BY s.site ORDER BY s.site"
        )
        return [(r[0], int(r[1])) for r in rows]

    # -- audit -----------------------------------------------------------------------
    def append_audit(self, ev: AuditEvent) -> None:
        self._send(
            "INSERT INTO audit (at, actor, source, action, license_id, activation_id, detail) "
            "VALUES (:at, :actor, :source, :action, :license_id, :activation_id, :detail)",
            at=ev.at,
            actor=ev.actor,
            source=ev.source,
            action=ev.action,
            license_id=ev.license_id,
            activation_id=ev.activation_id,
            detail=ev.detail,
        )

    def list_audit(self, limit: int, license_id: str | None = None) -> list[AuditEvent]:
        if license_id is None:
            rows = self._all(f"{_AUDIT} ORDER BY id DESC LIMIT :limit", limit=limit)
        else:
            rows = self._all(
                f"{_AUDIT} WHERE license_id = :lid ORDER BY id DESC LIMIT :limit",
                lid=license_id,
                limit=limit,
            )
        return [AuditEvent(*r) for r in reversed(rows)]

    # -- API tokens ------------------------------------------------------------------
    def insert_token(self, name: str, token_hash: str, now: int, expires_at: int | None) -> None:
        self._run(
            "INSERT INTO api_tokens (name, token_hash, created_at, expires_at, revoked_at) "
            "VALUES (:n, :h, :now, :expires, NULL)",
            n=name,
            h=token_hash,
            now=now,
            expires=expires_at,
        )

    def token_by_hash(self, token_hash: str) -> TokenInfo | None:
        row = self._one(f"{_TOKEN} WHERE token_hash = :h", h=token_hash)
        return None if row is None else TokenInfo(*row)

    def get_token(self, name: str) -> TokenInfo | None:
        row = self._one(f"{_TOKEN} WHERE name = :n", n=name)
        return None if row is None else TokenInfo(*row)

    def list_tokens(self) -> list[TokenInfo]:
        return [TokenInfo(*r) for r in self._all(f"{_TOKEN} ORDER BY created_at, name")]

    def revoke_token(self, name: str, now: int) -> int:
        return self._run(
            "UPDATE api_tokens SET revoked_at = :now WHERE name = :n AND revoked_at IS NULL",
            now=now,
            n=name,
        )
