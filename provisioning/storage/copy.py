"""Every row of HQ's database, table by table: dumped in key order from one read
transaction (a consistent snapshot while servers write), loaded into an empty store
in one write transaction, and verified by each table's row count and digest.

Used by ``fieldpass-hq db copy`` (SQLite to PostgreSQL, or any store to an empty one)
and by ``backup``/``restore`` (provisioning/backup.py). A table's digest is SHA-256 over
its rows in key order, each the canonical JSON of its values: the same rows give the
same digest on every engine. License keys are copied as the database holds them;
signing seeds and the MQTT secret are not in the database and never pass here.
"""

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, StorageError
from .interface import Store
from .tx import Tx

# Every table, parents before children (foreign keys), with its key columns.
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("schema_version", ("version",)),
    ("signing_keys", ("kid",)),
    ("plans", ("name",)),
    ("licenses", ("id",)),
    ("entitlements", ("license_id", "feature")),
    ("activations", ("id",)),
    ("sites", ("activation_id",)),
    ("challenges", ("challenge",)),
    ("audit", ("id",)),
    ("api_tokens", ("name",)),
    ("usage_reports", ("activation_id", "seq")),
    ("returns", ("activation_id",)),
    ("plan_counters", ("plan", "counter")),
    ("plan_meters", ("plan", "feature")),
    ("meter_periods", ("activation_id", "feature", "period_start")),
    ("bridge_answers", ("activation_id",)),
    ("device_outbox", ("activation_id",)),
    ("console_sessions", ("id_hash",)),
    ("sealing", ("name",)),
)
# Kept by the database itself (triggers on activations): loaded as 0, counted again
# (by the triggers as rows arrive, or at the end: Tx.after_load), then verified like
# every other column.
_COUNTED = {"licenses": "seats_used"}


@dataclass(frozen=True)
class TableSum:
    rows: int
    sha256: str


class Digest:
    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.rows = 0

    def add(self, row: Iterable[Any]) -> None:
        self._h.update(json.dumps(list(row), separators=(",", ":")).encode() + b"\n")
        self.rows += 1

    def sum(self) -> TableSum:
        return TableSum(self.rows, self._h.hexdigest())


def check_tables(tx: Tx) -> None:
    """Refuse a database with a table this program does not know (a newer schema)."""
    unknown = tx.table_names() - {t for t, _ in TABLES}
    if unknown:
        raise ConfigError(f"the database has tables this fieldpass-hq does not know: {unknown}")


def dump(tx: Tx) -> Iterator[tuple[str, list[str], Iterator[Any]]]:
    """(table, columns, rows in key order) for every table, from ``tx``'s snapshot."""
    check_tables(tx)
    for table, key in TABLES:
        columns = tx.columns(table)
        yield table, columns, iter(tx.iter_rows(table, columns, key))


def sums(store: Store) -> dict[str, TableSum]:
    """Each table's row count and digest, from one snapshot."""
    with store.read() as tx:
        return sums_in(tx)


def sums_in(tx: Tx) -> dict[str, TableSum]:
    """Each table's row count and digest as ``tx`` sees them (its own writes too)."""
    out: dict[str, TableSum] = {}
    for table, _columns, rows in dump(tx):
        digest = Digest()
        for row in rows:
            digest.add(row)
        out[table] = digest.sum()
    return out


def is_empty(store: Store) -> bool:
    """True when the store holds no row beyond its schema's bookkeeping."""
    return all(s.rows == 0 for t, s in sums(store).items() if t != "schema_version")


def load(
    tx: Tx,
    tables: Iterable[tuple[str, list[str], Iterable[Any]]],
    progress: Callable[[str, int], None] = lambda table, n: None,
) -> dict[str, TableSum]:
    """Insert every table's rows into the empty store of ``tx`` (a write transaction
    whose schema is the same version); the digests of what was inserted."""
    out: dict[str, TableSum] = {}
    tx.before_load()
    for table, columns, rows in tables:
        if table == "schema_version":  # the target's migrations wrote its own
            digest = Digest()
            for row in rows:
                digest.add(row)
            out[table] = digest.sum()
            continue
        known = tx.columns(table)
        if sorted(known) != sorted(columns):
            raise StorageError(f"table {table}: columns {columns} where the target has {known}")
        counted = columns.index(_COUNTED[table]) if table in _COUNTED else None
        digest = Digest()
        batch: list[list[Any]] = []
        for row in rows:
            values = list(row)
            digest.add(values)
            if counted is not None:
                values[counted] = 0
            batch.append(values)
            if len(batch) >= 2000:
                tx.insert_rows(table, columns, batch)
                batch = []
        if batch:
            tx.insert_rows(table, columns, batch)
        out[table] = digest.sum()
        progress(table, digest.rows)
    tx.after_load()
    return out


def copy(source: Store, target: Store) -> dict[str, TableSum]:
    """Every row of ``source`` into the empty ``target``, verified before it commits:
    each table's count and digest read back inside the target's transaction equal the
    source's (a difference rolls the whole copy back)."""
    if source.schema_version() != target.schema_version():
        raise ConfigError("the two databases are at different schema versions")
    if not is_empty(target):
        raise ConfigError("the target database is not empty: copy only into a new database")
    with source.read() as src, target.write() as dst:
        loaded = load(dst, dump(src))
        compare(sums_in(dst), loaded)
    return loaded


def compare(found: dict[str, TableSum], expected: dict[str, TableSum]) -> None:
    """Raise unless every expected table is found with its count and digest."""
    for table, want in expected.items():
        got = found.get(table)
        if got != want:
            rows = "missing" if got is None else f"{got.rows} rows"
            raise StorageError(
                f"verification failed: table {table} has {rows}, expected {want.rows} rows "
                f"with digest {want.sha256[:16]}..."
            )


def verify(store: Store, expected: dict[str, TableSum]) -> None:
    """Raise unless every table of ``store`` has the expected count and digest."""
    compare(sums(store), expected)
