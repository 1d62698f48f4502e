"""The systemd units as systemd reads them: `systemd-analyze verify` on a staged root
(any warning fails), the gate's and the agent's `systemd-analyze security` exposure, and
the gate's semantics written into its unit (oneshot, grace is success, no condition,
after the data partition)."""

import re
import subprocess
from pathlib import Path

import pytest

from tests.firmware.staging import APP_UNIT, HOOKS, REPO, UNIT_DIR, stage_root, unit_values

# The figures recorded in docs/firmware-integration.md; both must stay at most 2.5.
EXPOSURE_MAX = 2.5
EXPOSURE_RECORDED = {"fieldpass-gate.service": "1.8", "fieldpass-agent.service": "1.4"}

UNITS = (
    "fieldpass-gate.service",
    "fieldpass-agent.service",
    "fieldpass-machine-id.service",
    APP_UNIT,
)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_verify_in_a_staged_root_has_no_warning(tmp_path: Path) -> None:
    root = stage_root(tmp_path / "root")
    result = analyze("verify", "--man=no", f"--root={root}", *UNITS)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == ""


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above is not vacuous: a typo and a missing binary are reported."""
    root = stage_root(tmp_path / "root")
    gate = root / UNIT_DIR / "fieldpass-gate.service"
    gate.write_text(gate.read_text().replace("RemainAfterExit=", "RemainAfterExt="))
    (root / "usr/bin/fieldpass").unlink()
    result = analyze("verify", "--man=no", f"--root={root}", "fieldpass-gate.service")
    assert "Unknown key 'RemainAfterExt'" in result.stderr
    assert "/usr/bin/fieldpass is not executable" in result.stderr


def exposure(root: Path, unit: str) -> float:
    result = analyze("security", "--offline=yes", f"--root={root}", "--no-pager", unit)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    return float(found.group(1))


@pytest.mark.parametrize("unit", list(EXPOSURE_RECORDED))
def test_exposure_is_at_most_2_5_and_recorded(tmp_path: Path, unit: str) -> None:
    root = stage_root(tmp_path / "root")
    score = exposure(root, unit)
    assert score <= EXPOSURE_MAX
    assert f"{score:.1f}" == EXPOSURE_RECORDED[unit], "update docs/firmware-integration.md"
    doc = (REPO / "docs/firmware-integration.md").read_text()
    assert f"`{unit}`: exposure level {EXPOSURE_RECORDED[unit]}" in doc


def test_gate_unit_semantics() -> None:
    gate = HOOKS / "systemd/fieldpass-gate.service"
    assert unit_values(gate, "Type") == ["oneshot"]
    assert unit_values(gate, "RemainAfterExit") == ["yes"]
    assert unit_values(gate, "ExecStart") == ["/usr/bin/fieldpass check"]
    # Grace (10) is a successful start; every other non-zero verdict fails the unit.
    assert unit_values(gate, "SuccessExitStatus") == ["10"]
    assert unit_values(gate, "RequiresMountsFor") == ["/data/fieldpass"]
    assert unit_values(gate, "ReadWritePaths") == ["-/data/fieldpass"]
    # The state directory exists (or the gate fails saying why) before the sandbox,
    # whose ReadWritePaths= of a missing path would fail with 226/NAMESPACE alone.
    assert unit_values(gate, "ExecStartPre") == [
        "+/usr/libexec/fieldpass/fieldpass-data-dir /data/fieldpass"
    ]
    # What the identity sources need: sysfs and /proc readable, /dev the real one.
    assert unit_values(gate, "CapabilityBoundingSet") == [""]
    assert unit_values(gate, "ProtectKernelTunables") == ["yes"]
    assert not unit_values(gate, "PrivateDevices")
    assert not unit_values(gate, "ProcSubset")
    text = gate.read_text()
    assert not re.search(r"^(Condition|Assert)\w+=", text, re.M), "a condition only skips"
    assert not re.search(r"^ExecStart=-", text, re.M), "'-' would ignore the verdict"


def test_agent_unit_contract() -> None:
    agent = HOOKS / "systemd/fieldpass-agent.service"
    assert unit_values(agent, "Type") == ["notify"]
    assert unit_values(agent, "ExecStart") == ["/usr/bin/fieldpass run"]
    assert unit_values(agent, "Restart") == ["on-failure"]
    assert unit_values(agent, "WatchdogSec")
    assert unit_values(agent, "ProtectSystem") == ["strict"]
    assert unit_values(agent, "NoNewPrivileges") == ["yes"]
    assert unit_values(agent, "ReadWritePaths") == ["-/data/fieldpass /run/fieldpass"]
    assert unit_values(agent, "RequiresMountsFor") == ["/data/fieldpass"]
    assert unit_values(agent, "ExecStartPre") == [
        "+/usr/libexec/fieldpass/fieldpass-data-dir /data/fieldpass"
    ]


def test_machine_id_unit_runs_early_after_the_data_partition() -> None:
    unit = HOOKS / "systemd/fieldpass-machine-id.service"
    assert unit_values(unit, "DefaultDependencies") == ["no"]
    assert unit_values(unit, "RequiresMountsFor") == ["/data/machine-id"]
    assert "fieldpass-gate.service" in unit_values(unit, "Before")[0].split()
    assert unit_values(unit, "ExecStart") == [
        "/usr/libexec/fieldpass/fieldpass-machine-id /data/machine-id"
    ]


def test_drop_in_gates_with_requires_after_and_exec_condition() -> None:
    drop_in = HOOKS / "systemd/50-fieldpass-gate.conf"
    assert unit_values(drop_in, "Requires") == ["fieldpass-gate.service"]
    assert unit_values(drop_in, "After") == ["fieldpass-gate.service"]
    assert unit_values(drop_in, "EnvironmentFile") == ["-/run/fieldpass/verdict.env"]
    assert unit_values(drop_in, "ExecCondition") == [
        "/usr/libexec/fieldpass/fieldpass-verdict-allows"
    ]
