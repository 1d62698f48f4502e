"""A simulated boot of a staged device root, once per verdict.

The gate runs as systemd would run it: the staged unit's ExecStart (with the installed
`fieldpass` and `--root`, the clock moved with libfaketime). Its exit status becomes the
unit's state through the unit's own SuccessExitStatus=. The application's start then
follows systemd's rules for the shipped drop-in: Requires=+After= a failed gate fails
the start job ("dependency"); otherwise ExecCondition= runs for real (exit 1-254 skips
the start, 255 fails it); a started application gets EnvironmentFile= in its
environment. The sysvinit path runs the staged init scripts themselves, with a stand-in
application that records its environment.
"""

import os
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DAY, FIELDPASS, DeviceRoot, Signer, clean_env, faketime_prefix
from tests.firmware.staging import ALLOWS, DROP_IN, UNIT_DIR, stage_root, unit_values


@dataclass(frozen=True)
class Boot:
    """What a boot at ``faketime`` shows after ``prepare`` ran on the provisioned device."""

    faketime: str | None
    exit_code: int
    verdict: str
    app_starts: bool
    limited: str = "0"
    message: str = ""
    warning: bool = False
    prepare: Callable[[DeviceRoot], None] | None = None


def tamper(device: DeviceRoot) -> None:
    data = bytearray(device.machine_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    device.machine_file.write_bytes(bytes(data))


def checked_at_100_days(device: DeviceRoot) -> None:
    assert device.check(faketime="+100d").returncode == 0


SCENARIOS = {
    "valid": Boot(None, 0, "valid", True, message="(365 days left)"),
    "warning": Boot("+300d", 0, "valid", True, message="(65 days left)", warning=True),
    "grace": Boot("+367d", 10, "grace", True, "1", "limited mode", warning=True),
    "expired": Boot("+400d", 20, "expired", False),
    "invalid": Boot(None, 31, "invalid", False, prepare=tamper),
    "rollback": Boot("+90d", 40, "rollback", False, prepare=checked_at_100_days),
}


def gate_command(root: Path) -> list[str]:
    """The staged gate unit's ExecStart, as run on this host against ``root``."""
    (exec_start,) = unit_values(root / UNIT_DIR / "fieldpass-gate.service", "ExecStart")
    argv = shlex.split(exec_start)
    assert argv[0] == "/usr/bin/fieldpass"
    return [FIELDPASS, "--root", str(root), *argv[1:]]


def gate_succeeds(root: Path, exit_code: int) -> bool:
    """systemd's view of a oneshot's main process exit: 0 or SuccessExitStatus=."""
    success = {0}
    for value in unit_values(root / UNIT_DIR / "fieldpass-gate.service", "SuccessExitStatus"):
        success.update(int(v) for v in value.split())
    return exit_code in success


def read_environment_file(path: Path) -> dict[str, str]:
    """EnvironmentFile= for the lines verdict.env uses: KEY='value' (no escapes inside)."""
    env = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        assert sep and key.isidentifier(), line
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        env[key] = value
    return env


def start_application(root: Path, gate_ok: bool) -> tuple[str, dict[str, str]]:
    """systemd's decision for robot-app.service with the shipped drop-in."""
    drop_in = root / DROP_IN
    assert unit_values(drop_in, "Requires") == ["fieldpass-gate.service"]
    assert unit_values(drop_in, "After") == ["fieldpass-gate.service"]
    if not gate_ok:
        return "dependency", {}
    (condition,) = unit_values(drop_in, "ExecCondition")
    argv = shlex.split(condition)
    result = subprocess.run(
        [str(root / argv[0].lstrip("/")), *argv[1:]],
        env=clean_env(FIELDPASS_ROOT=str(root)),
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if result.returncode == 255:
        return "failed", {}
    if result.returncode != 0:
        return "skipped", {}
    (env_file,) = unit_values(drop_in, "EnvironmentFile")
    return "started", read_environment_file(root / env_file.removeprefix("-").lstrip("/"))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_systemd_boot(name: str, make_device: Callable[..., DeviceRoot], signer: Signer) -> None:
    boot = SCENARIOS[name]
    device = make_device()
    signer.provision(device)
    if boot.prepare:
        boot.prepare(device)
    root = stage_root(device.path, with_manager_units=False)

    gate = subprocess.run(
        [*faketime_prefix(boot.faketime), *gate_command(root)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert gate.returncode == boot.exit_code, gate.stdout + gate.stderr
    gate_ok = gate_succeeds(root, gate.returncode)
    assert gate_ok is boot.app_starts

    outcome, env = start_application(root, gate_ok)
    if not boot.app_starts:
        assert outcome == "dependency"
        # Even if the gate were bypassed, the ExecCondition would refuse this verdict.
        refused = subprocess.run(
            [str(root / ALLOWS)], env=clean_env(FIELDPASS_ROOT=str(root)), check=False
        )
        assert refused.returncode == 1
        return
    assert outcome == "started"
    assert env["FIELDPASS_VERDICT"] == boot.verdict
    assert env["FIELDPASS_EXIT"] == str(boot.exit_code)
    assert env["FIELDPASS_LIMITED"] == boot.limited
    assert boot.message in env["FIELDPASS_MESSAGE"]
    assert bool(env["FIELDPASS_WARNING"]) is boot.warning


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_sysvinit_boot(
    name: str, make_device: Callable[..., DeviceRoot], signer: Signer, tmp_path: Path
) -> None:
    boot = SCENARIOS[name]
    device = make_device()
    signer.provision(device)
    if boot.prepare:
        boot.prepare(device)
    root = stage_root(device.path, with_manager_units=False)
    record = tmp_path / "app-env"
    app = tmp_path / "robot-app"
    app.write_text(f'#!/bin/sh\nenv > "{record}"\n')
    app.chmod(0o755)
    env = clean_env(FIELDPASS_ROOT=str(root), FIELDPASS_BIN=FIELDPASS)

    def init(script: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*faketime_prefix(boot.faketime), str(root / "etc/init.d" / script), "start"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    gate = init("fieldpass-gate")
    assert (gate.returncode == 0) is boot.app_starts, gate.stdout + gate.stderr
    app_start = init("robot-app", ROBOT_APP=str(app), ROBOT_APP_FOREGROUND="1")
    assert (app_start.returncode == 0) is boot.app_starts, app_start.stderr
    if not boot.app_starts:
        assert not record.exists()
        assert "license verdict refuses it" in app_start.stderr
        return
    seen = dict(line.split("=", 1) for line in record.read_text().splitlines() if "=" in line)
    assert seen["FIELDPASS_VERDICT"] == boot.verdict
    assert seen["FIELDPASS_LIMITED"] == boot.limited
    assert boot.message in seen["FIELDPASS_MESSAGE"]


def test_not_activated_device_holds_the_application_back(
    make_device: Callable[..., DeviceRoot],
) -> None:
    device = make_device()
    root = stage_root(device.path, with_manager_units=False)
    gate = subprocess.run(gate_command(root), capture_output=True, env=clean_env(), check=False)
    assert gate.returncode == 30
    assert start_application(root, gate_succeeds(root, gate.returncode)) == ("dependency", {})


def test_a_verdict_that_changed_after_boot_refuses_a_restart(
    make_device: Callable[..., DeviceRoot], signer: Signer
) -> None:
    """The gate stays active (RemainAfterExit) after a valid boot; if the verdict file
    is rewritten later (the daemon saw the license expire), restarting the application
    is refused by its ExecCondition."""
    device = make_device()
    signer.provision(device, ttl=30 * DAY, grace_s=0)
    root = stage_root(device.path, with_manager_units=False)
    assert subprocess.run(gate_command(root), env=clean_env(), check=False).returncode == 0
    assert start_application(root, True)[0] == "started"
    later = subprocess.run(
        [*faketime_prefix("+40d"), *gate_command(root)], env=clean_env(), check=False
    )
    assert later.returncode == 20
    assert start_application(root, True) == ("skipped", {})
    assert os.path.exists(root / "run/fieldpass/verdict.env")
