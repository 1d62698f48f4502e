"""HQ's configuration: which database, from one setting, and the small TOML file in
HQ's home (``HOME/hq.toml``) that can hold it.

The database URL is, first found: ``--database URL`` (the root option), the
environment's ``FIELDPASS_HQ_DATABASE``, ``[database] url`` in ``HOME/hq.toml``, else
the SQLite file in the home (``sqlite:///HOME/hq.sqlite3``). The file::

    [database]
    url = "postgresql://fieldpass@db.example:5432/fieldpass?sslmode=verify-full"
    pool_size = 8          # connections per process (PostgreSQL only)

Every key is checked (an unknown one is an error, so a typo is never silently
ignored); the file is at most ``MAX_CONFIG_BYTES`` and flat (tables one level deep, no
arrays or inline tables). A URL is never echoed (it may hold a password): errors name
the file and the key only.
"""

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .storage import default_url
from .storage.interface import DEFAULT_POOL_SIZE

CONFIG_NAME = "hq.toml"
DATABASE_ENV = "FIELDPASS_HQ_DATABASE"
MAX_CONFIG_BYTES = 16 * 1024
MAX_DEPTH = 2  # [table] key = scalar
MAX_POOL_SIZE = 256

_KEYS: dict[str, dict[str, type]] = {"database": {"url": str, "pool_size": int}}


@dataclass(frozen=True)
class Database:
    url: str
    pool_size: int = DEFAULT_POOL_SIZE
    source: str = "default"  # option | environment | HOME/hq.toml | default


def _nesting(text: str) -> int:
    """The deepest nesting of arrays and inline tables, outside strings and comments
    (a bound checked before the parser runs)."""
    depth = deepest = 0
    quote = ""
    comment = False
    for c in text:
        if comment:
            comment = c != "\n"
        elif quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#":
            comment = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def load_file(home: Path) -> dict[str, dict[str, object]]:
    """``HOME/hq.toml``, checked; empty when there is none."""
    path = home / CONFIG_NAME
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    # [[table]] is two brackets deep: one deeper than a plain table, and never valid here
    if _nesting(text) > 1:
        raise ConfigError(f"{path}: nested more than {MAX_DEPTH} levels (arrays are not used)")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    values: dict[str, dict[str, object]] = {}
    for section, table in doc.items():
        if section not in _KEYS or not isinstance(table, dict):
            raise ConfigError(f"{path}: unknown section {section!r} (known: [database])")
        values[section] = {}
        for key, item in table.items():
            expected = _KEYS[section].get(key)
            if expected is None:
                raise ConfigError(f"{path}: unknown key [{section}] {key!r}")
            if type(item) is not expected:
                raise ConfigError(f"{path}: [{section}] {key} must be a {expected.__name__}")
            values[section][key] = item
    return values


def database(home: Path, option: str | None = None) -> Database:
    """The database HQ uses for ``home`` (first found: option, environment, file,
    default) and its pool size."""
    section = load_file(home).get("database", {})
    pool_size = section.get("pool_size", DEFAULT_POOL_SIZE)
    assert isinstance(pool_size, int)
    if not 1 <= pool_size <= MAX_POOL_SIZE:
        raise ConfigError(f"{home / CONFIG_NAME}: pool_size is 1 to {MAX_POOL_SIZE}")
    if option:
        return Database(option, pool_size, "option")
    env = os.environ.get(DATABASE_ENV)
    if env:
        return Database(env, pool_size, "environment")
    url = section.get("url")
    if isinstance(url, str) and url:
        return Database(url, pool_size, str(home / CONFIG_NAME))
    return Database(default_url(home), pool_size, "default")
