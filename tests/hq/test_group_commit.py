"""SQLite's group commit (provisioning/storage/group_commit.py) on a real database:
concurrent write transactions share commits, each returns only once its writes are
committed (a second connection sees them), and a member that fails is rolled back alone
while the others of its batch commit."""

import sqlite3
import threading
from pathlib import Path

import pytest

from provisioning.errors import Conflict
from provisioning.models import Plan
from provisioning.storage.sqlite import SQLiteStore

THREADS = 16
EACH = 40


def plan(name: str) -> Plan:
    return Plan(name, "default", 86400, 0, 1, None, 0)


class Boom(Exception):
    pass


def test_concurrent_writers_share_commits_and_failures_stay_alone(tmp_path: Path) -> None:
    db = tmp_path / "hq.sqlite3"
    store = SQLiteStore(db)
    commits: list[str] = []
    store._writer().set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    barrier = threading.Barrier(THREADS)
    seen_after_return: list[bool] = []
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        reader = sqlite3.connect(db)
        barrier.wait()
        for i in range(EACH):
            name = f"p{t}-{i}"
            try:
                with store.write() as tx:
                    tx.insert_plan(plan(name))
                    if i % 4 == 3:
                        raise Boom  # this member alone is rolled back
            except Boom:
                continue
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)
                return
            row = reader.execute("SELECT 1 FROM plans WHERE name = ?", (name,)).fetchone()
            seen_after_return.append(row is not None)
        reader.close()

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    kept = THREADS * EACH * 3 // 4
    assert len(seen_after_return) == kept and all(seen_after_return)  # durable on return
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM plans")}
    assert names == {f"p{t}-{i}" for t in range(THREADS) for i in range(EACH) if i % 4 != 3}
    assert len(commits) < kept  # some transactions shared a commit
    store.close()


def test_a_conflict_in_a_batch_refuses_one_member_and_commits_the_rest(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hq.sqlite3")
    barrier = threading.Barrier(THREADS)
    outcomes: list[str] = []

    def writer(t: int) -> None:
        barrier.wait()
        try:
            with store.write() as tx:
                tx.insert_plan(plan("same"))  # one wins, every other one conflicts
            outcomes.append("ok")
        except Conflict:
            with store.write() as tx:
                tx.insert_plan(plan(f"own-{t}"))
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["conflict"] * (THREADS - 1) + ["ok"]
    with store.read() as tx:
        names = {p.name for p in tx.list_plans()}
    assert "same" in names and len(names) == THREADS  # 'same' + the losers' own plans
    store.close()


def test_a_write_inside_a_write_of_another_thread_waits_and_is_not_lost(tmp_path: Path) -> None:
    """A long transaction holds the slot; another thread's write waits for it, then runs
    in the next batch (bounded by the busy timeout, not forever)."""
    store = SQLiteStore(tmp_path / "hq.sqlite3")
    started, release = threading.Event(), threading.Event()

    def long_writer() -> None:
        with store.write() as tx:
            tx.insert_plan(plan("long"))
            started.set()
            release.wait(30)

    t = threading.Thread(target=long_writer)
    t.start()
    assert started.wait(30)
    done = threading.Event()

    def second() -> None:
        with store.write() as tx:
            tx.insert_plan(plan("second"))
        done.set()

    t2 = threading.Thread(target=second)
    t2.start()
    assert not done.wait(0.3)  # waiting for the slot
    release.set()
    t.join(30)
    t2.join(30)
    assert done.is_set()
    with store.read() as tx:
        assert {p.name for p in tx.list_plans()} == {"long", "second"}
    store.close()


@pytest.mark.parametrize("fail_at", ["body", "none"])
def test_a_lone_transaction_commits_at_once(tmp_path: Path, fail_at: str) -> None:
    store = SQLiteStore(tmp_path / "hq.sqlite3")
    try:
        with store.write() as tx:
            tx.insert_plan(plan("alone"))
            if fail_at == "body":
                raise Boom
    except Boom:
        pass
    with sqlite3.connect(tmp_path / "hq.sqlite3") as conn:
        rows = conn.execute("SELECT name FROM plans").fetchall()
    assert rows == ([] if fail_at == "body" else [("alone",)])
    store.close()


def test_a_member_refused_for_a_row_of_its_batch_sees_that_row_once_refused(
    tmp_path: Path,
) -> None:
    """A member refused because of what an earlier member of its batch wrote (a relay
    of a swap sent twice: the second finds the first's receipt) answers by reading what
    is there (services/swap.py). It raises only once its batch committed, so that read
    sees the row it was refused for: were it to raise at once, while the batch goes on
    with a third member, the row would not be committed yet."""
    store = SQLiteStore(tmp_path / "hq.sqlite3")
    inside, go = threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with store.write() as tx:
            tx.insert_plan(plan("same"))
            inside.set()
            assert go.wait(30)

    def duplicate() -> None:
        try:
            with store.write() as tx:
                tx.insert_plan(plan("same"))
        except Conflict:
            with store.read() as tx:
                seen.append(tx.get_plan("same") is not None)

    a = threading.Thread(target=first)
    a.start()
    assert inside.wait(30)
    others = [threading.Thread(target=duplicate) for _ in range(2)]
    for t in others:
        t.start()
    for _ in range(3000):  # both queued for the slot the first holds
        if store._commits._waiting == 2:
            break
        threading.Event().wait(0.01)
    assert store._commits._waiting == 2
    go.set()
    for t in (a, *others):
        t.join(30)
    assert seen == [True, True]
    store.close()
