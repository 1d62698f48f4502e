"""PostgreSQL's write transactions (storage/postgres.py): each commits without waiting
for its WAL flush, so that the license's lock is released at once, and returns only
once a synchronous commit after it is on disk; read transactions leave the pooled
connections as they were."""

import threading
import time
from pathlib import Path

import pytest

from provisioning.errors import Conflict
from provisioning.models import Actor, AuditEvent
from provisioning.services import HQ, Issued
from provisioning.storage import open_store
from tests.pg_server import Postgres

ACTOR = Actor("test", "local")


def test_a_write_returns_only_once_its_changes_are_flushed(postgres_server: Postgres) -> None:
    """The WAL position just after the transaction's own writes is flushed when the
    write returns (the pooled connections commit asynchronously: without the durable
    wait, the flush would lag behind by up to the WAL writer's delay)."""
    store = open_store(postgres_server.database(), pool_size=2)
    try:
        for n in range(20):
            with store.write() as tx:
                tx.append_audit(AuditEvent(n, "test", "local", "durable", None))
                written = tx._one("SELECT pg_current_wal_insert_lsn()::text")[0]
            with store.read() as tx:
                behind = tx._one(
                    "SELECT pg_current_wal_flush_lsn() < CAST(:lsn AS pg_lsn)", lsn=written
                )[0]
            assert behind is False, f"write {n} returned before its WAL was flushed"
    finally:
        store.close()


def test_the_pooled_connections_commit_asynchronously_and_only_writes_wait(
    postgres_server: Postgres,
) -> None:
    """The session's setting is off on every pooled connection, and the statement that
    waits for the flush turns it on for its own one-statement transaction only."""
    store = open_store(postgres_server.database(), pool_size=1)
    try:
        with store.write() as tx:
            assert tx._one("SHOW synchronous_commit")[0] == "off"
        with store.read() as tx:
            assert tx._one("SHOW synchronous_commit")[0] == "off"
    finally:
        store.close()


def test_refused_writes_leave_the_pooled_connection_usable(
    tmp_path: Path, postgres_server: Postgres
) -> None:
    """A write the database refuses at the commit (a statement sent without waiting)
    makes the server skip what was sent after it, the COMMIT and the durable wait
    among them, while psycopg counts them as run and, at the fifth, takes one as
    prepared: a pooled connection that refused a few writes failed every later
    transaction of HQ, read or write ("prepared statement ... does not exist"), for as
    long as it stayed in the pool."""
    from tests.hq.server import hq_json, prepare_home

    home = tmp_path / "hq"
    home.mkdir()
    (home / "hq.toml").write_text(
        f'[database]\nurl = "{postgres_server.database()}"\npool_size = 1\n'
    )
    prepare_home(home, seats=20)
    key = str(hq_json(home, "licenses", "create", "--plan", "std")["key"])
    hq = HQ(home)
    now = int(time.time())
    try:
        act = hq.activate(key, "ab" * 32, now, ACTOR).activation
        for _ in range(12):
            with pytest.raises(Conflict, match="refused by the database"), hq.store.write() as tx:
                tx.append_audit(AuditEvent(now, "test", "local", "refused", act.license_id))
                tx.insert_activation(act)  # its id is taken
        for n in range(12):
            hq.activate(key, f"{n:02x}" * 32, now, ACTOR)
            assert hq.list_licenses()[0].seats_used == n + 2
        with hq.store.write() as tx:  # the connection that replaced it is set up as any
            assert tx._one("SHOW synchronous_commit")[0] == "off"
    finally:
        hq.store.close()


def test_concurrent_activations_of_one_device_reuse_its_seat(
    tmp_path: Path, postgres_server: Postgres
) -> None:
    """Many threads activating the same device at once on one license: the first
    creates the activation, every other one reads it after the license's lock and
    reactivates it (never a second seat, never a conflict)."""
    from tests.hq.server import hq_json, prepare_home

    home = tmp_path / "hq"
    home.mkdir()
    (home / "hq.toml").write_text(f'[database]\nurl = "{postgres_server.database()}"\n')
    prepare_home(home, seats=3)
    key = str(hq_json(home, "licenses", "create", "--plan", "std")["key"])
    hq = HQ(home)
    now = int(time.time())
    results: list[Issued | Exception] = []
    start = threading.Barrier(12)

    def activate() -> None:
        start.wait()
        try:
            results.append(hq.activate(key, "ab" * 32, now, ACTOR))
        except Exception as e:  # recorded and asserted below
            results.append(e)

    threads = [threading.Thread(target=activate) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        issued = [r for r in results if isinstance(r, Issued)]
        assert len(issued) == 12, [r for r in results if isinstance(r, Exception)]
        assert len([i for i in issued if i.created]) == 1
        assert len({i.activation.id for i in issued}) == 1
        serials = sorted(i.claims.serial for i in issued)
        assert serials == list(range(1, 13))
        lic = hq.list_licenses()[0]
        assert lic.seats_used == 1
    finally:
        hq.store.close()
