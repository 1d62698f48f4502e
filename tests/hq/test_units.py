"""HQ's systemd units (deploy/systemd/) as systemd reads them: ``systemd-analyze verify``
in a staged root (any warning fails), their ``systemd-analyze security`` exposure, the
figure recorded in docs/hq-deployment.md, and the paths and settings they promise."""

import re
import shutil
import subprocess
from pathlib import Path

from tests.firmware.staging import REPO, host_unit_dir, unit_values

UNITS = ("fieldpass-hq.service", "fieldpass-hq-bridge.service")
EXPOSURE_RECORDED = "1.1"
DOC = REPO / "docs/hq-deployment.md"


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=120, check=False
    )


def stage(root: Path) -> Path:
    unit_dir = root / "usr/lib/systemd/system"
    shutil.copytree(host_unit_dir(), unit_dir, symlinks=True)
    for unit in UNITS:
        shutil.copyfile(REPO / "deploy/systemd" / unit, unit_dir / unit)
    binary = root / "usr/bin/fieldpass-hq"
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    (root / "etc/fieldpass-hq").mkdir(parents=True)
    (root / "etc/fieldpass-hq/bridge.env").write_text(
        "FIELDPASS_HQ_BROKER=mqtts://broker.example:8883\n"
        "FIELDPASS_HQ_BROKER_CA=/etc/fieldpass-hq/broker-ca.pem\n"
    )
    return root


def test_verify_in_a_staged_root_has_no_warning(tmp_path: Path) -> None:
    root = stage(tmp_path / "root")
    result = analyze("verify", "--man=no", f"--root={root}", *UNITS)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    root = stage(tmp_path / "root")
    unit = root / "usr/lib/systemd/system/fieldpass-hq.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=", "ProtectSystm="))
    result = analyze("verify", "--man=no", f"--root={root}", "fieldpass-hq.service")
    assert "Unknown key 'ProtectSystm'" in result.stderr


def test_exposure_is_low_and_recorded(tmp_path: Path) -> None:
    root = stage(tmp_path / "root")
    doc = DOC.read_text()
    for unit in UNITS:
        result = analyze("security", "--offline=yes", f"--root={root}", "--no-pager", unit)
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        assert found, result.stdout + result.stderr
        assert found.group(1) == EXPOSURE_RECORDED, f"{unit}: update docs/hq-deployment.md"
        assert f"`{unit}` | {EXPOSURE_RECORDED}" in doc


def test_units_read_the_documented_paths_and_run_unprivileged() -> None:
    doc = DOC.read_text()
    for unit in UNITS:
        path = REPO / "deploy/systemd" / unit
        assert unit_values(path, "User") == ["fieldpass-hq"]
        assert unit_values(path, "Environment")[0] == "FIELDPASS_HQ_HOME=/var/lib/fieldpass-hq"
        assert unit_values(path, "LoadCredential") == ["pgpass:/etc/fieldpass-hq/pgpass"]
        assert unit_values(path, "ProtectSystem") == ["strict"]
        assert unit_values(path, "CapabilityBoundingSet") == [""]
        assert unit_values(path, "RestartPreventExitStatus") == ["78"]
        assert unit_values(path, "UMask") == ["0077"]
    serve = unit_values(REPO / "deploy/systemd/fieldpass-hq.service", "ExecStart")[0]
    assert serve.startswith("/usr/bin/fieldpass-hq serve --host 127.0.0.1 ")
    for path in (
        "/var/lib/fieldpass-hq",
        "/etc/fieldpass-hq/pgpass",
        "/etc/fieldpass-hq/bridge.env",
    ):
        assert path in doc
