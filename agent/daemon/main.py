"""``fieldpass run``: wire the device, a transport and the state machine; exit codes.

Exit codes: 0 after a clean stop (SIGTERM, SIGINT, or the end of ``--once``); 69 when
``--once`` reached no broker or server; 70 on a bug (an unhandled event or an
unexpected exception: the supervisor restarts the daemon); 75 when another daemon runs
on this state directory; 78 on a configuration error. Logs go to stderr (the journal
under systemd) and never hold a license key, a fingerprint or a raw hardware id.
"""

import fcntl
import logging
import os
import queue
import signal
import sys
from types import FrameType

from .. import exitcodes, fsio
from ..config import Config, ConfigError
from ..device import Device
from ..identity import IdentityError
from ..online import OnlineError
from .machine import EX_SOFTWARE, INTERNAL, STOP, Machine, UnhandledEvent
from .transport import Event, Transport

log = logging.getLogger("fieldpass.daemon")
LOCK_NAME = "daemon.lock"


def _logging() -> None:
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("fieldpass[%(process)d]: %(levelname)s %(message)s"))
    root = logging.getLogger("fieldpass")
    root.addHandler(handler)
    level = os.environ.get("FIELDPASS_LOG_LEVEL", "INFO").upper()
    root.setLevel(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")
    logging.getLogger("fieldpass.daemon.paho").setLevel("WARNING")


def choose_transport(
    cfg: Config, device: Device, events: "queue.SimpleQueue[Event]"
) -> tuple[Transport | None, int]:
    """The transport the config asks for, and how many endpoints it tries in turn."""
    kind = cfg.daemon_transport
    if kind == "auto":
        kind = "mqtt" if cfg.mqtt_brokers else "http" if cfg.servers else ""
    if kind == "mqtt":
        from .mqtt import MqttTransport

        return MqttTransport(cfg, device, events), len(cfg.mqtt_brokers)
    if kind == "http":
        from .http import HttpTransport

        if not cfg.servers:
            raise ConfigError("[daemon] transport is http but [online] names no server")
        return HttpTransport(device, events), 1  # one attempt asks every server in turn
    return None, 1


def _single_instance(state_dir: str) -> int | None:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(state_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def main(cfg: Config, once: bool = False) -> int:
    _logging()
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def stop(signum: int, frame: FrameType | None) -> None:
        events.put((STOP, INTERNAL, None))  # SimpleQueue.put is reentrant

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _run(cfg, once, events)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(cfg: Config, once: bool, events: "queue.SimpleQueue[Event]") -> int:
    try:
        device = Device(cfg)
        device.keyring()
        _ = device.identity
        transport, endpoints = choose_transport(cfg, device, events)
        lock_fd = _single_instance(cfg.state_dir)
        if lock_fd is None:
            log.error("another fieldpass daemon runs on %s", cfg.state_dir)
            return exitcodes.EX_TEMPFAIL
    except (ConfigError, IdentityError, OnlineError) as e:
        log.error("%s", e)
        return exitcodes.EX_CONFIG
    except OSError as e:
        log.error("cannot use the state directory %s: %s", cfg.state_dir, fsio.describe(e))
        return exitcodes.EX_CANTCREAT

    machine = Machine(cfg, device, transport, events, once=once, endpoints=endpoints)
    from .usage_socket import UsageSocket

    counts = UsageSocket(cfg.usage_socket, events, INTERNAL)
    try:
        counts.start()
    except OSError as e:
        log.warning("no local usage socket at %s: %s", cfg.usage_socket, fsio.describe(e))
    try:
        return machine.run()
    except UnhandledEvent as e:
        log.error("bug: %s: exiting for the supervisor to restart", e)
        return EX_SOFTWARE
    except Exception:
        log.exception("bug: unexpected error: exiting for the supervisor to restart")
        return EX_SOFTWARE
    finally:
        counts.stop()
        if transport is not None:
            try:
                transport.disconnect()
            except Exception:  # noqa: S110 - already leaving
                pass
        os.close(lock_fd)
