"""The SQLite engine: HQ's database as one file in WAL mode, and everything about it
that is SQLite's alone.

Here and nowhere else: the DDL of every migration in SQLite's dialect, the connection
settings (WAL, ``synchronous``, foreign keys), ``BEGIN IMMEDIATE``, the writer lock
(a mutex between threads, ``flock`` between processes), the warm write connection, the
file's name and mode in HQ's home, and the ``sqlite:///PATH`` URL. The operations
themselves are the portable ones of ``storage/tx.py``.

Never sees a signing key; never logs anything (rows hold license keys).
"""

import fcntl
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from ..errors import ConfigError, Conflict, StorageError
from . import migrations
from .group_commit import GroupCommit
from .interface import Store
from .tx import DEVICE_KEY_INDEX, Tx, refused
from .usage_ops import FILES_RUN_UNTIL, RETURNS_WAITING

SCHEME = "sqlite"
DB_NAME = "hq.sqlite3"
BUSY_TIMEOUT_S = 30.0
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

# Version 6, in portable DDL (storage/postgres.py writes the same tables with byte-ordered
# text keys): usage reports, returns, plans' counters, meters and return limit.
USAGE_AND_RETURNS = [
    """CREATE TABLE usage_reports (
        activation_id TEXT NOT NULL REFERENCES activations(id),
        seq BIGINT NOT NULL,
        counters TEXT NOT NULL,
        device_at BIGINT NOT NULL,
        received_at BIGINT NOT NULL,
        via TEXT NOT NULL,
        PRIMARY KEY (activation_id, seq))""",
    "ALTER TABLE activations ADD COLUMN report_seq BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE activations ADD COLUMN tpm_bound BIGINT NOT NULL DEFAULT 0",
    """CREATE TABLE returns (
        activation_id TEXT PRIMARY KEY REFERENCES activations(id),
        serial BIGINT NOT NULL,
        returned_at BIGINT NOT NULL,
        received_at BIGINT NOT NULL,
        via TEXT NOT NULL,
        receipt TEXT NOT NULL,
        frees_at BIGINT NOT NULL,
        override TEXT)""",
    "ALTER TABLE plans ADD COLUMN returns_per_year BIGINT",
    """CREATE TABLE plan_counters (
        plan TEXT NOT NULL REFERENCES plans(name),
        counter TEXT NOT NULL,
        PRIMARY KEY (plan, counter))""",
    """CREATE TABLE plan_meters (
        plan TEXT NOT NULL REFERENCES plans(name),
        feature TEXT NOT NULL,
        counter TEXT NOT NULL,
        usage_limit BIGINT NOT NULL,
        period_s BIGINT NOT NULL,
        PRIMARY KEY (plan, feature))""",
    """CREATE TABLE meter_periods (
        activation_id TEXT NOT NULL REFERENCES activations(id),
        feature TEXT NOT NULL,
        period_start BIGINT NOT NULL,
        period_end BIGINT NOT NULL,
        base BIGINT NOT NULL,
        PRIMARY KEY (activation_id, feature, period_start))""",
]

# SQLite's statements for each of storage.migrations.VERSIONS. (Public keys are base64
# text, so that no engine needs a binary type.)
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
    (
        4,
        [
            # The device's own key (base64 public key and its id), the agent version and
            # claims format it last asked for, when and how HQ last heard from it.
            "ALTER TABLE activations ADD COLUMN device_key TEXT",
            "ALTER TABLE activations ADD COLUMN device_key_id TEXT",
            "ALTER TABLE activations ADD COLUMN agent_version TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE activations ADD COLUMN claims_format INTEGER NOT NULL DEFAULT 1",
            "ALTER TABLE activations ADD COLUMN last_seen_at INTEGER",
            "ALTER TABLE activations ADD COLUMN last_channel TEXT",
            """CREATE UNIQUE INDEX activations_by_device_key ON activations (device_key_id)
                WHERE device_key_id IS NOT NULL AND deactivated_at IS NULL""",
            # Server challenges: single use, so a recorded device request cannot be
            # replayed later (shared by every replica through the database).
            """CREATE TABLE challenges (
                challenge TEXT PRIMARY KEY,
                created_at INTEGER NOT NULL,
                used_at INTEGER)""",
            "CREATE INDEX challenges_by_age ON challenges (created_at)",
            # A retired signing key signs nothing new (devices keep trusting it).
            "ALTER TABLE signing_keys ADD COLUMN retired_at INTEGER",
        ],
    ),
    (
        5,
        [
            # Admin tokens: an expiry (NULL: never, as every token made before this
            # version) and a revocation. Portable DDL: PostgreSQL runs these as written.
            "ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT",
            "ALTER TABLE api_tokens ADD COLUMN revoked_at BIGINT",
        ],
    ),
    (6, USAGE_AND_RETURNS),
    (
        7,
        [
            # What the MQTT bridges last answered each device: the rate limit's
            # check-and-set (one UPDATE guarded by the interval, whichever replica runs
            # it) and the sealed file, base64, to publish again within the interval.
            # Portable DDL: PostgreSQL runs these as written.
            """CREATE TABLE bridge_answers (
                activation_id TEXT PRIMARY KEY REFERENCES activations(id),
                answered_at BIGINT NOT NULL,
                serial BIGINT NOT NULL,
                machine_file TEXT NOT NULL)""",
            # The outbox: what each device must be told after HQ changed its standing,
            # written in the transaction of the change, kept until the device's status
            # confirms it (docs/mqtt.md). One row per activation: the newest change wins.
            """CREATE TABLE device_outbox (
                activation_id TEXT PRIMARY KEY REFERENCES activations(id),
                license_id TEXT NOT NULL,
                action TEXT NOT NULL
                    CHECK (action IN ('suspend', 'revoke', 'reinstate', 'deactivate')),
                created_at BIGINT NOT NULL,
                next_at BIGINT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                sent_at BIGINT,
                reason TEXT,
                serial BIGINT,
                payload TEXT,
                confirmed_at BIGINT)""",
            """CREATE INDEX device_outbox_due ON device_outbox (next_at)
                WHERE confirmed_at IS NULL""",
            # A deactivated device is still heard (its status confirms what it was told):
            # its key found without a scan of every activation.
            "CREATE INDEX activations_by_any_device_key ON activations (device_key_id)",
            # Devices of licenses suspended or revoked before this version are told too.
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
            # Portable DDL: PostgreSQL runs these as written.
            # A license's own seat limit (NULL: its plan's), set by `licenses seats`.
            "ALTER TABLE licenses ADD COLUMN seats BIGINT CHECK (seats > 0)",
            # The console's sessions, shared by every replica through the database: the
            # SHA-256 of the session id (the cookie's value is never stored), the admin
            # token it was opened with (checked again on every request), when it ends.
            """CREATE TABLE console_sessions (
                id_hash TEXT PRIMARY KEY,
                token_name TEXT NOT NULL REFERENCES api_tokens(name),
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                ended_at BIGINT)""",
            "CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at)",
            # The fleet views: files expiring within N days, a license's audit, a time range.
            "CREATE INDEX activations_by_expiry ON activations (last_expires_at)",
            "CREATE INDEX audit_by_license ON audit (license_id, id)",
            "CREATE INDEX audit_by_time ON audit (at)",
        ],
    ),
    (
        9,
        [
            # Portable DDL: PostgreSQL runs these as written.
            # The ids of the signing keys the device says its keyring holds (space
            # separated; NULL: it never said), so that HQ signs with one it trusts.
            "ALTER TABLE activations ADD COLUMN keyring TEXT",
        ],
    ),
    (10, RETURNS_WAITING),  # Portable DDL (storage/usage_ops.py): the same on every engine.
    (11, FILES_RUN_UNTIL),  # Portable DDL (storage/usage_ops.py), as version 10.
    (12, ["CREATE TABLE sealing (name TEXT PRIMARY KEY, kid TEXT NOT NULL)"]),
]


def url(path: Path, *, synchronous: str = "FULL") -> str:
    """``sqlite:///PATH``; ``?synchronous=`` only when not FULL (benchmarks)."""
    quoted = urllib.parse.quote(str(path.absolute()), errors="surrogateescape")
    text = f"{SCHEME}://{quoted}"
    return text if synchronous == "FULL" else f"{text}?synchronous={synchronous}"


def open_url(text: str, *, migrate: bool = True) -> "SQLiteStore":
    """The store of a ``sqlite:///PATH[?synchronous=FULL|NORMAL|...]`` URL."""
    parts = urllib.parse.urlsplit(text)
    query = urllib.parse.parse_qs(parts.query)
    synchronous = query.pop("synchronous", ["FULL"])[-1].upper()
    if parts.scheme != SCHEME or parts.netloc or not parts.path or query:
        raise ConfigError("a SQLite database URL is sqlite:///PATH[?synchronous=FULL]")
    if synchronous not in SYNCHRONOUS:
        raise ConfigError(f"synchronous is one of {', '.join(SYNCHRONOUS)}")
    path = urllib.parse.unquote(parts.path, errors="surrogateescape")
    return SQLiteStore(Path(path), synchronous=synchronous, migrate=migrate)


class SQLiteTx(Tx):
    def lock_license(self, license_id: str) -> None:
        """Nothing to do: a write transaction holds the database's one writer lock from
        its start (``BEGIN IMMEDIATE``), so no other can interleave."""

    def columns(self, table: str) -> list[str]:
        return [r[1] for r in self._all(f"PRAGMA table_info({table})")]

    def table_names(self) -> set[str]:
        rows = self._all("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {r[0] for r in rows} - {"sqlite_sequence"}


_DEVICE_KEY_TAKEN = "UNIQUE constraint failed: activations.device_key_id"


def _refused(e: sqlite3.IntegrityError) -> Conflict:
    # SQLite names the columns of a unique index it enforces, not the index
    index = DEVICE_KEY_INDEX if str(e) == _DEVICE_KEY_TAKEN else None
    return refused(str(e), index)


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # no transaction left to roll back: SQLite already did


class SQLiteStore(Store):
    """The database: one SQLite file in WAL mode with synchronous=FULL.

    Connections are per thread (the HTTP server runs requests on a thread pool).

    Writers queue before ``BEGIN IMMEDIATE``: between the threads of a process on the
    group commit's slot (storage/group_commit.py: threads that arrive while one writes
    share its transaction and its one fsync), then on ``flock`` of ``hq.sqlite3.writer``
    between processes (server workers, the CLI). A waiter wakes the moment the lock is
    free; SQLite's own busy handler sleeps and polls instead (1, 2, 5 ... 100 ms), which
    under concurrent activations spends more time asleep than writing. A process that
    dies releases its ``flock``.
    """

    def __init__(self, path: Path, *, synchronous: str = "FULL", migrate: bool = True) -> None:
        self.path = path
        self.synchronous = synchronous
        self._local = threading.local()
        self._lock_fd: int | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._commits = self._group()
        try:
            # The database holds license keys: readable by its owner only.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as e:
            raise ConfigError(f"cannot use the database {path}: {e.strerror}") from e
        if migrate:
            with self.write() as tx:
                migrations.upgrade(tx, SCHEME, MIGRATIONS)

    def _lock(self) -> None:
        """``flock`` on ``hq.sqlite3.writer``: one writing process at a time."""
        if self._lock_fd is None:
            lock_path = self.path.with_name(self.path.name + ".writer")
            try:
                self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise StorageError(f"cannot open the lock file {lock_path}: {e}") from e
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _begin(self) -> None:
        self._lock()
        try:
            self._writer().execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            self._unlock()
            raise StorageError(f"database unavailable: {e}") from e
        except BaseException:
            self._unlock()
            raise

    def _end(self, statement: str) -> None:
        try:
            self._writer().execute(statement)
        except sqlite3.Error as e:
            if statement == "COMMIT":
                _rollback(self._writer())
            raise StorageError(f"{statement.lower()} failed: {e}") from e
        finally:
            self._unlock()

    def _group(self) -> GroupCommit:
        def run(template: str) -> Callable[[str], None]:
            def execute(name: str) -> None:
                self._writer().execute(template.format(name))

            return execute

        return GroupCommit(
            begin=self._begin,
            commit=lambda: self._end("COMMIT"),
            rollback=lambda: self._end("ROLLBACK"),
            savepoint=run("SAVEPOINT {}"),
            release=run("RELEASE {}"),
            rollback_to=run("ROLLBACK TO {}"),
            in_transaction=lambda: self._writer().in_transaction,
            timeout_s=BUSY_TIMEOUT_S,
        )

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
            yield SQLiteTx(conn, self.license_keys)
        except BaseException as e:
            _rollback(conn)
            if isinstance(e, sqlite3.IntegrityError):
                raise _refused(e) from e
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
        """A write transaction on the write connection, under the writer lock (``BEGIN
        IMMEDIATE`` takes SQLite's writer lock at once, so a read-then-write such as
        count seats, insert cannot interleave with another). The writes of threads that
        arrive meanwhile share its commit (storage/group_commit.py): each returns after
        the one fsync that makes all of them durable."""
        try:
            with self._commits.run():
                try:
                    yield SQLiteTx(self._writer(), self.license_keys)
                except sqlite3.IntegrityError as e:
                    raise _refused(e) from e
        except sqlite3.Error as e:
            raise StorageError(f"database error: {e}") from e
