"""What HQ's services may ask of a database, whatever the engine: ``Store``.

A store hands out transactions; each yields a ``Tx`` (storage/tx.py) with the
operations. ``write()`` transactions of one store, across threads, processes and hosts,
behave as if one ran after the other for the rows they lock (``Tx.lock_license``): the
seat rule's count and insert rely on it. Leaving the ``with`` block commits; an
exception rolls back. A constraint the database refuses surfaces as ``Conflict``, any
other failure of the engine as ``StorageError``: no driver exception escapes.

Services depend on this module and on ``Tx`` only, never on an engine module.
"""

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager

from .sealing import UNSEALED, LicenseKeys
from .tx import Tx

# The URL schemes that name the PostgreSQL engine, and its default pool size: here, so
# that choosing an engine (storage/__init__.py, config.py) loads no engine's module.
POSTGRES_SCHEMES = ("postgresql", "postgres")
DEFAULT_POOL_SIZE = 8


class Store(ABC):
    """A database with HQ's schema at the current version (migrated when opened).

    ``license_keys`` seals and opens the license keys its transactions write and read
    (storage/sealing.py); HQ sets it once the store is open (provisioning/sealed_keys.py)."""

    license_keys: LicenseKeys = UNSEALED

    @abstractmethod
    def read(self) -> AbstractContextManager[Tx]:
        """A read transaction (a consistent snapshot)."""

    @abstractmethod
    def write(self) -> AbstractContextManager[Tx]:
        """A write transaction."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and locks; the store may be opened again later."""

    def schema_version(self) -> int:
        with self.read() as tx:
            return tx.schema_version()
