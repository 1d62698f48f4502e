"""HQ's storage: the database behind one small interface, one module per engine.

- ``interface``: ``Store``, what services may ask of a database (read and write
  transactions);
- ``tx``: ``Tx``, the operations inside a transaction, in portable SQL;
- ``migrations``: the schema's versions and how every engine applies them;
- ``sqlite``: the SQLite engine (the embedded default), with all that is SQLite's alone;
- ``postgres``: the PostgreSQL engine (psycopg 3, the ``hq`` extra), for several
  processes and hosts sharing one database;
- ``copy``: every row of one store into another, verified by counts and digests.

``open_store(url)`` is where an engine is chosen: ``sqlite:///PATH`` (by default the
file in HQ's home) or ``postgresql://...``. Nothing outside this package writes SQL or
imports a database driver.
"""

from pathlib import Path

from ..errors import ConfigError
from . import sqlite
from .interface import DEFAULT_POOL_SIZE, POSTGRES_SCHEMES, Store
from .migrations import SCHEMA_VERSION
from .tx import PlanRows, Tx

__all__ = ["SCHEMA_VERSION", "PlanRows", "Store", "Tx", "default_url", "engine_of", "open_store"]


def default_url(home: Path) -> str:
    """The database of HQ's home when no other is set: its SQLite file."""
    return sqlite.url(home / sqlite.DB_NAME)


def open_store(url: str, *, pool_size: int = DEFAULT_POOL_SIZE, migrate: bool = True) -> Store:
    """Open the database at ``url`` and bring its schema to this program's version
    (``migrate=False``: leave it as it is, for ``db status``). The URL is never echoed:
    a PostgreSQL URL may hold a password."""
    scheme = url.partition(":")[0]
    if scheme == sqlite.SCHEME:
        return sqlite.open_url(url, migrate=migrate)
    if scheme in POSTGRES_SCHEMES:
        from . import postgres  # its module only where its engine is used

        return postgres.open_url(url, pool_size=pool_size, migrate=migrate)
    raise ConfigError(
        "unsupported database URL: use sqlite:///PATH or postgresql://[USER@]HOST/DBNAME"
    )


def engine_of(url: str) -> str:
    """``sqlite`` or ``postgresql``: the engine a URL names (the URL itself is never
    shown)."""
    scheme = url.partition(":")[0]
    return "postgresql" if scheme in POSTGRES_SCHEMES else scheme
