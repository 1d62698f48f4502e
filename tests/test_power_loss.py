"""Power loss and failing storage: the previous valid file survives every crash point,
write failures give a clear error and keep the old state, and a full or read-only
partition never turns a valid license into a lockout.

Real components: SIGKILL on the installed CLI, libfiu (fiu-run) injecting fsync and
rename errors into the real process, a real tmpfs filled to ENOSPC and remounted
read-only (the tests run as root, as CI does).
"""

import io
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from agent import fsio, gate
from agent.config import load
from agent.device import Device, InstallRefused
from tests.conftest import FIELDPASS, DeviceRoot, Signer, clean_env

RESULTS = Path(__file__).resolve().parents[1] / "bench-out" / "reliability.json"


def record(name: str, **counts: int) -> None:
    """Keep the latest counts for docs/reliability.md."""
    RESULTS.parent.mkdir(exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[name] = counts
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def gate_in_process(device: DeviceRoot) -> tuple[int, dict[str, object]]:
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        code = gate.main(str(device.path), None, None, [])
    return code, device.verdict()


def write_file(device: DeviceRoot, signer: Signer, serial: int) -> Path:
    path = device.path.parent / f"serial-{serial}.machine"
    path.write_bytes(signer.issue(device.fingerprint, serial=serial))
    return path


class Crash(BaseException):
    """Stands for the power going out: nothing after it runs."""


REAL_OS = {name: getattr(os, name) for name in ("write", "fsync", "rename", "unlink")}


@contextmanager
def power_cut_after(monkeypatch: pytest.MonkeyPatch, writes: int) -> Iterator[dict[str, bool]]:
    """Run the block with the power going out at its write(2), fsync(2), rename(2) or
    unlink(2) through fsio numbered ``writes`` (0: the first); ``cut["happened"]`` says
    afterwards whether it went out before the block finished."""
    left = [writes]

    def counting(name: str):  # type: ignore[no-untyped-def]
        real = REAL_OS[name]

        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            if left[0] == 0:
                raise Crash
            left[0] -= 1
            return real(*args, **kwargs)

        return wrapper

    cut = {"happened": False}
    with monkeypatch.context() as m:
        for name in REAL_OS:
            m.setattr(fsio.os, name, counting(name))
        try:
            yield cut
        except Crash:
            cut["happened"] = True


def test_crash_at_every_write_step_of_install_and_check(
    device: DeviceRoot, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enumerate every write(2)/fsync(2)/rename(2)/unlink(2) an install and a check make
    and stop the process at each one in turn: afterwards the gate sees the old file or
    the new one, never neither, never a half file."""
    signer.provision(device, serial=1)
    cfg = load(str(device.path))
    crash_points = 0
    serial = 1
    for step in ("install", "check"):
        n = 0
        while True:
            new = serial + 1
            data = signer.issue(device.fingerprint, serial=new)
            with power_cut_after(monkeypatch, n) as cut, fsio.ExclusiveLock(cfg.state_dir):
                if step == "install":
                    Device(cfg).install(data, None, int(time.time()))
                else:
                    Device(cfg).evaluate(int(time.time()), record=True)
            finished = not cut["happened"]
            code, verdict = gate_in_process(device)
            assert code == 0, verdict
            assert verdict["serial"] in (serial, new)
            serial = int(verdict["serial"])  # type: ignore[call-overload]
            crash_points += 1
            if finished:
                break
            n += 1
    assert crash_points > 10
    record("crash_points", crash_points_tried=crash_points)


def test_crash_at_every_write_step_of_a_return(
    make_device: Callable[[], DeviceRoot], signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stop `fieldpass return` at each of its writes in turn, on a fresh device each
    time: the device is licensed only while the return has not begun (no receipt, the
    state not marked); once the state is marked the gate says returned (30) whatever is
    left on disk, and the receipt is there or `return` run again writes it."""
    n = 0
    while True:
        device = make_device()
        signer.provision(device, serial=1)
        cfg = load(str(device.path))
        with power_cut_after(monkeypatch, n) as cut, fsio.ExclusiveLock(cfg.state_dir):
            Device(cfg).give_back(int(time.time()))
        finished = not cut["happened"]
        receipt = device.state_dir / "return.receipt"
        code, verdict = gate_in_process(device)
        if code == 0:
            assert not receipt.exists(), n  # licensed, yet HQ may free the seat
        else:
            assert (code, verdict["reason"]) == (30, "returned"), (n, verdict)
            if os.path.exists(cfg.machine_file):
                assert "run `fieldpass return` to finish" in str(verdict["message"])
                # HQ, told nothing, answers `activate` with the returned activation
                returned = Path(cfg.machine_file).read_bytes()
                finish = "run `fieldpass return` to finish"
                with pytest.raises(InstallRefused, match=finish), fsio.ExclusiveLock(cfg.state_dir):
                    Device(cfg).install(returned, None, 0)
            if not receipt.exists():
                with fsio.ExclusiveLock(cfg.state_dir):
                    Device(cfg).give_back(int(time.time()))
                assert receipt.exists() and gate_in_process(device)[0] == 30
        if finished:
            break
        n += 1
    assert n > 5


def test_sigkill_at_random_moments(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device, serial=1)
    rng = random.Random(20261128)
    current, kills = 1, 0
    rounds = 150
    for i in range(rounds):
        new = current + 1
        if i % 3 == 2:
            cmd = [FIELDPASS, "--root", str(device.path), "check"]
        else:
            path = write_file(device, signer, new)
            cmd = [FIELDPASS, "--root", str(device.path), "install", str(path)]
        proc = subprocess.Popen(
            cmd, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.0, 0.06))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        result = device.check()
        assert result.returncode == 0, (i, result.stdout, result.stderr)
        serial = int(device.verdict()["serial"])  # type: ignore[call-overload]
        assert serial in (current, new), (i, serial)
        current = serial
    assert not [p for p in device.state_dir.iterdir() if ".tmp." in p.name]
    record("sigkill", rounds=rounds, killed_mid_run=kills)


@pytest.mark.parametrize(
    ("point", "errno_value"),
    [
        ("posix/io/sync/fsync", 5),  # EIO
        ("posix/io/sync/fsync", 28),  # ENOSPC
        ("posix/io/dir/rename", 5),
        ("posix/io/dir/rename", 30),  # EROFS
    ],
)
def test_injected_write_failures_keep_the_old_file(
    device: DeviceRoot, signer: Signer, point: str, errno_value: int
) -> None:
    signer.provision(device, serial=1)
    before = {p.name: p.read_bytes() for p in device.state_dir.iterdir() if p.name != ".lock"}
    path = write_file(device, signer, 2)
    cmd = [
        "fiu-run",
        "-x",
        "-c",
        f"enable name={point},failinfo={errno_value}",
        FIELDPASS,
        "--root",
        str(device.path),
        "install",
        str(path),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), check=False)
    assert result.returncode in (73, 78), result.stderr
    assert result.stderr.startswith("fieldpass: error:")
    assert "Traceback" not in result.stderr
    after = {p.name: p.read_bytes() for p in device.state_dir.iterdir() if p.name != ".lock"}
    if point != "posix/io/sync/fsync":
        assert after == before  # nothing reached the disk
    check = device.check()
    assert check.returncode == 0
    assert device.verdict()["serial"] in (1, 2)


def test_failed_fsync_at_boot_still_decides(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device)
    cmd = [
        "fiu-run",
        "-x",
        "-c",
        "enable name=posix/io/sync/fsync,failinfo=5",
        FIELDPASS,
        "--root",
        str(device.path),
        "check",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), check=False)
    assert result.returncode == 0
    assert "could not record the check" in result.stderr


@pytest.fixture
def small_partition(device: DeviceRoot) -> Iterator[Path]:
    data = device.path / "data"
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(data)], check=True)
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_full_partition(device: DeviceRoot, signer: Signer, small_partition: Path) -> None:
    signer.provision(device, serial=1)
    fd = os.open(small_partition / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == 28
    finally:
        os.close(fd)
    result = device.run("install", str(write_file(device, signer, 2)))
    assert result.returncode == 73
    assert "No space left" in result.stderr
    check = device.check()
    assert check.returncode == 0, check.stdout
    assert device.verdict()["serial"] == 1


def test_read_only_partition_at_boot(
    device: DeviceRoot, signer: Signer, small_partition: Path
) -> None:
    signer.provision(device, serial=1)
    subprocess.run(["mount", "-o", "remount,ro", str(small_partition)], check=True)
    check = device.check()
    assert check.returncode == 0
    assert "could not record the check" in check.stderr
    assert "Read-only file system" in check.stderr
    result = device.run("install", str(write_file(device, signer, 2)))
    assert result.returncode == 73
    assert result.stderr.count("\n") == 1
