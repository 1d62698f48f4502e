"""A hypothesis state machine over sequences of checks, installs, clock moves, crashes,
replays, foreign files and edited state.

It asserts the gate's two promises: it never accepts an expired, rolled-back, older
or foreign license, and it never rejects a valid one on a truthful clock. The device
runs in process (``Device.evaluate(now)``: ``now`` is the pure core's parameter; the
installed gate reads the real clock and is covered by test_gate.py / test_clock.py).
"""

import shutil
import tempfile
import time
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from agent import fsio
from agent.config import load
from agent.device import Device, InstallRefused
from tests.conftest import DeviceRoot, Signer

DAY = 86400
TOLERANCE = 300
# How a device refuses a state slot someone edited: not its own (the MAC), damaged, or,
# when the edit hit the format byte, written by a newer Fieldpass (a format it cannot
# check, so it refuses to build on it: fail closed).
EDITED_STATE = ("state_foreign", "state_corrupt", "state_future")


class Crash(BaseException):
    pass


class GateMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.dev = DeviceRoot(self.tmp / "dev", "5f" * 16)
        self.signer = Signer()
        self.dev.trust(self.signer.keyring)
        self.cfg = load(str(self.dev.path))
        self.real = int(time.time())  # the true time
        self.clock = self.real  # what the device's clock says
        self.highest_clock_seen = 0  # the highest clock a check accepted
        self.serial = 0
        self.installed: dict[str, int] | None = None  # newest file the device holds
        self.files: dict[int, bytes] = {}
        self.state_edited = False
        self.install(ttl_days=30)

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def device(self) -> Device:
        return Device(self.cfg)

    # -- HQ and the technician -------------------------------------------------

    @rule(ttl_days=st.integers(1, 365))
    def install(self, ttl_days: int) -> None:
        self.serial += 1
        data = self.signer.issue(
            self.dev.fingerprint, serial=self.serial, issued_at=self.real, ttl=ttl_days * DAY
        )
        self.files[self.serial] = data
        with fsio.ExclusiveLock(self.cfg.state_dir if self.cfg.state_dir else "/"):
            pass
        self.dev.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            with fsio.ExclusiveLock(self.cfg.state_dir):
                self.device().install(data, self.signer.license_key, self.clock)
        except InstallRefused as e:
            # A refused state is never replaced by one built from a file alone
            assert self.state_edited, e
            assert e.reason in EDITED_STATE, e
            return
        self.installed = {
            "serial": self.serial,
            "issued_at": self.real,
            "expires_at": self.real + ttl_days * DAY,
            "grace_ends_at": self.real + ttl_days * DAY + 30 * DAY,
        }
        # (a file's issued-at only ever raises the clock mark: nothing to lower here)

    @rule(ttl_days=st.integers(1, 365))
    def recover(self, ttl_days: int) -> None:
        """HQ answers the device's air-gapped request: the one way back from a refused
        state, and the one way to lower the clock mark (to HQ's time)."""
        from agent import asks
        from agent.wire.request import Request

        self.dev.state_dir.mkdir(parents=True, exist_ok=True)
        with fsio.ExclusiveLock(self.cfg.state_dir):
            text, _ = asks.request(self.device(), self.clock)
        req = Request.parse(text.encode())
        self.serial += 1
        from agent.wire.machine_file import Binding

        data = self.signer.issue(
            self.dev.fingerprint,
            serial=self.serial,
            issued_at=self.real,
            ttl=ttl_days * DAY,
            version=2,
            device_key=req.device_key,
            binding=Binding(counter=req.counter, nonce=req.nonce),
        )
        self.files[self.serial] = data
        with fsio.ExclusiveLock(self.cfg.state_dir):
            self.device().install(data, self.signer.license_key, self.clock)
        self.installed = {
            "serial": self.serial,
            "issued_at": self.real,
            "expires_at": self.real + ttl_days * DAY,
            "grace_ends_at": self.real + ttl_days * DAY + 30 * DAY,
        }
        self.state_edited = False
        self.highest_clock_seen = min(self.highest_clock_seen, self.real)

    @rule(which=st.integers(0, 50))
    def replay_older(self, which: int) -> None:
        older = [s for s in self.files if self.installed and s < self.installed["serial"]]
        if not older:
            return
        data = self.files[older[which % len(older)]]
        try:
            with fsio.ExclusiveLock(self.cfg.state_dir):
                self.device().install(data, None, self.clock)
        except InstallRefused as e:
            refused_state = self.state_edited and e.reason in EDITED_STATE
            assert e.reason == "downgrade" or refused_state, e
        else:
            raise AssertionError("an older machine file was installed")

    @rule(step=st.integers(0, 30))
    def crash_mid_install(self, step: int) -> None:
        """Power lost during an install of a newer file: old or new must hold after."""
        import os

        real_fns = {n: getattr(os, n) for n in ("write", "fsync", "rename")}
        left = [step]

        def wrap(fn):  # type: ignore[no-untyped-def]
            def inner(*a, **k):  # type: ignore[no-untyped-def]
                if left[0] == 0:
                    raise Crash
                left[0] -= 1
                return fn(*a, **k)

            return inner

        self.serial += 1
        data = self.signer.issue(
            self.dev.fingerprint, serial=self.serial, issued_at=self.real, ttl=60 * DAY
        )
        self.files[self.serial] = data
        for n, fn in real_fns.items():
            setattr(fsio.os, n, wrap(fn))
        try:
            with fsio.ExclusiveLock(self.cfg.state_dir):
                self.device().install(data, None, self.clock)
            completed = True
        except Crash:
            completed = False
        except InstallRefused as e:
            assert self.state_edited and e.reason in EDITED_STATE, e
            completed = False
        finally:
            for n, fn in real_fns.items():
                setattr(fsio.os, n, fn)
        outcome = self.device().evaluate(self.clock, record=False)
        held = outcome.verdict.claims.serial if outcome.verdict.claims else None
        if self.state_edited and not completed and held != self.serial:
            assert outcome.verdict.exit_code == 31  # still refused, never reset
            return
        assert held in (self.installed["serial"] if self.installed else None, self.serial)
        if completed or held == self.serial:
            self.installed = {
                "serial": self.serial,
                "issued_at": self.real,
                "expires_at": self.real + 60 * DAY,
                "grace_ends_at": self.real + 90 * DAY,
            }
            self.state_edited = False

    # -- time ------------------------------------------------------------------

    @rule(seconds=st.integers(0, 200 * DAY))
    def time_passes(self, seconds: int) -> None:
        self.real += seconds
        self.clock = self.real

    @rule(back=st.integers(1, 400 * DAY))
    def clock_set_back(self, back: int) -> None:
        self.clock = self.real - back

    @rule()
    def clock_put_right(self) -> None:
        self.clock = self.real

    # -- the attacker ------------------------------------------------------------

    @rule(byte=st.integers(0, 10_000))
    def edit_state(self, byte: int) -> None:
        for slot in ("state.a", "state.b"):
            path = self.dev.state_dir / slot
            if path.exists():
                data = bytearray(path.read_bytes())
                data[byte % len(data)] = (data[byte % len(data)] + 1) % 256
                path.write_bytes(bytes(data))
        self.state_edited = True

    # -- the gate ----------------------------------------------------------------

    @rule()
    def boot(self) -> None:
        with fsio.ExclusiveLock(self.cfg.state_dir):
            outcome = self.device().evaluate(self.clock, record=True)
        v = outcome.verdict
        accepted = v.exit_code in (0, 10)
        f = self.installed
        assert f is not None
        if self.state_edited:
            assert v.exit_code == 31, v
            return
        if accepted:
            # never a file older than the newest installed
            assert v.claims is not None and v.claims.serial == f["serial"]
            # never a clock set back beyond tolerance from one already accepted
            assert self.clock >= min(self.highest_clock_seen, f["issued_at"]) - TOLERANCE, v
            # never past grace on the time the gate trusted
            assert v.effective_now is not None and v.effective_now < f["grace_ends_at"]
            self.highest_clock_seen = max(self.highest_clock_seen, self.clock)
        truthful = self.clock == self.real and self.highest_clock_seen <= self.real
        if truthful and self.real < f["expires_at"]:
            assert v.exit_code == 0, v  # never reject a valid license on a truthful clock
        if truthful and f["expires_at"] <= self.real < f["grace_ends_at"]:
            assert v.exit_code == 10, v
        if truthful and self.real >= f["grace_ends_at"]:
            assert v.exit_code == 20, v

    @invariant()
    def foreign_files_never_accepted(self) -> None:
        if not hasattr(self, "signer"):
            return
        other = Signer()
        foreign = other.issue(self.dev.fingerprint)  # signed by a key the device does not trust
        try:
            with fsio.ExclusiveLock(self.cfg.state_dir):
                self.device().install(foreign, None, self.clock)
        except InstallRefused as e:
            assert e.reason in ("unknown_key", "wrong_device")
        else:
            raise AssertionError("a foreign machine file was installed")


TestGateMachine = GateMachine.TestCase
TestGateMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
