"""All of HQ's SQL: schema migrations, the transaction and locking mode, the operations.

Nothing outside this module writes SQL. The operations are plain SQL with named
parameters (``:name``) so that they run unchanged on PostgreSQL; what differs between
the two engines is confined to three places below, each marked ``DIALECT``: the DDL of
the migrations, how a write transaction starts (``BEGIN IMMEDIATE`` on SQLite, which
takes the database's single writer lock up front), and ``lock_license`` (a no-op on
SQLite, ``SELECT ... FOR UPDATE`` on PostgreSQL). With either, the seat rule's count and
insert happen in one transaction that no other activation of the same license can
interleave with.

This module never sees a signing key, and never logs anything (rows hold license keys).
"""

import base64
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError, Conflict, StorageError
from ..models import (
    Activation,
    AuditEvent,
    EntitlementRow,
    KeyInfo,
    License,
    Plan,
)

BUSY_TIMEOUT_S = 30.0

# DIALECT: SQLite DDL. A PostgreSQL migration list uses BIGSERIAL for audit.id and
# BYTEA-free types (public keys are stored as base64 text on both engines).
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE signing_keys (
                kid TEXT PRIMARY KEY,
                public_key TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                active INTEGER NOT NULL DEFAULT 0)""",
            """CREATE TABLE plans (
                name TEXT PRIMARY KEY,
                product TEXT NOT NULL,
                offline_ttl_s INTEGER NOT NULL CHECK (offline_ttl_s > 0),
                grace_s INTEGER NOT NULL CHECK (grace_s >= 0),
                warn_s INTEGER CHECK (warn_s >= 0),
                seats INTEGER NOT NULL CHECK (seats > 0),
                created_at INTEGER NOT NULL)""",
            """CREATE TABLE licenses (
                id TEXT PRIMARY KEY,
                license_key TEXT NOT NULL UNIQUE,
                plan TEXT NOT NULL REFERENCES plans(name),
                status TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
                expires_at INTEGER,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL)""",
            """CREATE TABLE entitlements (
                license_id TEXT NOT NULL REFERENCES licenses(id),
                feature TEXT NOT NULL,
                expires_at INTEGER,
                PRIMARY KEY (license_id, feature))""",
            """CREATE TABLE activations (
                id TEXT PRIMARY KEY,
                license_id TEXT NOT NULL REFERENCES licenses(id),
                fingerprint TEXT NOT NULL,
                serial INTEGER NOT NULL CHECK (serial >= 1),
                created_at INTEGER NOT NULL,
                last_issued_at INTEGER NOT NULL,
                last_expires_at INTEGER NOT NULL,
                deactivated_at INTEGER)""",
            # One live activation per (license, device): the database itself refuses a
            # second seat for the same fingerprint, whatever the code above it does.
            """CREATE UNIQUE INDEX activations_live ON activations (license_id, fingerprint)
                WHERE deactivated_at IS NULL""",
            """CREATE TABLE audit (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                at INTEGER NOT NULL,
                actor TEXT NOT NULL,
                source TEXT NOT NULL,
                action TEXT NOT NULL,
                license_id TEXT,
                activation_id TEXT,
                detail TEXT)""",
            """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
                BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
            """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
                BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
            """CREATE TABLE api_tokens (
                name TEXT PRIMARY KEY,
                token_hash TEXT NOT NULL UNIQUE,
                created_at INTEGER NOT NULL)""",
        ],
    ),
    (
        2,
        [
            # The seat count kept on the license row by the database itself, so that the
            # seat rule reads one row instead of counting a large fleet's activations.
            # DIALECT: PostgreSQL writes these triggers as trigger functions.
            """ALTER TABLE licenses ADD COLUMN seats_used INTEGER NOT NULL DEFAULT 0
                CHECK (seats_used >= 0)""",
            """UPDATE licenses SET seats_used = (SELECT COUNT(*) FROM activations a
                WHERE a.license_id = licenses.id AND a.deactivated_at IS NULL)""",
            """CREATE TRIGGER seats_on_activate AFTER INSERT ON activations
                WHEN NEW.deactivated_at IS NULL
                BEGIN UPDATE licenses SET seats_used = seats_used + 1
                    WHERE id = NEW.license_id; END""",
            """CREATE TRIGGER seats_on_deactivate AFTER UPDATE OF deactivated_at ON activations
                WHEN OLD.deactivated_at IS NULL AND NEW.deactivated_at IS NOT NULL
                BEGIN UPDATE licenses SET seats_used = seats_used - 1
                    WHERE id = NEW.license_id; END""",
        ],
    ),
    (
        3,
        [
            # Sites: where a device stands, so that a technician's bundle can be made for
            # "the robots at site 7". A label on the activation, set at HQ.
            """CREATE TABLE sites (
                activation_id TEXT PRIMARY KEY REFERENCES activations(id),
                site TEXT NOT NULL,
                assigned_at INTEGER NOT NULL)""",
            "CREATE INDEX sites_by_site ON sites (site)",
        ],
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _activation(row: Any) -> Activation:
    return Activation(*row)


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # no transaction left to roll back: SQLite already did


class Tx:
    """The operations, inside one transaction. Obtain one from ``Store.read/write``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _one(self, sql: str, **params: Any) -> Any:
        return self._conn.execute(sql, params).fetchone()

    def _all(self, sql: str, **params: Any) -> list[Any]:
        return self._conn.execute(sql, params).fetchall()

    def _run(self, sql: str, **params: Any) -> int:
        return self._conn.execute(sql, params).rowcount

    # -- locking ---------------------------------------------------------------------
    def lock_license(self, license_id: str) -> None:
        """Serialize seat changes of one license. DIALECT: on SQLite the write
        transaction already holds the database's writer lock (BEGIN IMMEDIATE); on
        PostgreSQL this is ``SELECT id FROM licenses WHERE id = :id FOR UPDATE``."""

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
        rows = self._all(
            "SELECT kid, public_key, created_at, active FROM signing_keys ORDER BY created_at, kid"
        )
        return [KeyInfo(r[0], base64.b64decode(r[1]), r[2], bool(r[3])) for r in rows]

    def active_kid(self) -> str | None:
        row = self._one("SELECT kid FROM signing_keys WHERE active = 1")
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
            "SELECT name, product, offline_ttl_s, grace_s, seats, warn_s, created_at "
            "FROM plans WHERE name = :name",
            name=name,
        )
        return None if row is None else Plan(*row)

    def list_plans(self) -> list[Plan]:
        rows = self._all(
            "SELECT name, product, offline_ttl_s, grace_s, seats, warn_s, created_at "
            "FROM plans ORDER BY name"
        )
        return [Plan(*r) for r in rows]

    # -- licenses --------------------------------------------------------------------
    def insert_license(self, lic: License) -> None:
        self._run(
            "INSERT INTO licenses (id, license_key, plan, status, expires_at, created_at, "
            "updated_at) VALUES "
            "(:id, :key, :plan, :status, :expires_at, :created_at, :updated_at)",
            id=lic.id,
            key=lic.license_key,
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

    def _license(self, row: Any) -> License:
        ents = self._all(
            "SELECT feature, expires_at FROM entitlements WHERE license_id = :id ORDER BY feature",
            id=row[0],
        )
        return License(
            id=row[0],
            license_key=row[1],
            plan=row[2],
            status=row[3],
            expires_at=row[4],
            created_at=row[5],
            updated_at=row[6],
            entitlements=tuple(EntitlementRow(f, e) for f, e in ents),
            seats_used=row[7],
        )

    def get_license(self, license_id: str) -> License | None:
        row = self._one(
            "SELECT id, license_key, plan, status, expires_at, created_at, updated_at, "
            "seats_used FROM licenses WHERE id = :id",
            id=license_id,
        )
        return None if row is None else self._license(row)

    def list_licenses(self) -> list[License]:
        rows = self._all(
            "SELECT id, license_key, plan, status, expires_at, created_at, updated_at, "
            "seats_used FROM licenses ORDER BY created_at, id"
        )
        return [self._license(r) for r in rows]

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
        row = self._one(
            "SELECT id, license_id, fingerprint, serial, created_at, last_issued_at, "
            "last_expires_at, deactivated_at FROM activations WHERE license_id = :id "
            "AND fingerprint = :fp AND deactivated_at IS NULL",
            id=license_id,
            fp=fingerprint,
        )
        return None if row is None else _activation(row)

    def get_activation(self, activation_id: str) -> Activation | None:
        row = self._one(
            "SELECT id, license_id, fingerprint, serial, created_at, last_issued_at, "
            "last_expires_at, deactivated_at FROM activations WHERE id = :id",
            id=activation_id,
        )
        return None if row is None else _activation(row)

    def list_activations(self, license_id: str | None = None) -> list[Activation]:
        if license_id is None:
            rows = self._all(
                "SELECT id, license_id, fingerprint, serial, created_at, last_issued_at, "
                "last_expires_at, deactivated_at FROM activations ORDER BY created_at"
            )
        else:
            rows = self._all(
                "SELECT id, license_id, fingerprint, serial, created_at, last_issued_at, "
                "last_expires_at, deactivated_at FROM activations WHERE license_id = :id "
                "ORDER BY created_at",
                id=license_id,
            )
        return [_activation(r) for r in rows]

    def insert_activation(self, act: Activation) -> None:
        self._run(
            "INSERT INTO activations (id, license_id, fingerprint, serial, created_at, "
            "last_issued_at, last_expires_at, deactivated_at) "
            "VALUES (:id, :license_id, :fp, "
            ":serial, :created_at, :issued, :expires, NULL)",
            id=act.id,
            license_id=act.license_id,
            fp=act.fingerprint,
            serial=act.serial,
            created_at=act.created_at,
            issued=act.last_issued_at,
            expires=act.last_expires_at,
        )

    def record_issues(self, issues: list[tuple[str, int, int, int]]) -> None:
        """Store the serials of files being issued: (activation id, serial, now, expires
        at), each serial the activation's last + 1 (checked: another writer's change in
        between fails the whole transaction)."""
        if not issues:
            return
        cur = self._conn.executemany(
            "UPDATE activations SET serial = :serial, last_issued_at = :now, "
            "last_expires_at = :expires WHERE id = :id AND serial = :serial - 1",
            [
                {"serial": serial, "now": now, "expires": expires, "id": act_id}
                for act_id, serial, now, expires in issues
            ],
        )
        if cur.rowcount != len(issues):
            raise StorageError("activation serial changed under a write transaction")

    def deactivate(self, activation_id: str, now: int) -> None:
        self._run(
            "UPDATE activations SET deactivated_at = :now WHERE id = :id "
            "AND deactivated_at IS NULL",
            now=now,
            id=activation_id,
        )

    # -- sites -----------------------------------------------------------------------
    def assign_site(self, activation_id: str, site: str, now: int) -> None:
        # DIALECT: PostgreSQL spells this upsert the same way (ON CONFLICT ... DO UPDATE).
        self._run(
            "INSERT INTO sites (activation_id, site, assigned_at) VALUES (:id, :site, :now) "
            "ON CONFLICT (activation_id) DO UPDATE SET site = :site, assigned_at = :now",
            id=activation_id,
            site=site,
            now=now,
        )

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
        self._run(
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
            rows = self._all(
                "SELECT at, actor, source, action, license_id, activation_id, detail, id FROM "
                "audit ORDER BY id DESC LIMIT :limit",
                limit=limit,
            )
        else:
            rows = self._all(
                "SELECT at, actor, source, action, license_id, activation_id, detail, id FROM "
                "audit WHERE license_id = :lid ORDER BY id DESC LIMIT :limit",
                lid=license_id,
                limit=limit,
            )
        return [AuditEvent(*r) for r in reversed(rows)]

    # -- API tokens ------------------------------------------------------------------
    def insert_token(self, name: str, token_hash: str, now: int) -> None:
        self._run(
            "INSERT INTO api_tokens (name, token_hash, created_at) VALUES (:n, :h, :now)",
            n=name,
            h=token_hash,
            now=now,
        )

    def token_name(self, token_hash: str) -> str | None:
        row = self._one("SELECT name FROM api_tokens WHERE token_hash = :h", h=token_hash)
        return None if row is None else str(row[0])

    def list_tokens(self) -> list[tuple[str, int]]:
        return [(r[0], r[1]) for r in self._all("SELECT name, created_at FROM api_tokens")]


class Store:
    """The database: one SQLite file in WAL mode with synchronous=FULL.

    Connections are per thread (the HTTP server runs requests on a thread pool).

    Writers queue on a lock before ``BEGIN IMMEDIATE``: a mutex between the threads of a
    process, then ``flock`` on ``hq.sqlite3.writer`` between processes (server workers,
    the CLI). A waiter wakes the moment the lock is free; SQLite's own busy handler
    sleeps and polls instead (1, 2, 5 ... 100 ms), which under concurrent activations
    spends more time asleep than writing. A process that dies releases its ``flock``.
    """

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._local = threading.local()
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._migrate()

    @contextmanager
    def _writer_lock(self) -> Iterator[None]:
        # DIALECT: SQLite has one writer; PostgreSQL needs no such lock (lock_license).
        if not self._thread_lock.acquire(timeout=BUSY_TIMEOUT_S):
            raise StorageError(f"database busy: no write lock in {BUSY_TIMEOUT_S:.0f} s")
        try:
            if self._lock_fd is None:
                lock_path = self.path.with_name(self.path.name + ".writer")
                try:
                    self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                except OSError as e:
                    raise StorageError(f"cannot open the lock file {lock_path}: {e}") from e
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as e:
            raise StorageError(f"cannot open the database {self.path}: {e}") from e
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
        return conn

    def _writer(self) -> sqlite3.Connection:
        """The process's one write connection, used only under the writer lock: its page
        cache stays warm (SQLite drops a connection's whole cache when it sees another
        connection's write, so writers rotating over a pool of thread connections would
        re-read every page of every transaction)."""
        if self._write_conn is None:
            self._write_conn = self._open()
        return self._write_conn

    def close(self) -> None:
        for conn in (getattr(self._local, "conn", None), self._write_conn):
            if conn is not None:
                conn.close()
        self._local.conn = None
        self._write_conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection, begin: str) -> Iterator[Tx]:
        try:
            conn.execute(begin)
        except sqlite3.Error as e:
            raise StorageError(f"database unavailable: {e}") from e
        try:
            yield Tx(conn)
        except BaseException as e:
            _rollback(conn)
            if isinstance(e, sqlite3.IntegrityError):
                raise Conflict(f"refused by the database: {e}") from e
            if isinstance(e, sqlite3.Error):
                raise StorageError(f"database error: {e}") from e
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            _rollback(conn)
            raise StorageError(f"commit failed: {e}") from e

    def read(self) -> AbstractContextManager[Tx]:
        """A read transaction (a consistent snapshot)."""
        return self._transaction(self._reader(), "BEGIN")

    @contextmanager
    def write(self) -> Iterator[Tx]:
        """A write transaction, on the write connection under the writer lock. DIALECT:
        BEGIN IMMEDIATE takes SQLite's writer lock now, so a read-then-write (count seats,
        insert) cannot interleave with another."""
        with self._writer_lock(), self._transaction(self._writer(), "BEGIN IMMEDIATE") as tx:
            yield tx

    def _migrate(self) -> None:
        with self.write() as tx:
            conn = tx._conn
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"database schema version {current} is newer than this fieldpass-hq "
                    f"({SCHEMA_VERSION}): upgrade fieldpass-hq"
                )
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    def schema_version(self) -> int:
        with self.read() as tx:
            row = tx._one("SELECT MAX(version) FROM schema_version")
            return int(row[0])
