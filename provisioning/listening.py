"""The listening socket of HQ's two HTTP servers (``serve`` and the laptop's ``field
serve``), and the open-file limit their connections need: one implementation, so both
say the same sentence and exit with the same code for a busy port or a bad ``--host``.
"""

import errno
import resource
import socket

from .errors import EXIT_UNAVAILABLE, HQError, InvalidRequest


class CannotListen(HQError):
    code = "cannot_listen"
    http_status = 503
    exit_code = EXIT_UNAVAILABLE


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A socket listening on ``host``:``port``, or one sentence saying why not:
    ``InvalidRequest`` (exit 2) for a host that is no address of this machine,
    ``CannotListen`` (exit 69) for a port in use or not allowed."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, UnicodeError, ValueError):
        raise InvalidRequest(
            f"--host {host!r} is neither an IP address nor a name this machine resolves"
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        where = f"cannot listen on {host} port {port}"
        if e.errno == errno.EADDRNOTAVAIL:
            raise InvalidRequest(f"{where}: {host} is not an address of this machine") from None
        if e.errno == errno.EADDRINUSE:
            raise CannotListen(
                f"{where}: the port is in use (another server?); stop it or choose another --port"
            ) from None
        if e.errno == errno.EACCES:
            raise CannotListen(
                f"{where}: permission denied (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
            ) from None
        raise CannotListen(f"{where}: {e.strerror}") from None
    return sock


def allow_open_files(needed: int) -> int:
    """Raise this process's soft limit on open files to ``needed`` (within the hard
    limit: every connection is one); the limit it has now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return needed
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
    return target
