"""Crash-safe file writes and the single-writer lock of the persistent partition.

``atomic_write``: write a temp file in the same directory, fsync it, rename it over
the target, fsync the directory. At every instant a reader sees either the old file or
the complete new one. A failed write or fsync raises ``StorageError`` and leaves the
old file in place; nothing is retried as if it had succeeded (after a failed fsync the
page cache can no longer be trusted, so the temp file is simply removed).
"""

import errno
import fcntl
import os
import time

LOCK_NAME = ".lock"


class StorageError(OSError):
    """A write to the persistent partition failed; the previous content is intact.

    Built as ``StorageError(errno, message)``; ``str()`` is the message alone.
    """

    def __str__(self) -> str:
        return str(self.strerror)


class LockTimeout(StorageError):
    """Another Fieldpass process held the lock for too long."""


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically; with ``durable`` (the default, for the
    persistent partition) also fsync the file and its directory. ``durable=False`` is for
    files on a volatile tmpfs such as /run, where a reboot empties them anyway."""
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise StorageError(e.errno, f"cannot write {path}: {os.strerror(e.errno or 0)}") from e
    if not durable:
        return
    try:
        fsync_dir(directory)
    except OSError as e:
        raise StorageError(e.errno, f"cannot sync {directory}: {os.strerror(e.errno or 0)}") from e


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_stale_temps(directory: str) -> None:
    """Remove temp files left by a writer that was killed (call with the lock held)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if ".tmp." in name:
            _remove_quietly(os.path.join(directory, name))


def read_bytes(path: str, max_bytes: int) -> bytes | None:
    """The file's content, None if it does not exist; ``StorageError`` if it is larger
    than ``max_bytes`` (read no more than that) or unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StorageError(e.errno, f"cannot read {path}: {os.strerror(e.errno or 0)}") from e
    if len(data) > max_bytes:
        raise StorageError(errno.EFBIG, f"{path} is larger than {max_bytes} bytes")
    return data


class ExclusiveLock:
    """Hold the state directory's lock: one writer at a time (gate, daemon, install).

    The lock is an flock(2) on ``directory/.lock``: the kernel releases it when the
    holder dies, so a killed process never leaves the device locked. On a read-only
    partition nobody can write, so there is nothing to exclude and the lock is a no-op.
    (A class rather than ``contextlib.contextmanager``: contextlib costs the boot gate
    2 ms of imports.)
    """

    def __init__(self, directory: str, timeout_s: float = 10.0) -> None:
        self.path = os.path.join(directory, LOCK_NAME)
        self.directory = directory
        self.timeout_s = timeout_s
        self.fd = -1

    def __enter__(self) -> "ExclusiveLock":
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return self
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    self.fd = -1
                    raise LockTimeout(
                        errno.EWOULDBLOCK,
                        f"{self.directory} is locked by another fieldpass process",
                    ) from None
                time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
