"""The daemon's local usage interface: a UNIX datagram socket an application writes to
without starting Python per event (``fieldpass usage add`` costs a process each call).

Contract (docs/usage.md): one datagram per event, ASCII, at most 256 bytes,
``NAME`` or ``NAME COUNT`` (COUNT a whole number 1 to 2^32, default 1), for a counter the
plan declares. Nothing is answered. The daemon adds them up and writes them with the
state about once a second (a power cut loses at most that second's counts). The socket
is ``[daemon] usage_socket`` (default ``VERDICT_DIR/usage.sock``), mode 0660: give the
application's user the socket's group. A datagram that is not of this form is counted
as a bad message and dropped; one never stops the daemon.

Runs one thread that only posts events; it never touches the device itself.
"""

import os
import socket
import stat
import threading

from ..wire.fields import is_name
from .transport import BAD, EventQueue

USAGE = "usage"  # payload: (name, count)
MAX_DATAGRAM = 256
MAX_COUNT = 1 << 32


def parse(datagram: bytes) -> tuple[str, int] | None:
    """``(name, count)`` of one datagram, or None when it is not of the contract's form."""
    if len(datagram) > MAX_DATAGRAM:
        return None
    try:
        parts = datagram.decode("ascii").split()
    except UnicodeDecodeError:
        return None
    if not 1 <= len(parts) <= 2 or not is_name(parts[0]):
        return None
    if len(parts) == 1:
        return parts[0], 1
    if not parts[1].isdigit() or len(parts[1]) > 10:
        return None
    count = int(parts[1])
    return (parts[0], count) if 1 <= count <= MAX_COUNT else None


class UsageSocket:
    def __init__(self, path: str, events: EventQueue, internal: int) -> None:
        self.path = path
        self.events = events
        self.internal = internal
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (replacing a stale socket, never another kind of file) and listen."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            mode = 0
        if mode and not stat.S_ISSOCK(mode):
            raise OSError(f"{self.path} exists and is not a socket: not replaced")
        if mode:
            os.unlink(self.path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.bind(self.path)
        os.chmod(self.path, 0o660)
        sock.settimeout(0.5)
        self.sock = sock
        self.thread = threading.Thread(target=self._loop, name="usage-socket", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        sock = self.sock
        while sock is not None and self.sock is sock:
            try:
                datagram = sock.recv(MAX_DATAGRAM + 1)
            except TimeoutError:
                continue
            except OSError:
                return
            parsed = parse(datagram)
            if parsed is None:
                self.events.put((BAD, self.internal, "usage_datagram"))
            else:
                self.events.put((USAGE, self.internal, parsed))

    def stop(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
