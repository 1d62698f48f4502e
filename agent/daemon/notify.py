"""systemd readiness and watchdog (sd_notify(3)) with the standard library only.

A notification is one datagram to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a
leading ``@`` is the abstract namespace). Without the variable (no systemd, or not
Type=notify) every call is a no-op: the daemon is then a plain foreground process.
Failures to notify are never fatal.
"""

import os
import socket


def notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError:
        return False
    return True


def watchdog_interval_s() -> float | None:
    """How often to send WATCHDOG=1: half of ``$WATCHDOG_USEC``, if the watchdog is on
    for this process (``$WATCHDOG_PID`` unset or ours)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


def system_stopping() -> bool:
    """The whole system is shutting down (systemd says "stopping"), rather than the
    daemon alone being stopped. Without systemd there is no way to tell: False."""
    if not os.path.isdir("/run/systemd/system"):
        return False
    import subprocess

    try:
        out = subprocess.run(
            ["systemctl", "is-system-running"], capture_output=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.strip() == b"stopping"
