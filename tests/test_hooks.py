"""On-verdict hooks run by the gate (agent/hooks.py): one time budget for all of them,
their own root, and nothing run that another user could have written."""

import os
import shutil
from pathlib import Path

import pytest

from agent import hooks
from tests.conftest import DeviceRoot, Signer

REPO = Path(__file__).resolve().parents[1]
HMI = REPO / "firmware-hooks/on-verdict.d/50-hmi-message"
NOBODY = 65534


def hooks_dir(device: DeviceRoot) -> Path:
    path = device.path / "etc/fieldpass/on-verdict.d"
    path.mkdir(exist_ok=True)
    return path


def add_hook(device: DeviceRoot, name: str, body: str, mode: int = 0o755) -> Path:
    path = hooks_dir(device) / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def test_six_hanging_hooks_stay_inside_one_budget(device: DeviceRoot, signer: Signer) -> None:
    """Six hooks that never end: the first is killed (with the child it started) when
    the budget runs out, the rest are not started, the gate ends well inside the
    unit's 60 s start timeout with its verdict."""
    signer.provision(device)
    pids = device.path / "pids"
    for n in range(6):
        add_hook(device, f"{n}0-hang", f'sleep 600 & echo $! >> "{pids}"\nexec sleep 600\n')
    result = device.run("check", timeout=45)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(f"still running when the {hooks.BUDGET_S} s ran out") == 1
    assert result.stderr.count(f"not run: the hooks used up their {hooks.BUDGET_S} s") == 5
    assert device.verdict()["verdict"] == "valid"
    for pid in pids.read_text().split():
        assert not alive(int(pid))  # the hook's whole process group was killed


def alive(pid: int) -> bool:
    """Running (a killed child reparented to a PID 1 that does not reap stays a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_hooks_get_the_root_and_the_hmi_hook_writes_under_it(
    device: DeviceRoot, signer: Signer
) -> None:
    signer.provision(device)
    shutil.copy(HMI, hooks_dir(device) / HMI.name)
    host_file = Path("/run/fieldpass/hmi-message")
    before = host_file.stat().st_mtime_ns if host_file.exists() else None
    result = device.check()
    assert result.returncode == 0, result.stderr
    assert "hook" not in result.stderr
    text = (device.verdict_dir / "hmi-message").read_text()
    assert text.startswith("verdict=valid\nlimited=0\nmessage=License valid until")
    after = host_file.stat().st_mtime_ns if host_file.exists() else None
    assert after == before  # the host's /run is not touched by a --root run


def test_a_hook_that_fails_is_reported_and_the_verdict_stands(
    device: DeviceRoot, signer: Signer
) -> None:
    signer.provision(device)
    add_hook(device, "10-fail", "echo oops >&2\nexit 3\n")
    result = device.check()
    assert result.returncode == 0
    assert "hook" in result.stderr and "exited 3" in result.stderr
    assert "oops" in result.stderr  # its stderr reaches the journal


@pytest.mark.parametrize(
    ("setup", "why"),
    [
        ("world_writable", "world-writable"),
        ("group_writable", "group-writable"),
        ("foreign_owner", f"owned by uid {NOBODY}"),
        ("symlink", "symbolic link"),
        ("unsafe_directory", "world-writable"),
    ],
)
def test_unsafe_hooks_are_refused_with_a_note(
    device: DeviceRoot, signer: Signer, setup: str, why: str
) -> None:
    signer.provision(device)
    ran = device.path / "ran"
    good = add_hook(device, "20-good", f'echo good >> "{ran}"\n')
    body = f'echo bad >> "{ran}"\n'
    if setup == "world_writable":
        add_hook(device, "10-bad", body, 0o757)
    elif setup == "group_writable":
        add_hook(device, "10-bad", body, 0o775)
    elif setup == "foreign_owner":
        os.chown(add_hook(device, "10-bad", body), NOBODY, NOBODY)
    elif setup == "symlink":
        target = device.path / "elsewhere"
        target.write_text("#!/bin/sh\n" + body)
        target.chmod(0o755)
        (hooks_dir(device) / "10-bad").symlink_to(target)
    else:
        hooks_dir(device).chmod(0o777)
    result = device.run("check", "--json")
    assert result.returncode == 0
    assert why in result.stderr, result.stderr
    lines = ran.read_text().split() if ran.exists() else []
    assert "bad" not in lines
    assert lines == ([] if setup == "unsafe_directory" else ["good"])
    assert good.exists()


def test_hooks_run_only_when_the_verdict_changes(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device)
    ran = device.path / "ran"
    add_hook(
        device, "10-count", f'echo "$FIELDPASS_PREVIOUS_VERDICT>$FIELDPASS_VERDICT" >> "{ran}"\n'
    )
    assert device.check().returncode == 0
    assert device.check().returncode == 0
    assert device.check(faketime="+370d").returncode == 10
    assert ran.read_text().split() == [">valid", "valid>grace"]


def test_the_budget_is_well_inside_the_units_start_timeout() -> None:
    unit = (REPO / "firmware-hooks/systemd/fieldpass-gate.service").read_text()
    timeout = int(unit.split("TimeoutStartSec=")[1].split()[0])
    assert timeout >= hooks.BUDGET_S * 3
