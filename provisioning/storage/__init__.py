"""HQ's storage: the database behind one small interface, one module per engine.

- ``interface``: ``Store``, what services may ask of a database (read and write
  transactions);
- ``tx``: ``Tx``, the operations inside a transaction, in portable SQL;
- ``migrations``: the schema's versions and how every engine applies them;
- ``sqlite``: the SQLite engine (the embedded default), with all that is SQLite's alone.

``open_store(url)`` is where an engine is chosen: ``sqlite:///PATH`` today (by default
the file in HQ's home); a second engine adds its scheme there. Nothing outside this
package writes SQL or imports a database driver.
"""

from pathlib import Path

from ..errors import ConfigError
from . import sqlite
from .interface import Store
from .migrations import SCHEMA_VERSION
from .tx import Tx

__all__ = ["SCHEMA_VERSION", "Store", "Tx", "default_url", "open_store"]


def default_url(home: Path) -> str:
    """The database of HQ's home when no other is set: its SQLite file."""
    return sqlite.url(home / sqlite.DB_NAME)


def open_store(url: str) -> Store:
    """Open (and migrate) the database at ``url``. The URL is never echoed: a later
    engine's URL may hold a password."""
    scheme = url.partition(":")[0]
    if scheme == sqlite.SCHEME:
        return sqlite.open_url(url)
    raise ConfigError("unsupported database URL: use sqlite:///PATH")
