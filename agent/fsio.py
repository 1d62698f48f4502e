"""Crash-safe file writes and the single-writer lock of the persistent partition.

``atomic_write``: write a temp file in the same directory, fsync it, rename it over
the target, fsync the directory. At every instant a reader sees either the old file or
the complete new one. A failed write or fsync raises ``StorageError`` and leaves the
old file in place; nothing is retried as if it had succeeded (after a failed fsync the
page cache can no longer be trusted, so the temp file is simply removed). The temp
file has an unpredictable name and is created with O_EXCL|O_NOFOLLOW: a symlink or
file planted at any name is never followed or overwritten.

``read_bytes``: every file the device reads (machine file, license key, state slots,
keyring, agent.toml, incoming/) is opened with O_NONBLOCK|O_NOFOLLOW, checked to be a
regular file, and read with a size bound: a FIFO, device node, directory, socket or
symlink planted there is refused with its own error instead of hanging the gate.
"""

import errno
import fcntl
import os
import stat
import time

LOCK_NAME = ".lock"


class StorageError(OSError):
    """A file of the device could not be read or written; the previous content is
    intact. ``reason`` is a stable code for ``--json`` and the verdict files.

    Built as ``StorageError(errno, message)``; ``str()`` is the message alone.
    """

    reason = "unreadable"

    def __str__(self) -> str:
        return str(self.strerror)


class LockTimeout(StorageError):
    """Another Fieldpass process held the lock for too long."""

    reason = "locked"


class NotRegularFile(StorageError):
    """A FIFO, device node, directory, socket or symlink where a file was expected."""

    reason = "not_regular"


class TooLarge(StorageError):
    """A file larger than any file of its kind (no more than the bound was read)."""

    reason = "too_large"


class NoAccess(StorageError):
    """Permission denied: this process may not read the file (not a verdict on it)."""

    reason = "no_access"


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)
_TEMP_MARK = ".tmp."  # NAME.tmp.<random>: what remove_stale_temps removes
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_LOCK_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO")."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def describe(e: OSError) -> str:
    """An OSError as a person reads it: "PATH: Permission denied", never "[Errno 13] ..."."""
    if isinstance(e, StorageError):
        return str(e)
    text = e.strerror or (os.strerror(e.errno) if e.errno else str(e))
    return f"{e.filename}: {text}" if e.filename else text


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(path: str, mode: int) -> tuple[int, str]:
    """A new temp file beside ``path`` under a name nobody can predict; O_EXCL and
    O_NOFOLLOW: whatever is planted at that name is neither followed nor reused."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(8):
        tmp = f"{path}{_TEMP_MARK}{os.urandom(8).hex()}"
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temp file name", path)


def atomic_write(path: str, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically; with ``durable`` (the default, for the
    persistent partition) also fsync the file and its directory. ``durable=False`` is for
    files on a volatile tmpfs such as /run, where a reboot empties them anyway."""
    directory = os.path.dirname(path) or "."
    try:
        existing = os.lstat(path).st_mode
    except FileNotFoundError:
        existing = 0
    except OSError as e:
        raise StorageError(e.errno, f"cannot write {path}: {os.strerror(e.errno or 0)}") from e
    if existing and not (stat.S_ISREG(existing) or stat.S_ISLNK(existing)):
        # never rename over /dev/null, a FIFO, a socket or a directory (`-o /dev/null`);
        # a symlink is replaced by the file itself, never followed
        raise NotRegularFile(
            errno.EEXIST, f"{path} is {kind_of(existing)}, not a regular file: not replaced"
        )
    tmp = ""
    try:
        fd, tmp = _create_temp(path, mode)
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
        if tmp:
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
        if _TEMP_MARK in name:
            _remove_quietly(os.path.join(directory, name))


def read_bytes(path: str, max_bytes: int) -> bytes | None:
    """The content of the regular file ``path``, None if nothing is there.

    Never blocks, never opens a device and never follows a symlink. Raises
    ``NotRegularFile`` (a FIFO, device, directory, socket or symlink), ``TooLarge``
    (more than ``max_bytes``; no more than that is read), ``NoAccess`` (permission
    denied) or ``StorageError``.
    """
    try:
        mode = os.lstat(path).st_mode  # refuse a device before opening it
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _open_error(path, e) from None
    if not stat.S_ISREG(mode):
        raise NotRegularFile(errno.EINVAL, f"{path} is {kind_of(mode)}, not a regular file")
    try:
        fd = os.open(path, _READ_FLAGS | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _open_error(path, e) from None
    try:
        return _read_regular(fd, path, max_bytes)
    finally:
        os.close(fd)


def read_system_file(path: str, max_bytes: int) -> bytes:
    """Up to ``max_bytes`` of a kernel attribute or id file (/sys, /proc, /etc/machine-id).

    These follow symlinks (/etc/machine-id often is one on a read-only root) and may
    report a size that is not their content's (sysfs says 4096): the read is bounded
    and non-blocking, and anything but a regular file is refused (OSError)."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(errno.EINVAL, f"{path} is {kind_of(mode)}, not a regular file")
    fd = os.open(path, _READ_FLAGS)
    try:
        mode = os.fstat(fd).st_mode  # what was opened, should it have changed meanwhile
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, f"{path} is {kind_of(mode)}, not a regular file")
        return os.read(fd, max_bytes)
    finally:
        os.close(fd)


def _open_error(path: str, e: OSError) -> StorageError:
    if e.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
        return NotRegularFile(e.errno, f"{path} is a symbolic link, not a regular file")
    if e.errno in (errno.EACCES, errno.EPERM):
        return NoAccess(e.errno, f"cannot read {path}: {os.strerror(e.errno)}")
    if e.errno == errno.ENXIO:  # a socket, or a FIFO opened without a writer
        return NotRegularFile(e.errno, f"{path} is not a regular file")
    return StorageError(e.errno, f"cannot read {path}: {os.strerror(e.errno or 0)}")


def _read_regular(fd: int, path: str, max_bytes: int) -> bytes:
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, f"{path} is {kind_of(mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except StorageError:
        raise
    except OSError as e:
        raise _open_error(path, e) from None
    if size > max_bytes:
        raise TooLarge(errno.EFBIG, f"{path} is larger than {max_bytes} bytes")
    return b"".join(chunks)


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
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _LOCK_FLAGS, 0o600)
        except OSError:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | _LOCK_FLAGS)
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
