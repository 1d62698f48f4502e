"""The daemon's state machine: one transition table, one ``on_enter`` per state.

States::

    STARTING --start--> CONNECTING --connected--> CONNECTED --due--> RENEWING
        |                    |                       |  ^               |
        +--offline--> IDLE   +--disconnected--> BACKOFF  +---renewed-----+
                                                  --retry--> CONNECTING
    any --stop--> STOPPING

``TABLE`` maps (state, event) to (action, next state); an event the table does not name
for the current state is a bug: ``UnhandledEvent`` ends the daemon with a non-zero exit
so that the supervisor restarts it from the persisted resume point. Input from the
network never reaches the table as anything but FILE, REVOCATION or BAD, and every
action that handles it catches its typed errors: bad input is counted, never fatal.

The loop blocks on the event queue with a timeout set by the next timer (tick, retry,
renewal timeout, watchdog): no busy loop. Only ``now()`` reads the clock.
"""

import logging
import os
import queue
import time
from collections.abc import Callable

from .. import __version__, clock, fsio, hooks, report
from ..config import Config, ConfigError
from ..device import Device, InstallRefused
from ..identity import IdentityError
from ..state import StateError
from ..verdict import EXPIRED, GRACE, REVOKED, VALID, days_ceil
from ..wire.errors import WireError
from . import notify, reporting, resume
from .transport import (
    ACK,
    BAD,
    CONNECTED,
    DISCONNECTED,
    FILE,
    REVOCATION,
    STATUS,
    Event,
    EventQueue,
    Transport,
)
from .usage_socket import USAGE

log = logging.getLogger("fieldpass.daemon")

# States
STARTING, IDLE, CONNECTING = "STARTING", "IDLE", "CONNECTING"
ONLINE, RENEWING, BACKOFF, STOPPING = "CONNECTED", "RENEWING", "BACKOFF", "STOPPING"
# Internal events (the transport's are in transport.py)
START, OFFLINE, DUE, RENEWED, RETRY = "start", "offline", "due", "renewed", "retry"
TICK, RENEW_TIMEOUT, SETTLED, GIVE_UP, STOP = (
    "tick",
    "renew_timeout",
    "settled",
    "give_up",
    "stop",
)
TRANSPORT_EVENTS = frozenset({CONNECTED, DISCONNECTED, FILE, REVOCATION, BAD, STATUS, ACK})
INTERNAL = -1  # the generation of internal events: never stale

LOST_REASONS = frozenset(
    {"state_lost", "state_missing", "state_corrupt", "state_foreign", "state_key_missing"}
)
USAGE_FLUSH_S = 1.0  # counts from the socket are written at most this late
SETTLE_S = 2.0  # --once: how long to wait for retained messages after connecting
EX_UNAVAILABLE, EX_SOFTWARE = 69, 70

_INPUT = {
    FILE: "install",
    REVOCATION: "revoke",
    BAD: "count_bad",
    STATUS: "reevaluate",
    ACK: "acknowledged",
}
FLUSH_USAGE = "flush_usage"
_ALWAYS: dict[str, tuple[str | None, str | None]] = {
    STOP: (None, STOPPING),
    BAD: ("count_bad", None),
    TICK: ("tick", None),
    USAGE: ("usage", None),
    FLUSH_USAGE: ("flush_usage", None),
}

# (state, event) -> (action, next state); None: no action / stay.
TABLE: dict[tuple[str, str], tuple[str | None, str | None]] = {
    (STARTING, START): (None, CONNECTING),
    (STARTING, OFFLINE): (None, IDLE),
    (IDLE, DUE): (None, None),  # nobody to ask: the verdict files say it
    (IDLE, SETTLED): (None, STOPPING),
    (CONNECTING, CONNECTED): (None, ONLINE),
    (CONNECTING, DISCONNECTED): (None, BACKOFF),
    (CONNECTING, DUE): (None, None),  # asked on connect
    (ONLINE, DUE): (None, RENEWING),
    (ONLINE, RENEWED): (None, None),  # a file HQ pushed unasked
    (ONLINE, DISCONNECTED): (None, BACKOFF),
    (ONLINE, SETTLED): (None, STOPPING),
    (RENEWING, DUE): (None, None),
    (RENEWING, RENEWED): (None, ONLINE),
    (RENEWING, RENEW_TIMEOUT): ("renew_timeout", None),
    (RENEWING, GIVE_UP): (None, STOPPING),
    (RENEWING, DISCONNECTED): (None, BACKOFF),
    (BACKOFF, RETRY): (None, CONNECTING),
    (BACKOFF, DUE): (None, None),  # asked on connect
    (BACKOFF, GIVE_UP): (None, STOPPING),
}
for _state in (CONNECTING, ONLINE, RENEWING, BACKOFF):
    for _event, _action in _INPUT.items():
        TABLE.setdefault((_state, _event), (_action, None))
for _state in (STARTING, IDLE, CONNECTING, ONLINE, RENEWING, BACKOFF):
    for _event, _entry in _ALWAYS.items():
        TABLE.setdefault((_state, _event), _entry)


class UnhandledEvent(Exception):
    """The table has no entry for this event in this state: a bug."""


def now() -> int:
    return clock.now()


def _why(e: Exception) -> str:
    """An error as a log line says it: never "[Errno 13] ..."."""
    return fsio.describe(e) if isinstance(e, OSError) else str(e)


class Machine:
    def __init__(
        self,
        cfg: Config,
        device: Device,
        transport: Transport | None,
        events: EventQueue,
        *,
        once: bool = False,
        endpoints: int = 1,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.transport = transport
        self.events = events
        self.once = once
        self.endpoints = endpoints
        self.state = ""
        self.generation = 0  # the transport attempt whose events are current
        self.timers: dict[str, float] = {}
        self.failures = 0  # connection attempts since the last success
        self.resume = resume.Resume()
        self.last_verdict: str | None = None
        self.serial = 0
        self.expires_at = 0
        self.due = False
        self.revoked = False
        self.due_at: int | None = None
        self.status_doc: dict[str, object] = {}
        self.bad: dict[str, int] = {}
        self.exit_code = 0
        self.watchdog_s = notify.watchdog_interval_s()
        self.counting_since: int | None = None  # the last point of operating time counted
        self.pending_usage: dict[str, int] = {}  # counts from the socket, not yet written
        self.next_ping = 0.0
        self.reporter = reporting.Reporter(device, cfg.report_interval_s)

    # -- the loop ----------------------------------------------------------------------

    def post(self, kind: str, payload: object = None) -> None:
        self.events.put((kind, INTERNAL, payload))

    def run(self) -> int:
        self.enter(STARTING)
        while self.state != STOPPING:
            try:
                event = self.events.get(timeout=self._wait_s())
            except queue.Empty:
                event = None
            self._ping()
            if event is not None:
                self.dispatch(event)
            self._fire_timers()
        return self.exit_code

    def dispatch(self, event: Event) -> None:
        kind, gen, payload = event
        if kind in TRANSPORT_EVENTS and gen != self.generation:
            log.debug("dropped a %s event of an abandoned connection", kind)
            return
        entry = TABLE.get((self.state, kind))
        if entry is None:
            raise UnhandledEvent(f"event {kind!r} in state {self.state}")
        action, target = entry
        if action is not None:
            handler: Callable[[object], None] = getattr(self, "_" + action)
            handler(payload)
        if target is not None:
            self.enter(target)

    def enter(self, state: str) -> None:
        log.debug("state %s -> %s", self.state or "-", state)
        self.state = state
        for name in (RETRY, RENEW_TIMEOUT, SETTLED):  # the usage flush survives a state change
            self.timers.pop(name, None)
        getattr(self, "_enter_" + state.lower())()

    def _wait_s(self) -> float:
        deadlines = list(self.timers.values())
        if self.watchdog_s is not None:
            deadlines.append(self.next_ping)
        if not deadlines:
            return 3600.0
        return max(0.0, min(deadlines) - time.monotonic())

    def _fire_timers(self) -> None:
        t = time.monotonic()
        for name, deadline in sorted(self.timers.items(), key=lambda kv: kv[1]):
            if deadline <= t:
                del self.timers[name]
                self.post(name)

    def _timer(self, name: str, delay_s: float) -> None:
        self.timers[name] = time.monotonic() + max(0.0, delay_s)

    def _ping(self) -> None:
        if self.watchdog_s is not None and time.monotonic() >= self.next_ping:
            notify.notify("WATCHDOG=1")
            self.next_ping = time.monotonic() + self.watchdog_s

    # -- on_enter ----------------------------------------------------------------------

    def _enter_starting(self) -> None:
        self.resume = resume.load(self.cfg.state_dir)
        self.reporter.license_id = self.resume.license_id
        self.resume.starts += 1
        self.failures = min(self.resume.starts - 1, 16)  # the loop guard: back off sooner
        self._save_resume()
        self._reevaluate(None)
        self.counting_since = now()
        notify.notify("READY=1\nSTATUS=fieldpass: " + str(self.status_doc.get("verdict")))
        self.post(START if self.transport is not None else OFFLINE)

    def _enter_idle(self) -> None:
        log.info("no broker and no HQ server configured: keeping the verdict files fresh")
        if self.once:
            self.post(SETTLED)

    def _enter_connecting(self) -> None:
        assert self.transport is not None
        self.generation = self.transport.connect()

    def _enter_connected(self) -> None:
        assert self.transport is not None
        if self.failures or self.resume.starts:
            log.info("connected (%s)", self.transport.describe())
        self.failures = 0
        if self.resume.starts:
            self.resume.starts = 0
            self._save_resume()
        self._send_status()
        self._send_usage()
        if self.due or self.resume.renewing:
            self.post(DUE)
        else:
            self.transport.ask(due=False)
            if self.once:
                self._timer(SETTLED, SETTLE_S)

    def _enter_renewing(self) -> None:
        assert self.transport is not None
        if not self.resume.renewing:
            self.resume.renewing = True
            self._save_resume()
        log.info("asking HQ for a renewal (serial %d)", self.serial)
        self.transport.ask(due=True)
        self._timer(RENEW_TIMEOUT, self.cfg.renew_timeout_s)

    def _enter_backoff(self) -> None:
        assert self.transport is not None
        self.transport.disconnect()
        self.generation = 0
        self.failures += 1
        if self.once and self.failures >= self.endpoints:
            log.warning("no broker or server reachable: %s", self.transport.describe())
            self.exit_code = EX_UNAVAILABLE
            self.post(GIVE_UP)
            return
        delay_ms = min(self.cfg.backoff_max_ms, self.cfg.backoff_min_ms << min(self.failures, 30))
        jitter = 0.5 + int.from_bytes(os.urandom(2), "big") / 131070  # 0.5 to 1.0
        delay_s = delay_ms * jitter / 1000
        log.info("disconnected from %s; retrying in %.1f s", self.transport.describe(), delay_s)
        self._timer(RETRY, delay_s)

    def _enter_stopping(self) -> None:
        notify.notify("STOPPING=1")
        self._flush_usage()
        self._count_operating(now(), stopping=True)
        if self.transport is not None:
            self.transport.disconnect()
        if self.bad:
            log.info("ignored bad messages: %s", ", ".join(f"{k}={v}" for k, v in self.bad.items()))

    # -- actions -----------------------------------------------------------------------

    def _tick(self, _: object) -> None:
        self._count_operating(now())
        self._reevaluate(None)
        self._send_usage(tick=True)
        if self.due:
            self.post(DUE)

    def _usage(self, payload: object) -> None:
        """A count from the local socket: added up, written about once a second."""
        assert isinstance(payload, tuple)
        name, count = payload
        self.pending_usage[name] = self.pending_usage.get(name, 0) + count
        if FLUSH_USAGE not in self.timers:
            self._timer(FLUSH_USAGE, USAGE_FLUSH_S)

    def _flush_usage(self, _: object = None) -> None:
        pending, self.pending_usage = self.pending_usage, {}
        from ..usage import UsageError

        for name, count in pending.items():
            try:
                with self.device.writer_lock():
                    self.device.add_usage(name, min(count, 1 << 32))
            except UsageError as e:
                self._count_bad("usage_" + ("undeclared" if "declares" in str(e) else "bad"))
            except (InstallRefused, ConfigError, IdentityError, OSError) as e:
                log.warning("could not count %s: %s", name, e)

    def _count_operating(self, t: int, *, stopping: bool = False) -> None:
        """Add the seconds since the last point to ``operating_s`` while the license is
        valid or in grace (a routine save: at most one interval is lost to a power cut).
        Stopping while the system keeps running leaves a mark: the next boot's gate
        counts the time from it, so a stopped daemon cannot hide hours."""
        since, self.counting_since = self.counting_since, t
        running = self.status_doc.get("verdict") in (VALID, GRACE)
        try:
            with self.device.writer_lock():
                if since is not None and running:
                    self.device.operated(since, t)
                if stopping and running and not self.once and not notify.system_stopping():
                    self.device.stopped_counting(t)
        except (InstallRefused, ConfigError, IdentityError, OSError) as e:
            log.warning("could not count operating time: %s", e)

    def _renew_timeout(self, _: object) -> None:
        if self.once:
            log.warning("no renewal arrived within %d s", self.cfg.renew_timeout_s)
            self.exit_code = EX_UNAVAILABLE
            self.post(GIVE_UP)
            return
        assert self.transport is not None
        self.transport.ask(due=True)
        self._timer(RENEW_TIMEOUT, self.cfg.renew_timeout_s)

    def _install(self, payload: object) -> None:
        """Install a file from the transport: ``(data, nonce)``, the nonce being the one
        the transport last sent HQ (a file bound to it is HQ's word on the time now)."""
        assert isinstance(payload, tuple)
        data, nonce = payload
        try:
            with self.device.writer_lock():
                claims, result = self.device.install(data, None, now(), nonce=nonce)
        except InstallRefused as e:
            self._count_bad("machine_file_" + e.reason)
            return
        except (ConfigError, IdentityError, OSError) as e:
            log.warning("could not install a machine file: %s", _why(e))
            return
        if result == "installed":
            log.info("installed machine file serial %d", claims.serial)
            self._reevaluate(None)
            self._send_status()
            self._send_usage()
        if not self.due:
            if self.resume.renewing:
                self.resume.renewing = False
                self._save_resume()
            self.post(RENEWED)

    def _revoke(self, data: object) -> None:
        assert isinstance(data, bytes)
        try:
            with self.device.writer_lock():
                result = self.device.apply_revocation(data)
        except (WireError, StateError, InstallRefused) as e:
            self._count_bad("revocation_" + getattr(e, "reason", "refused"))
            return
        except (ConfigError, IdentityError, OSError) as e:
            log.warning("could not record a revocation: %s", _why(e))
            return
        if result == "recorded":
            log.warning("HQ's signed revocation for this device was recorded")
            self._reevaluate(None)
            self._send_status()

    def _count_bad(self, reason: object) -> None:
        name = str(reason)
        self.bad[name] = self.bad.get(name, 0) + 1
        if self.bad[name] == 1:
            log.warning("ignored a bad message (%s); more of the kind are only counted", name)

    def _reevaluate(self, _: object) -> None:
        """Re-run the gate's decision, rewrite the verdict files, run the hooks on a
        change; recompute the renewal window and the next tick."""
        t = now()
        try:
            with self.device.writer_lock():
                outcome = self.device.evaluate(t, record=False)
                doc = report.document(outcome, t)
                problems = report.write_files(self.cfg, doc)
        except (ConfigError, IdentityError, OSError) as e:
            log.warning("could not evaluate the license: %s", _why(e))
            self._timer(TICK, min(self.cfg.check_interval_s, 60))
            return
        verdict = outcome.verdict
        if self.last_verdict is None:
            self.last_verdict = outcome.previous_verdict
        if verdict.name != self.last_verdict:
            log.info("verdict %s -> %s", self.last_verdict or "-", verdict.name)
            problems += hooks.run(self.cfg.hooks_dir, doc, self.last_verdict, self.cfg.root)
            self.last_verdict = verdict.name
        for problem in problems:
            log.warning("%s", problem)
        claims = verdict.claims
        if claims is not None and claims.license_id != self.resume.license_id:
            self.resume.license_id = self.reporter.license_id = claims.license_id
            self._save_resume()
        self.serial = claims.serial if claims is not None else 0
        self.expires_at = claims.expires_at if claims is not None else 0
        self.due_at = None
        if claims is not None and verdict.name in (VALID, GRACE, EXPIRED):
            life = max(0, claims.expires_at - claims.issued_at)
            self.due_at = claims.issued_at + life * self.cfg.renew_at_percent // 100
        self.due = self.due_at is not None and t >= self.due_at
        if verdict.reason in LOST_REASONS:
            self.due = True  # only HQ's answer bound to this device's request restores it
        self.revoked = verdict.name == REVOKED
        st = outcome.state
        self.status_doc = {
            "verdict": verdict.name,
            "reason": verdict.reason,
            "days_left": max(0, days_ceil(claims.expires_at - t)) if claims else None,
            "serial": self.serial if claims else None,
            "expires_at": self.expires_at if claims else None,
            "revoked": verdict.name == REVOKED,
            "revoked_reason": st.revoked if st else "",
            "revoked_at": st.revoked_at if st else 0,
            "lifted_at": st.lifted_at if st else 0,
            "hwm": st.hwm if st else 0,
            "unrecorded_boots": outcome.unrecorded_boots,
            "notes": list(outcome.notes),
            "agent_version": __version__,
        }
        next_s = self.cfg.check_interval_s
        if self.due_at is not None and self.due_at > t:
            next_s = min(next_s, self.due_at - t + 1)
        self._timer(TICK, next_s)

    def _send_status(self) -> None:
        """Publish the device's signed status (asks.status): HQ learns what the device
        holds, and confirms the revocations and files it was sent."""
        if self.transport is None or self.generation == 0:
            return
        from .. import asks

        doc = {**self.status_doc, "bad_messages": dict(list(self.bad.items())[:32])}
        try:
            with self.device.writer_lock():
                payload = asks.status(self.device, doc, now())
        except (ConfigError, IdentityError, OSError, StateError, ValueError) as e:
            log.warning("could not sign the status: %s", e)
            return
        self.transport.publish_status(payload)

    def _send_usage(self, *, tick: bool = False) -> None:
        """Publish the usage report (when its counters differ from the last one HQ
        acknowledged) and a pending return receipt, over a transport that carries them
        (MQTT): on connect, after each file installed, and at every tick
        (``check_interval_s``; a new report at most every ``report_interval_s``) until
        HQ's ACK says it holds them (reporting.py)."""
        transport = self.transport
        if transport is None or not transport.carries_usage or self.generation == 0:
            return
        if self.state not in (ONLINE, RENEWING):
            return
        for kind, payload in self.reporter.due(tick=tick):
            transport.publish_usage(kind, payload)

    def _acknowledged(self, data: object) -> None:
        assert isinstance(data, bytes)
        try:
            self.reporter.acknowledged(data)
        except reporting.AckRefused as e:
            self._count_bad(e.reason)
        except OSError as e:
            log.warning("could not act on HQ's acknowledgement: %s", _why(e))

    def _save_resume(self) -> None:
        try:
            resume.save(self.cfg.state_dir, self.resume)
        except (OSError, fsio.StorageError) as e:
            log.warning("could not save the resume point: %s", _why(e))
