"""Group commit for a database with one writer (SQLite): the write transactions of the
threads of one process that arrive while one is running share its transaction and its
one durable commit (one fsync), and each returns only after that commit.

How: one thread at a time holds the *slot* (the write connection). The first opens a
transaction (``begin``: the writer lock and ``BEGIN IMMEDIATE``); each runs its body
inside its own savepoint, so a body that fails is rolled back alone; when it leaves and
another thread is waiting for the slot (and the batch is not full), it hands the slot
on without committing; the last one out commits for all and wakes them. Under no load
a transaction commits at once, as before; under load, up to ``MAX_BATCH`` share one
commit. A failed commit fails every member (none was answered yet).

What a member may rely on is what a serial order gives: bodies run one after the other
on one connection, each sees the writes of those before it, and nothing of a batch is
visible to other connections, or durable, before its commit. A member that fails raises
only once its batch ended too: its refusal may rest on an earlier member's row, which
the caller may read (another connection) to answer. A body must not open another write
transaction (it would wait for itself).

No SQL here, no driver: the engine gives the four statements as callables.
"""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..errors import StorageError

MAX_BATCH = 64


class _Batch:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.members = 0


class GroupCommit:
    """``run()``: a context manager around one member's body (see the module doc).

    ``begin()`` opens the shared transaction, ``commit()`` and ``rollback()`` end it;
    ``savepoint(name)``, ``release(name)`` and ``rollback_to(name)`` bracket a member;
    ``in_transaction()`` tells whether the engine still holds the transaction (an I/O
    error can make SQLite roll it back by itself)."""

    def __init__(
        self,
        begin: Callable[[], None],
        commit: Callable[[], None],
        rollback: Callable[[], None],
        savepoint: Callable[[str], None],
        release: Callable[[str], None],
        rollback_to: Callable[[str], None],
        in_transaction: Callable[[], bool],
        timeout_s: float,
    ) -> None:
        self._begin, self._commit, self._rollback = begin, commit, rollback
        self._savepoint, self._release, self._rollback_to = savepoint, release, rollback_to
        self._in_transaction = in_transaction
        self._timeout_s = timeout_s
        self._cv = threading.Condition()
        self._busy = False
        self._waiting = 0
        self._batch: _Batch | None = None

    def _acquire(self) -> _Batch:
        deadline = time.monotonic() + self._timeout_s
        with self._cv:
            self._waiting += 1
            try:
                while self._busy:
                    left = deadline - time.monotonic()
                    if left <= 0 or (not self._cv.wait(left) and self._busy):
                        raise StorageError(
                            f"database busy: no write lock in {self._timeout_s:.0f} s"
                        )
            finally:
                self._waiting -= 1
            self._busy = True
            batch = self._batch
        if batch is None:
            try:
                self._begin()
            except BaseException:
                self._free()
                raise
            batch = _Batch()
            with self._cv:
                self._batch = batch
        return batch

    def _free(self) -> None:
        with self._cv:
            self._busy = False
            self._cv.notify()

    def _leave(self, batch: _Batch, member: bool) -> None:
        """Hand the slot on, or commit the batch for all its members."""
        if member:
            batch.members += 1
        if batch.error is None and not self._in_transaction():
            batch.error = StorageError("the database ended the transaction after an error")
        with self._cv:
            hand_on = self._waiting > 0 and batch.members < MAX_BATCH and batch.error is None
            if hand_on:
                self._busy = False
                self._cv.notify()
                return
        try:
            if batch.error is None:
                self._commit()
            else:
                self._rollback()
        except BaseException as e:
            batch.error = batch.error or e
            try:
                self._rollback()
            except BaseException:  # noqa: S110 - the engine already ended it
                pass
        finally:
            with self._cv:
                self._batch = None
                self._busy = False
                self._cv.notify()
            batch.done.set()

    @contextmanager
    def run(self) -> Iterator[None]:
        batch = self._acquire()
        name = f"m{batch.members}"
        try:
            self._savepoint(name)
        except BaseException as e:
            batch.error = batch.error or e
            self._leave(batch, member=False)
            raise
        try:
            yield
        except BaseException:
            try:
                self._rollback_to(name)
                self._release(name)
            except BaseException as e:
                batch.error = batch.error or e
            self._leave(batch, member=False)
            # Raised only once the batch ended: the failure may rest on what a member
            # before it wrote (a row found there), which other connections see only
            # after the commit, and the caller may read it to answer.
            batch.done.wait()
            raise
        try:
            self._release(name)
        except BaseException as e:
            batch.error = batch.error or e
        self._leave(batch, member=True)
        batch.done.wait()
        if batch.error is not None:
            raise StorageError(f"commit failed: {batch.error}") from None
