"""HQ's two database engines for the tests: SQLite (a file in the home) and PostgreSQL
(a fresh database per home on the session's one server, tests/pg_server.py).

``Engine.configure(home)`` points a home at its database the way an operator does,
through ``HOME/hq.toml``, so that every process on that home (the CLI, ``serve`` and its
workers, ``bridge``) uses it without flags. ``snapshot`` and ``connect`` read the
database behind HQ's back, as a second client would.
"""

import sqlite3
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.pg_server import Postgres

ENGINES = ("sqlite", "postgresql")


@dataclass
class Engine:
    name: str
    postgres: Postgres | None = None

    def configure(self, home: Path) -> str:
        """Give ``home`` a fresh database of this engine; its URL."""
        home.mkdir(parents=True, exist_ok=True)
        if self.postgres is None:
            return f"sqlite://{home.absolute() / 'hq.sqlite3'}"
        url = self.postgres.database()
        (home / "hq.toml").write_text(f'[database]\nurl = "{url}"\n')
        return url

    def __str__(self) -> str:
        return self.name


def url_of(home: Path) -> str | None:
    """The PostgreSQL URL of a home, None for SQLite."""
    path = home / "hq.toml"
    if not path.exists():
        return None
    url = tomllib.loads(path.read_text())["database"]["url"]
    assert isinstance(url, str)
    return url


@contextmanager
def connect(home: Path) -> Iterator[Any]:
    """A raw DB-API connection to the home's database (autocommit on PostgreSQL)."""
    url = url_of(home)
    if url is None:
        conn: Any = sqlite3.connect(home / "hq.sqlite3")
    else:
        import psycopg

        conn = psycopg.connect(url, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def tables(conn: Any, postgres: bool) -> list[str]:
    if postgres:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    else:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    return sorted(r[0] for r in rows if r[0] != "sqlite_sequence")


def snapshot(home: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (columns in table order, the same on both engines)."""
    with connect(home) as conn:
        names = tables(conn, url_of(home) is not None)
        return {
            t: sorted((tuple(r) for r in conn.execute(f"SELECT * FROM {t}").fetchall()), key=repr)
            for t in names
        }
