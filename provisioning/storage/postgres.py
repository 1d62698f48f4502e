"""The PostgreSQL engine (psycopg 3 and its pool, in the ``hq`` extra): HQ's database
shared by several processes and hosts, and everything about it that is PostgreSQL's
alone.

Here and nowhere else: the DDL of every migration in PostgreSQL's dialect (``BIGSERIAL``
for ``audit.id``, PL/pgSQL trigger functions for the seat count and the append-only
audit), the ``postgresql://`` URL, the connection pool, the isolation levels, and how a
write transaction serializes the changes of one license across processes: the
license's row is locked (``SELECT ... FOR UPDATE``) before anything of that license is
read, so a seat count and the insert after it, or a serial and the next one, see every
earlier writer's commit and no other writer in between. No process-local lock is
relied on. Read transactions are ``REPEATABLE READ READ ONLY`` snapshots.

A write transaction sends its statements in batches (``_Batch``): a statement is
queued when it is issued, with its values bound as SQL literals by psycopg's own
client-side binding, and the queue goes to the server as one query of several
statements when a result is read (a row fetched, a row count asked). So ``BEGIN`` goes
with the first read, the statements read together (``Tx.issue_reads``...) share one
round trip, and the writes nobody reads the result of go out with the ``COMMIT`` and
the durable wait after it: an activation costs two round trips and two waits on the
socket. (psycopg's pipeline mode, used before, also took two round trips, but waited
on the socket once per statement, handing the GIL to the server's other threads each
time: 40 % more of HQ's CPU per transaction, measured in docs/performance.md.)

The URL goes to libpq as it is (``sslmode``, ``sslrootcert``, ``sslcert``, ``passfile``
and the other libpq parameters pass through) and is never echoed: it may hold a
password, which is also scrubbed from any driver message. Never sees a signing key;
never logs anything (rows hold license keys).
"""

import re
import threading
import urllib.parse
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar

from ..errors import ConfigError, HQError, StorageError
from ..models import Activation, License, Plan, PlanMeter
from . import migrations
from .interface import DEFAULT_POOL_SIZE, POSTGRES_SCHEMES, Store
from .sealing import UNSEALED, LicenseKeys
from .tx import (
    _LIVE,
    SERIAL_CHANGED,
    Cursor,
    PlanRows,
    Tx,
    _activation,
    keys_of,
    refused,
    select_all,
)
from .usage_ops import DUE_RETURNS, FILES_RUN_UNTIL, RAISE_FILES_RUN_UNTIL, RETURNS_WAITING

POOL_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 5.0
_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
_WRITE = "BEGIN ISOLATION LEVEL READ COMMITTED"
# Every pooled connection's own setting (``_configure``): its commits do not wait for
# their WAL flush, so a write transaction's commit releases the license's lock at once;
# each is followed by _DURABLE, and read transactions write no WAL.
_ASYNC_COMMIT = "SET synchronous_commit TO off"
# After a write transaction's commit: a one-statement transaction that writes a WAL
# record (a logical-decoding message nobody reads) and commits synchronously (the
# setting turned on for it alone, in the same statement). It comes after ours in the
# WAL, so its return means ours is on disk too; the flush is shared with every backend
# committing at that moment. (A transaction that writes no WAL of its own, such as
# SELECT txid_current(), would not wait for the flush.)
_DURABLE = (
    "SELECT set_config('synchronous_commit', 'on', true), "
    "pg_logical_emit_message(true, 'fieldpass-hq', 'durable')"
)
CONNECT_TIMEOUT_S = 10
# Taken by every migration transaction: two processes opening an old database at once
# apply its migrations one after the other, never both.
_MIGRATION_LOCK = 0x46505351  # "FPSQ"
# Taken around a change of the active signing key (two generations at once would
# otherwise each leave theirs active).
_KEY_LOCK = 0x4650534B  # "FPSK"

_T = 'TEXT COLLATE "C"'  # byte order, as SQLite compares text

_SEAT_TRIGGERS = ("seats_on_activate", "seats_on_deactivate")

# PostgreSQL's statements for each of storage.migrations.VERSIONS: the same tables,
# columns, constraints and indexes as storage/sqlite.py's, in this dialect.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            f"""CREATE TABLE signing_keys (
                kid {_T} PRIMARY KEY,
                public_key TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                active INTEGER NOT NULL DEFAULT 0)""",
            f"""CREATE TABLE plans (
                name {_T} PRIMARY KEY,
                product {_T} NOT NULL,
                offline_ttl_s BIGINT NOT NULL CHECK (offline_ttl_s > 0),
                grace_s BIGINT NOT NULL CHECK (grace_s >= 0),
                warn_s BIGINT CHECK (warn_s >= 0),
                seats BIGINT NOT NULL CHECK (seats > 0),
                created_at BIGINT NOT NULL)""",
            f"""CREATE TABLE licenses (
                id {_T} PRIMARY KEY,
                license_key TEXT NOT NULL UNIQUE,
                plan {_T} NOT NULL REFERENCES plans(name),
                status {_T} NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
                expires_at BIGINT,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL)""",
            f"""CREATE TABLE entitlements (
                license_id {_T} NOT NULL REFERENCES licenses(id),
                feature {_T} NOT NULL,
                expires_at BIGINT,
                PRIMARY KEY (license_id, feature))""",
            f"""CREATE TABLE activations (
                id {_T} PRIMARY KEY,
                license_id {_T} NOT NULL REFERENCES licenses(id),
                fingerprint {_T} NOT NULL,
                serial BIGINT NOT NULL CHECK (serial >= 1),
                created_at BIGINT NOT NULL,
                last_issued_at BIGINT NOT NULL,
                last_expires_at BIGINT NOT NULL,
                deactivated_at BIGINT)""",
            """CREATE UNIQUE INDEX activations_live ON activations (license_id, fingerprint)
                WHERE deactivated_at IS NULL""",
            "CREATE INDEX activations_by_license ON activations (license_id, created_at)",
            f"""CREATE TABLE audit (
                id BIGSERIAL PRIMARY KEY,
                at BIGINT NOT NULL,
                actor {_T} NOT NULL,
                source {_T} NOT NULL,
                action {_T} NOT NULL,
                license_id {_T},
                activation_id {_T},
                detail TEXT)""",
            "CREATE INDEX audit_by_license ON audit (license_id, id)",
            # The audit log is append-only in the database itself: UPDATE, DELETE and
            # TRUNCATE are refused whoever asks (an integrity violation, like SQLite's).
            """CREATE FUNCTION fieldpass_audit_append_only() RETURNS trigger
                LANGUAGE plpgsql AS $$
                BEGIN
                    RAISE EXCEPTION 'the audit log is append-only'
                        USING ERRCODE = 'integrity_constraint_violation';
                END $$""",
            """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
                FOR EACH ROW EXECUTE FUNCTION fieldpass_audit_append_only()""",
            """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
                FOR EACH ROW EXECUTE FUNCTION fieldpass_audit_append_only()""",
            """CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
                FOR EACH STATEMENT EXECUTE FUNCTION fieldpass_audit_append_only()""",
            f"""CREATE TABLE api_tokens (
                name {_T} PRIMARY KEY,
                token_hash TEXT NOT NULL UNIQUE,
                created_at BIGINT NOT NULL)""",
        ],
    ),
    (
        2,
        [
            """ALTER TABLE licenses ADD COLUMN seats_used BIGINT NOT NULL DEFAULT 0
                CHECK (seats_used >= 0)""",
            """UPDATE licenses SET seats_used = (SELECT COUNT(*) FROM activations a
                WHERE a.license_id = licenses.id AND a.deactivated_at IS NULL)""",
            """CREATE FUNCTION fieldpass_seats_on_activate() RETURNS trigger
                LANGUAGE plpgsql AS $$
                BEGIN
                    UPDATE licenses SET seats_used = seats_used + 1 WHERE id = NEW.license_id;
                    RETURN NULL;
                END $$""",
            """CREATE TRIGGER seats_on_activate AFTER INSERT ON activations
                FOR EACH ROW WHEN (NEW.deactivated_at IS NULL)
                EXECUTE FUNCTION fieldpass_seats_on_activate()""",
            """CREATE FUNCTION fieldpass_seats_on_deactivate() RETURNS trigger
                LANGUAGE plpgsql AS $$
                BEGIN
                    UPDATE licenses SET seats_used = seats_used - 1 WHERE id = NEW.license_id;
                    RETURN NULL;
                END $$""",
            """CREATE TRIGGER seats_on_deactivate AFTER UPDATE OF deactivated_at ON activations
                FOR EACH ROW
                WHEN (OLD.deactivated_at IS NULL AND NEW.deactivated_at IS NOT NULL)
                EXECUTE FUNCTION fieldpass_seats_on_deactivate()""",
        ],
    ),
    (
        3,
        [
            f"""CREATE TABLE sites (
                activation_id {_T} PRIMARY KEY REFERENCES activations(id),
                site {_T} NOT NULL,
                assigned_at BIGINT NOT NULL)""",
            "CREATE INDEX sites_by_site ON sites (site)",
        ],
    ),
    (
        4,
        [
            "ALTER TABLE activations ADD COLUMN device_key TEXT",
            f"ALTER TABLE activations ADD COLUMN device_key_id {_T}",
            "ALTER TABLE activations ADD COLUMN agent_version TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE activations ADD COLUMN claims_format BIGINT NOT NULL DEFAULT 1",
            "ALTER TABLE activations ADD COLUMN last_seen_at BIGINT",
            f"ALTER TABLE activations ADD COLUMN last_channel {_T}",
            """CREATE UNIQUE INDEX activations_by_device_key ON activations (device_key_id)
                WHERE device_key_id IS NOT NULL AND deactivated_at IS NULL""",
            f"""CREATE TABLE challenges (
                challenge {_T} PRIMARY KEY,
                created_at BIGINT NOT NULL,
                used_at BIGINT)""",
            "CREATE INDEX challenges_by_age ON challenges (created_at)",
            "ALTER TABLE signing_keys ADD COLUMN retired_at BIGINT",
        ],
    ),
    (
        5,
        [
            "ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT",
            "ALTER TABLE api_tokens ADD COLUMN revoked_at BIGINT",
        ],
    ),
    (
        6,
        [
            # storage/sqlite.py's USAGE_AND_RETURNS, with byte-ordered text keys
            f"""CREATE TABLE usage_reports (
                activation_id {_T} NOT NULL REFERENCES activations(id),
                seq BIGINT NOT NULL,
                counters TEXT NOT NULL,
                device_at BIGINT NOT NULL,
                received_at BIGINT NOT NULL,
                via {_T} NOT NULL,
                PRIMARY KEY (activation_id, seq))""",
            "ALTER TABLE activations ADD COLUMN report_seq BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE activations ADD COLUMN tpm_bound BIGINT NOT NULL DEFAULT 0",
            f"""CREATE TABLE returns (
                activation_id {_T} PRIMARY KEY REFERENCES activations(id),
                serial BIGINT NOT NULL,
                returned_at BIGINT NOT NULL,
                received_at BIGINT NOT NULL,
                via {_T} NOT NULL,
                receipt TEXT NOT NULL,
                frees_at BIGINT NOT NULL,
                override TEXT)""",
            "ALTER TABLE plans ADD COLUMN returns_per_year BIGINT",
            f"""CREATE TABLE plan_counters (
                plan {_T} NOT NULL REFERENCES plans(name),
                counter {_T} NOT NULL,
                PRIMARY KEY (plan, counter))""",
            f"""CREATE TABLE plan_meters (
                plan {_T} NOT NULL REFERENCES plans(name),
                feature {_T} NOT NULL,
                counter {_T} NOT NULL,
                usage_limit BIGINT NOT NULL,
                period_s BIGINT NOT NULL,
                PRIMARY KEY (plan, feature))""",
            f"""CREATE TABLE meter_periods (
                activation_id {_T} NOT NULL REFERENCES activations(id),
                feature {_T} NOT NULL,
                period_start BIGINT NOT NULL,
                period_end BIGINT NOT NULL,
                base BIGINT NOT NULL,
                PRIMARY KEY (activation_id, feature, period_start))""",
        ],
    ),
    (
        7,
        [
            # storage/sqlite.py's version 7, with byte-ordered text keys
            f"""CREATE TABLE bridge_answers (
                activation_id {_T} PRIMARY KEY REFERENCES activations(id),
                answered_at BIGINT NOT NULL,
                serial BIGINT NOT NULL,
                machine_file TEXT NOT NULL)""",
            f"""CREATE TABLE device_outbox (
                activation_id {_T} PRIMARY KEY REFERENCES activations(id),
                license_id {_T} NOT NULL,
                action {_T} NOT NULL
                    CHECK (action IN ('suspend', 'revoke', 'reinstate', 'deactivate')),
                created_at BIGINT NOT NULL,
                next_at BIGINT NOT NULL,
                attempts BIGINT NOT NULL DEFAULT 0,
                sent_at BIGINT,
                reason TEXT,
                serial BIGINT,
                payload TEXT,
                confirmed_at BIGINT)""",
            """CREATE INDEX device_outbox_due ON device_outbox (next_at)
                WHERE confirmed_at IS NULL""",
            "CREATE INDEX activations_by_any_device_key ON activations (device_key_id)",
            """INSERT INTO device_outbox (activation_id, license_id, action, created_at,
                    next_at, attempts)
                SELECT a.id, a.license_id,
                    CASE WHEN l.status = 'revoked' THEN 'revoke' ELSE 'suspend' END,
                    l.updated_at, l.updated_at, 0
                FROM activations a JOIN licenses l ON l.id = a.license_id
                WHERE a.deactivated_at IS NULL AND l.status IN ('suspended', 'revoked')""",
        ],
    ),
    (
        8,
        [
            # storage/sqlite.py's version 8, with byte-ordered text keys
            "ALTER TABLE licenses ADD COLUMN seats BIGINT CHECK (seats > 0)",
            f"""CREATE TABLE console_sessions (
                id_hash {_T} PRIMARY KEY,
                token_name {_T} NOT NULL REFERENCES api_tokens(name),
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                ended_at BIGINT)""",
            "CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at)",
            "CREATE INDEX activations_by_expiry ON activations (last_expires_at)",
            # audit_by_license: in this engine's version 1 already
            "CREATE INDEX audit_by_time ON audit (at)",
        ],
    ),
    (
        9,
        [
            # storage/sqlite.py's version 9, with a byte-ordered text column
            f"ALTER TABLE activations ADD COLUMN keyring {_T}",
        ],
    ),
    (10, RETURNS_WAITING),  # storage/usage_ops.py's, as storage/sqlite.py's version 10
    (11, FILES_RUN_UNTIL),  # storage/usage_ops.py's, as storage/sqlite.py's version 11
    (12, [f"CREATE TABLE sealing (name {_T} PRIMARY KEY, kid TEXT NOT NULL)"]),
]

# A license's row with its entitlements, and a plan's row with its meters, its counters
# and HQ's signing keys: one statement each (the rows of the small tables as JSON arrays,
# in the order storage/tx.py's own queries read them), where tx.py sends several.
_LICENSE_AND_ENTITLEMENTS = (
    "SELECT l.id, l.license_key, l.plan, l.status, l.expires_at, l.created_at, l.updated_at, "
    "l.seats_used, l.seats, (SELECT json_agg(json_build_array(e.feature, e.expires_at) "
    "ORDER BY e.feature) FROM entitlements e WHERE e.license_id = l.id) FROM licenses l"
)
_PLAN_ROWS = (
    "SELECT p.name, p.product, p.offline_ttl_s, p.grace_s, p.seats, p.warn_s, p.created_at, "
    "(SELECT json_agg(json_build_array(m.feature, m.counter, m.usage_limit, m.period_s) "
    "ORDER BY m.feature) FROM plan_meters m WHERE m.plan = p.name), "
    "(SELECT json_agg(c.counter ORDER BY c.counter) FROM plan_counters c WHERE c.plan = p.name), "
    "(SELECT json_agg(json_build_array(k.kid, k.public_key, k.created_at, k.active, "
    "k.retired_at) ORDER BY k.created_at, k.kid) FROM signing_keys k) "
    "FROM plans p"
)
# (a license's plan never changes: read by the license's id, it needs no lock)
_PLAN_OF_LICENSE = " WHERE p.name = (SELECT plan FROM licenses WHERE id = :id)"


def _json_row(select: str, source: str) -> str:
    """``select`` (``SELECT <columns> FROM <source> ...``) with its row as one JSON
    array: a scalar subquery that is NULL when no row matches."""
    columns, found, rest = select.partition(f" FROM {source}")
    assert found and columns.startswith("SELECT "), select
    listed = columns.removeprefix("SELECT ")
    return f"SELECT json_build_array({listed}) FROM {source}{rest}"  # noqa: S608 - fixed text


# What an activation or a renewal reads once it holds the license's lock, in one
# statement (so under one snapshot taken after the lock): the device's live
# activation, the returns falling due, and the plan's rows, each as JSON.
_AFTER_LOCK = (
    f"SELECT ({_json_row(_LIVE, 'activations')}), "  # noqa: S608 - fixed text
    f"(SELECT json_agg(d.activation_id) FROM ({DUE_RETURNS}) d), "
    f"({_json_row(_PLAN_ROWS, 'plans p')}{_PLAN_OF_LICENSE})"
)

# Tx.record_issues's update, with its check in the statement: a serial that is not
# the stored one + 1 makes the new value an integer that does not parse, which fails
# the statement and so the transaction, with the reason in the error's text; so no
# row count is waited for (a round trip). The activations were read in the same
# transaction, under their license's lock, and none is ever deleted: each id matches.
_RECORD_ISSUE = (
    "UPDATE activations SET serial = CAST(CASE WHEN serial = :serial - 1 "  # noqa: S608
    f"THEN CAST(:serial AS TEXT) ELSE '{SERIAL_CHANGED}' END AS BIGINT), "
    f"last_issued_at = :now, last_expires_at = :expires, {RAISE_FILES_RUN_UNTIL} "
    "WHERE id = :id"
)

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def _pyformat(sql: str) -> str:
    """``:name`` (the portable SQL of storage/tx.py) to psycopg's ``%(name)s``."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))


def redact(url: str) -> str:
    """The URL without its password (for a message that must name the database)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in POSTGRES_SCHEMES or parts.fragment:
        raise ConfigError("a PostgreSQL database URL is postgresql://[USER@]HOST[:PORT]/DBNAME")


class _Pending:
    """A statement of a batched write transaction, as storage/tx.py's ``Cursor``: its
    rows and row count are those of its result once the batch it is in ran (asking for
    either runs everything queued so far)."""

    __slots__ = ("_at", "_batch", "_rowcount", "_rows")

    def __init__(self, batch: "_Batch") -> None:
        self._batch = batch
        self._rows: list[Any] | None = None
        self._rowcount = -1
        self._at = 0

    def _result(self, rows: list[Any], rowcount: int) -> None:
        self._rows, self._rowcount = rows, rowcount

    def _ran(self) -> list[Any]:
        if self._rows is None:
            self._batch.flush()
        assert self._rows is not None
        return self._rows

    @property
    def rowcount(self) -> int:
        self._ran()
        return self._rowcount

    def fetchone(self) -> Any:
        rows = self._ran()
        if self._at >= len(rows):
            return None
        self._at += 1
        return rows[self._at - 1]

    def fetchall(self) -> list[Any]:
        rows = self._ran()
        rest, self._at = rows[self._at :], len(rows)
        return rest

    def fetchmany(self, size: int) -> list[Any]:
        rows = self._ran()
        some = rows[self._at : self._at + size]
        self._at += len(some)
        return some


class _Adapter:
    """A psycopg connection seen as storage/tx.py's ``Connection``: named parameters
    translated once per statement text, ``executemany`` counting every row changed."""

    _cache: ClassVar[dict[str, str]] = {}

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def _sql(self, sql: str) -> str:
        text = self._cache.get(sql)
        if text is None:
            text = self._cache[sql] = _pyformat(sql)
        return text

    def execute(self, sql: str, parameters: Mapping[str, Any], /) -> Cursor:
        if not parameters:
            return self.conn.execute(sql)  # type: ignore[no-any-return] # not parsed for %
        return self.conn.execute(self._sql(sql), parameters)  # type: ignore[no-any-return]

    def executemany(self, sql: str, parameters: Iterable[Mapping[str, Any]], /) -> Cursor:
        cur = self.conn.cursor()
        cur.executemany(self._sql(sql), list(parameters))
        return cur  # type: ignore[no-any-return]


def _param_type(value: Any) -> str:
    """A parameter's declared type in ``PREPARE``, as psycopg's own binding types it:
    integers, booleans and bytes typed; text and NULL left for the server to infer from
    where they are used."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytea"
    return "unknown"


# The statements each pooled connection has prepared (``_Batch``): statement text ->
# (prepared name, its parameters' names in order). Forgotten with the connection.
_PREPARED: "weakref.WeakKeyDictionary[Any, dict[str, tuple[str, tuple[str, ...]]]]" = (
    weakref.WeakKeyDictionary()
)


class _Batch(_Adapter):
    """A write transaction's statements queued and sent together (the module's doc).

    ``execute`` queues a statement; the queue goes to the server as one query of
    several statements (one round trip) when a result is asked for, or with the
    ``COMMIT``. A statement with parameters runs as ``EXECUTE`` of a statement the
    connection prepared (``PREPARE``, queued before its first use: the server plans it
    once per connection), its values as SQL literals bound by psycopg's own client-side
    binding (``ClientCursor.mogrify``). ``executemany`` (bulk loads) runs what is
    queued, then itself, as the plain adapter does. A prepared statement outlives a
    rollback; after a query the server refused part of, ``forget`` drops them all on
    both sides (``DEALLOCATE ALL``)."""

    def __init__(self, conn: Any, client_cursor: Any) -> None:
        super().__init__(conn)
        self._binder = client_cursor
        self._queued: list[tuple[str, _Pending]] = []
        self._prepared = _PREPARED.setdefault(conn, {})
        self._preparing: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._unsure = False

    def _call(self, sql: str, parameters: Mapping[str, Any]) -> str:
        known = self._prepared.get(sql) or self._preparing.get(sql)
        if known is None:
            order: dict[str, int] = {}
            positional = _NAMED.sub(
                lambda m: f"${order.setdefault(m.group(1), len(order) + 1)}", sql
            )
            name = f"fieldpass_{len(self._prepared) + len(self._preparing) + 1}"
            known = self._preparing[sql] = (name, tuple(order))
            types = ", ".join(_param_type(parameters[k]) for k in order)
            self._queue(f"PREPARE {name} ({types}) AS {positional}")
        name, names = known
        template = f"EXECUTE {name}({', '.join(['%s'] * len(names))})"
        return str(self._binder.mogrify(template, [parameters[k] for k in names]))

    def _queue(self, text: str) -> "_Pending":
        pending = _Pending(self)
        self._queued.append((text.rstrip().removesuffix(";"), pending))  # one result each
        return pending

    def execute(self, sql: str, parameters: Mapping[str, Any], /) -> Cursor:
        return self._queue(self._call(sql, parameters) if parameters else sql)

    def executemany(self, sql: str, parameters: Iterable[Mapping[str, Any]], /) -> Cursor:
        self.flush()
        return super().executemany(sql, parameters)

    def flush(self) -> None:
        """Run every queued statement, in one query; each result goes to its statement.
        A statement the server refuses raises here (the server ran none after it)."""
        if not self._queued:
            return
        queued, self._queued = self._queued, []
        # (each on its own lines: a statement's trailing comment never swallows the next)
        try:
            cur = self.conn.execute("\n;\n".join(text for text, _ in queued))  # no % parsing
        except BaseException:
            # the server ran the statements before the one it refused: which of this
            # query's PREPAREs it ran is not known (a PREPARE outlives a rollback)
            self._unsure = self._unsure or bool(self._preparing)
            raise
        self._prepared.update(self._preparing)
        self._preparing.clear()
        for i, (_, pending) in enumerate(queued):
            if i:
                cur.nextset()
            pending._result(cur.fetchall() if cur.description else [], int(cur.rowcount))

    def forget(self) -> None:
        """After a failure (the transaction rolled back): nothing queued; the statements
        prepared by a query the server refused part of are dropped on both sides."""
        self._queued.clear()
        self._preparing.clear()
        if self._unsure:
            self._prepared.clear()
            self.conn.execute("DEALLOCATE ALL")
            self._unsure = False


class PostgresTx(Tx):
    """The portable operations, with what PostgreSQL needs for the seat rule: in a
    write transaction, a license's row is locked before any of its rows is read, in
    the one order license -> activation (so two writers never wait on each other in
    a circle)."""

    def __init__(
        self, conn: _Adapter, *, write: bool, license_keys: LicenseKeys = UNSEALED
    ) -> None:
        super().__init__(conn, license_keys)
        self._write = write
        self._locked: set[str] = set()
        self._plans: dict[str, Plan | None] = {}
        self._cursors = 0

    def lock_license(self, license_id: str) -> None:
        """``SELECT ... FOR UPDATE`` on the license's row: every other write
        transaction touching this license waits until this one ends."""
        if not self._write or license_id in self._locked:
            return
        self._send("SELECT id FROM licenses WHERE id = :id FOR UPDATE", id=license_id)
        self._locked.add(license_id)

    def _license_of_activation(self, where: str, **params: Any) -> None:
        if self._write:
            sql = f"SELECT license_id FROM activations WHERE {where}"  # noqa: S608 - fixed text
            for license_id in sorted({str(r[0]) for r in self._all(sql, **params)}):
                self.lock_license(license_id)

    def _get_license(self, license_id: str, lock: str) -> License | None:
        """The row and its entitlements in one statement."""
        row = self._one(f"{_LICENSE_AND_ENTITLEMENTS} WHERE l.id = :id{lock}", id=license_id)
        return None if row is None else self._license(row[:9], row[9] or [])

    def plan_rows(self, plan: str) -> PlanRows:
        """In one statement (nothing without the plan: its callers stop there)."""
        return self._plan_rows(self._one(f"{_PLAN_ROWS} WHERE p.name = :name", name=plan))

    def _plan_rows(self, row: Any) -> PlanRows:
        if row is None:
            return None, [], (), []
        found = self._plans[row[0]] = Plan(*row[:7])
        meters = [PlanMeter(*m) for m in row[7] or []]
        counters = tuple(str(c) for c in row[8] or [])
        return found, meters, counters, keys_of(row[9] or [])

    def issue_reads(
        self, license_id: str, fingerprint: str, now: int
    ) -> tuple[License | None, Activation | None, list[str], PlanRows]:
        """Two statements sent before either is read (one round trip): the license
        read and locked first, then the rest (``_AFTER_LOCK``), which the server runs
        once it holds the lock, with a snapshot that sees every earlier holder's
        commit."""
        lock = " FOR UPDATE" if self._write and license_id not in self._locked else ""
        first = self._execute(
            f"{_LICENSE_AND_ENTITLEMENTS} WHERE l.id = :id{lock}", {"id": license_id}
        )
        params = {"id": license_id, "fp": fingerprint, "l": license_id, "now": now}
        rest = self._execute(_AFTER_LOCK, params)
        row = first.fetchone()  # (every result with it)
        if row is None:
            return None, None, [], (None, [], (), [])
        if lock:
            self._locked.add(license_id)
        live, due, plan = rest.fetchone()
        return (
            self._license(row[:9], row[9] or []),
            None if live is None else _activation(live),
            [str(d) for d in due or []],
            self._plan_rows(plan),
        )

    def record_issues(self, issues: list[tuple[str, int, int, int, int]]) -> None:
        """As ``Tx``'s, checked by the database itself (``_RECORD_ISSUE``): sent on
        without waiting, like any write nobody reads the result of."""
        rows = [
            {"serial": serial, "now": now, "expires": expires, "runs": runs, "id": act_id}
            for act_id, serial, now, expires, runs in issues
        ]
        if len(rows) == 1:
            self._send(_RECORD_ISSUE, **rows[0])
        elif rows:
            self._execute_many(_RECORD_ISSUE, rows)

    def get_license(self, license_id: str) -> License | None:
        """Read and lock in one statement (the lock first: the row as of the lock)."""
        if not self._write or license_id in self._locked:
            return super().get_license(license_id)
        lic = self._get_license(license_id, " FOR UPDATE")
        if lic is not None:
            self._locked.add(license_id)
        return lic

    def get_plan(self, name: str) -> Plan | None:
        """A plan's row (what ``Plan`` holds) never changes once created: read once per
        transaction."""
        if name not in self._plans:
            self._plans[name] = super().get_plan(name)
        return self._plans[name]

    def set_plan_returns(self, plan: str, per_year: int | None) -> None:
        self._plans.pop(plan, None)
        super().set_plan_returns(plan, per_year)

    def find_live_activation(self, license_id: str, fingerprint: str) -> Activation | None:
        self.lock_license(license_id)
        return super().find_live_activation(license_id, fingerprint)

    def find_live_and_due(
        self, license_id: str, fingerprint: str, now: int
    ) -> tuple[Activation | None, list[str]]:
        self.lock_license(license_id)
        return super().find_live_and_due(license_id, fingerprint, now)

    def get_activation(self, activation_id: str) -> Activation | None:
        self._license_of_activation("id = :id", id=activation_id)
        return super().get_activation(activation_id)

    def find_by_device_key(self, device_key_id: str) -> Activation | None:
        self._license_of_activation(
            "device_key_id = :kid AND deactivated_at IS NULL", kid=device_key_id
        )
        return super().find_by_device_key(device_key_id)

    def find_by_device_key_any(self, device_key_id: str) -> Activation | None:
        self._license_of_activation("device_key_id = :kid", kid=device_key_id)
        return super().find_by_device_key_any(device_key_id)

    def count_seats(self, license_id: str) -> int:
        self.lock_license(license_id)
        return super().count_seats(license_id)

    def activate_key(self, kid: str) -> None:
        self._run("SELECT pg_advisory_xact_lock(:lock)", lock=_KEY_LOCK)
        super().activate_key(kid)

    def create_schema_table(self) -> None:
        self._run("SELECT pg_advisory_xact_lock(:lock)", lock=_MIGRATION_LOCK)
        super().create_schema_table()

    def columns(self, table: str) -> list[str]:
        rows = self._all(
            "SELECT column_name FROM information_schema.columns WHERE table_name = :t "
            "AND table_schema = current_schema() ORDER BY ordinal_position",
            t=table,
        )
        return [r[0] for r in rows]

    def table_names(self) -> set[str]:
        rows = self._all("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        return {r[0] for r in rows}

    def iter_rows(self, table: str, columns: Sequence[str], order: Sequence[str]) -> Iterator[Any]:
        """Streamed through a server-side cursor, 2,000 rows a fetch: a large table
        never sits in memory (SQL's own ``DECLARE``, which a batch runs too)."""
        self._cursors += 1
        name = f"fieldpass_rows_{self._cursors}"
        self._run(f"DECLARE {name} NO SCROLL CURSOR FOR {select_all(table, columns, order)}")
        while rows := self._all(f"FETCH 2000 FROM {name}"):
            yield from rows
        self._run(f"CLOSE {name}")

    def before_load(self) -> None:
        for trigger in _SEAT_TRIGGERS:
            self._run(f"ALTER TABLE activations DISABLE TRIGGER {trigger}")

    def after_load(self) -> None:
        self.recount_seats()
        for trigger in _SEAT_TRIGGERS:
            self._run(f"ALTER TABLE activations ENABLE TRIGGER {trigger}")
        self._run(
            "SELECT setval(pg_get_serial_sequence('audit', 'id'), "
            "COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM audit"
        )


def _driver() -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as e:
        raise ConfigError(
            f"PostgreSQL needs the 'hq' extra: pip install 'fieldpass[hq]' ({e.name} missing)"
        ) from e
    return psycopg, psycopg_pool


class PostgresStore(Store):
    """A PostgreSQL database with HQ's schema, through a pool of connections (one per
    thread at a time; ``pool_size`` at most)."""

    def __init__(
        self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE, migrate: bool = True
    ) -> None:
        check_url(url)
        self._psycopg, pool_module = _driver()
        self._secret = urllib.parse.urlsplit(url).password or ""
        self.where = redact(url)
        self._lock = threading.Lock()
        try:
            # one connection first: a wrong password or host fails now, in one line,
            # where the pool would retry in the background
            self._psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S).close()
        except self._psycopg.Error as e:
            raise StorageError(self._message("cannot connect to", e)) from e
        try:
            self._pool = pool_module.ConnectionPool(
                url,
                min_size=max(1, pool_size),  # all opened at start: none at a burst
                max_size=max(1, pool_size),
                kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
                configure=_configure,
                open=False,
                timeout=POOL_TIMEOUT_S,
                name="fieldpass-hq",
            )
            self._pool.open(wait=False)  # the first transaction waits for one
        except self._psycopg.Error as e:
            raise StorageError(self._message("cannot connect to", e)) from e
        except pool_module.PoolTimeout as e:
            self._close_pool()
            raise StorageError(self._message("cannot connect to", e)) from e
        if migrate:
            try:
                with self.write() as tx:
                    migrations.upgrade(tx, "postgresql", MIGRATIONS)
            except BaseException:
                self._close_pool()
                raise

    def _message(self, what: str, e: BaseException) -> str:
        """One line naming the database and the error: for an error the server reported,
        its primary message alone (its context quotes the statement, whose values may
        be license keys; its detail may quote a row), else the driver's text."""
        primary = getattr(getattr(e, "diag", None), "message_primary", None)
        text = " ".join(str(primary or e).split())
        if self._secret:
            text = text.replace(self._secret, "***")
        return f"{what} the database {self.where}: {text[:300]}"

    def _close_pool(self) -> None:
        try:
            self._pool.close()
        except Exception:  # noqa: S110 - nothing more to release
            pass

    def close(self) -> None:
        self._close_pool()

    @contextmanager
    def _transaction(
        self, begin: str, write: bool, timeout_s: float = POOL_TIMEOUT_S
    ) -> Iterator[Tx]:
        psycopg = self._psycopg
        try:
            with self._pool.connection(timeout=timeout_s) as conn:
                try:
                    conn.execute(begin)
                except psycopg.Error as e:
                    raise StorageError(self._message("cannot use", e)) from e
                tx = PostgresTx(_Adapter(conn), write=write, license_keys=self.license_keys)
                try:
                    yield tx
                except BaseException as e:
                    self._rollback(conn)
                    if not isinstance(e, psycopg.Error):
                        raise
                    raise self._error("error in", e) from e
                try:
                    conn.execute("COMMIT")
                except psycopg.Error as e:
                    self._rollback(conn)
                    raise self._error("commit failed in", e) from e
        except self._pool_errors() as e:
            raise StorageError(self._message("no connection to", e)) from e

    @contextmanager
    def _batched(self) -> Iterator[Tx]:
        """A write transaction whose statements go out in batches (``_Batch``, the
        module's doc): ``BEGIN`` with the first statements read, and whatever was still
        queued with the ``COMMIT`` and the durable wait after it, in one query the
        server runs to its end (the durable wait's own commit included) before it
        answers."""
        psycopg = self._psycopg
        try:
            with self._pool.connection() as conn:
                batch = _Batch(conn, psycopg.ClientCursor(conn))
                batch.execute(_WRITE, {})
                try:
                    yield PostgresTx(batch, write=True, license_keys=self.license_keys)
                except BaseException as e:
                    self._rollback(conn, batch)
                    if not isinstance(e, psycopg.Error):
                        raise
                    raise self._error("error in", e) from e
                batch.execute("COMMIT", {})
                batch.execute(_DURABLE, {})
                try:
                    batch.flush()
                except psycopg.Error as e:
                    self._rollback(conn, batch)
                    raise self._error("commit failed in", e) from e
        except self._pool_errors() as e:
            raise StorageError(self._message("no connection to", e)) from e

    def _error(self, step: str, e: BaseException) -> HQError:
        """What a failure of the driver becomes."""
        if isinstance(e, self._psycopg.IntegrityError):
            return refused(_first_line(e), getattr(e.diag, "constraint_name", None))
        return StorageError(self._message(step, e))

    def _pool_errors(self) -> tuple[type[BaseException], ...]:
        import psycopg_pool

        return (psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed)

    def _rollback(self, conn: Any, batch: "_Batch | None" = None) -> None:
        try:
            conn.execute("ROLLBACK")
            if batch is not None:
                batch.forget()
        except self._psycopg.Error:
            pass  # the connection is broken: the pool discards it

    def read(self) -> AbstractContextManager[Tx]:
        """A consistent snapshot of the database."""
        return self._transaction(_READ, False)

    def schema_version(self) -> int:
        """As ``Store``'s, waiting at most ``READY_TIMEOUT_S`` for a connection (a
        readiness probe answers quickly when the database is gone)."""
        with self._transaction(_READ, False, READY_TIMEOUT_S) as tx:
            return tx.schema_version()

    def write(self) -> AbstractContextManager[Tx]:
        """A READ COMMITTED write transaction whose reads of a license lock its row
        first (``PostgresTx``): what it reads of a license is what it writes on.

        In batches (the module's doc). Durable before it returns, like every write: it
        commits with ``synchronous_commit`` off (the pooled connections' setting), which
        releases its row locks without waiting for the disk, then waits for the WAL flush
        that covers its commit (``_batched``). Another transaction may read its rows in between;
        if the server crashed then, WAL order means nothing that read them was durable
        either, and nobody was answered."""
        return self._batched()


def _configure(conn: Any) -> None:
    """A new pooled connection's session: its commits asynchronous (``_ASYNC_COMMIT``);
    psycopg's own prepared statements off (it deallocates every statement of the
    session after a ``ROLLBACK`` or an ``ALTER``, ``_Batch``'s too: ``_Batch``
    prepares what write transactions run, and knows what it prepared)."""
    conn.prepare_threshold = None
    conn.execute(_ASYNC_COMMIT)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def open_url(url: str, *, pool_size: int = DEFAULT_POOL_SIZE, migrate: bool = True) -> Store:
    return PostgresStore(url, pool_size=pool_size, migrate=migrate)
