"""The shipped scripts run for real: the identity hook on staged sysfs/procfs files, the
example on-verdict hook, fieldpass-verdict-allows on every kind of verdict file, the
sysvinit gate script's mapping of `fieldpass check` exit codes, the state directory's
first-boot creation and the persistent machine id (real bind mounts, in a private mount
namespace)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.firmware.staging import HOOKS

IDENTITY = HOOKS / "identity/fieldpass-identity-hook"
ALLOWS = HOOKS / "libexec/fieldpass-verdict-allows"
HMI = HOOKS / "on-verdict.d/50-hmi-message"
SYSV_GATE = HOOKS / "sysvinit/fieldpass-gate"
DATA_DIR = HOOKS / "libexec/fieldpass-data-dir"
MACHINE_ID = HOOKS / "libexec/fieldpass-machine-id"


def run(cmd: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FIELDPASS")}
    return subprocess.run(
        cmd,
        env={**base, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


# -- identity hook -------------------------------------------------------------------


def test_identity_from_cpuinfo_serial(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(
        "processor\t: 0\nHardware\t: BCM2835\nSerial\t\t: 10000000abcdef01\n"
    )
    result = run([str(IDENTITY)], FIELDPASS_ROOT=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "id=10000000abcdef01\nsource=cpuinfo\n"


def test_identity_prefers_the_eeprom(tmp_path: Path) -> None:
    eeprom = tmp_path / "sys/bus/nvmem/devices/0-00500-eeprom"
    eeprom.mkdir(parents=True)
    (eeprom / "nvmem").write_bytes(b"RB-0042\x00" + b"\xff" * 24)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("Serial\t\t: 10000000abcdef01\n")
    result = run([str(IDENTITY)], FIELDPASS_ROOT=str(tmp_path))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "id=" + (b"RB-0042\x00" + b"\xff" * 24).hex()
    assert lines[1] == "source=nvmem:0-00500-eeprom"


def test_identity_refuses_an_erased_eeprom_and_falls_back(tmp_path: Path) -> None:
    eeprom = tmp_path / "sys/bus/nvmem/devices/1-00500-eeprom"
    eeprom.mkdir(parents=True)
    (eeprom / "nvmem").write_bytes(b"\xff" * 64)
    dt = tmp_path / "proc/device-tree"
    dt.mkdir(parents=True)
    (dt / "serial-number").write_bytes(b"SN123456\x00")
    result = run([str(IDENTITY)], FIELDPASS_ROOT=str(tmp_path))
    assert result.returncode == 0
    assert result.stdout == "id=SN123456\nsource=device-tree\n"
    assert "holds no id" in result.stderr


@pytest.mark.parametrize("serial", ["0000000000000000", "", "has space"])
def test_identity_without_a_usable_id_exits_non_zero_and_prints_nothing(
    tmp_path: Path, serial: str
) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(f"Serial\t\t: {serial}\n")
    result = run([str(IDENTITY)], FIELDPASS_ROOT=str(tmp_path))
    assert result.returncode != 0
    assert result.stdout == ""
    assert "no hardware id found" in result.stderr


# -- fieldpass-verdict-allows --------------------------------------------------------


def verdict_env(verdict: str, code: int, limited: int, message: str = "m") -> str:
    return (
        f"FIELDPASS_VERDICT='{verdict}'\nFIELDPASS_EXIT='{code}'\n"
        f"FIELDPASS_LIMITED='{limited}'\nFIELDPASS_MESSAGE='{message}'\n"
        "FIELDPASS_WARNING=''\nFIELDPASS_DAYS_LEFT='12'\n"
    )


def write_verdict(root: Path, text: str) -> None:
    (root / "run/fieldpass").mkdir(parents=True, exist_ok=True)
    (root / "run/fieldpass/verdict.env").write_text(text)


@pytest.mark.parametrize(
    ("verdict", "code", "limited", "allowed"),
    [
        ("valid", 0, 0, True),
        ("grace", 10, 1, True),
        ("expired", 20, 1, False),
        ("not_activated", 30, 0, False),
        ("invalid", 31, 0, False),
        ("revoked", 32, 0, False),
        ("rollback", 40, 0, False),
        ("valid", 10, 0, False),  # contradicts itself: refused
        ("grace", 10, 0, False),  # grace without limited mode: refused
    ],
)
def test_allows_only_valid_and_grace(
    tmp_path: Path, verdict: str, code: int, limited: int, allowed: bool
) -> None:
    write_verdict(tmp_path, verdict_env(verdict, code, limited))
    result = run([str(ALLOWS)], FIELDPASS_ROOT=str(tmp_path))
    assert (result.returncode == 0) is allowed, result.stderr
    assert result.stdout == ""
    if not allowed:
        assert result.returncode == 1
        assert "not starting" in result.stderr


def test_allows_fails_closed_without_a_verdict(tmp_path: Path) -> None:
    result = run([str(ALLOWS)], FIELDPASS_ROOT=str(tmp_path))
    assert result.returncode == 1
    assert "did the gate run" in result.stderr


def test_allows_does_not_execute_the_file_to_decide(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    write_verdict(tmp_path, f"touch {marker}\n" + verdict_env("expired", 20, 0))
    assert run([str(ALLOWS)], FIELDPASS_ROOT=str(tmp_path)).returncode == 1
    assert not marker.exists()


def test_exec_passes_the_verdict_environment(tmp_path: Path) -> None:
    write_verdict(tmp_path, verdict_env("grace", 10, 1, "License expired, limited mode"))
    result = run([str(ALLOWS), "--exec", "env"], FIELDPASS_ROOT=str(tmp_path))
    assert result.returncode == 0
    env = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert env["FIELDPASS_VERDICT"] == "grace"
    assert env["FIELDPASS_LIMITED"] == "1"
    assert env["FIELDPASS_MESSAGE"] == "License expired, limited mode"


def test_exec_does_not_start_a_refused_application(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    write_verdict(tmp_path, verdict_env("revoked", 32, 0))
    result = run([str(ALLOWS), "--exec", "touch", str(marker)], FIELDPASS_ROOT=str(tmp_path))
    assert result.returncode == 1
    assert not marker.exists()


def test_usage_errors() -> None:
    assert run([str(ALLOWS), "--bogus"]).returncode == 2
    assert run([str(ALLOWS), "--exec"]).returncode == 2


# -- on-verdict hook -----------------------------------------------------------------


def test_hmi_hook_writes_the_message(tmp_path: Path) -> None:
    (tmp_path / "run/fieldpass").mkdir(parents=True)
    result = run(
        [str(HMI)],
        FIELDPASS_ROOT=str(tmp_path),
        FIELDPASS_VERDICT="valid",
        FIELDPASS_LIMITED="0",
        FIELDPASS_MESSAGE="License valid until 2027-11-28 (365 days left)",
        FIELDPASS_WARNING="Offline license expires in 65 days: connect to extend",
        FIELDPASS_PREVIOUS_VERDICT="grace",
    )
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "run/fieldpass/hmi-message").read_text()
    assert text == (
        "verdict=valid\nlimited=0\n"
        "message=License valid until 2027-11-28 (365 days left)\n"
        "warning=Offline license expires in 65 days: connect to extend\n"
    )
    assert list((tmp_path / "run/fieldpass").iterdir()) == [tmp_path / "run/fieldpass/hmi-message"]


def test_hmi_hook_fails_without_a_writable_directory(tmp_path: Path) -> None:
    result = run([str(HMI)], FIELDPASS_ROOT=str(tmp_path), FIELDPASS_VERDICT="expired")
    assert result.returncode == 1


# -- sysvinit gate -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check_exit", "script_exit"),
    [(0, 0), (10, 0), (20, 1), (30, 1), (31, 1), (32, 1), (40, 1), (78, 1), (2, 1)],
)
def test_sysvinit_gate_maps_the_verdict(tmp_path: Path, check_exit: int, script_exit: int) -> None:
    stub = tmp_path / "fieldpass"
    stub.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/args"\nexit {check_exit}\n')
    stub.chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    result = run([str(SYSV_GATE), "start"], FIELDPASS_ROOT=str(root), FIELDPASS_BIN=str(stub))
    assert result.returncode == script_exit, result.stdout + result.stderr
    assert (tmp_path / "args").read_text() == f"--root {root} check\n"
    assert (root / "run/fieldpass").is_dir()


SHELLS = {
    "dash": ["dash"],
    "busybox ash": ["busybox", "sh"],
    "bash": ["bash", "--posix"],
}


@pytest.mark.parametrize("shell", sorted(SHELLS))
@pytest.mark.parametrize("ignores_term", [False, True])
def test_sysvinit_gate_stops_a_hung_gate(tmp_path: Path, shell: str, ignores_term: bool) -> None:
    """A gate that never ends is stopped after FIELDPASS_GATE_TIMEOUT_S (60 on a device),
    with KILL when it ignores TERM; start fails and the verdict files say "error" in place
    of the "valid" a previous run left. Run by each shell a device may have as /bin/sh."""
    pid_file = tmp_path / "pid"
    trap = "trap '' TERM\n" if ignores_term else ""
    stub = tmp_path / "fieldpass"
    stub.write_text(f'#!/bin/sh\n{trap}echo $$ > "{pid_file}"\nwhile :; do sleep 1; done\n')
    stub.chmod(0o755)
    root = tmp_path / "root"
    verdicts = root / "run/fieldpass"
    verdicts.mkdir(parents=True)
    (verdicts / "verdict.env").write_text("FIELDPASS_VERDICT='valid'\nFIELDPASS_EXIT='0'\n")
    (verdicts / "verdict.json").write_text('{"verdict": "valid"}\n')
    result = subprocess.run(
        [*SHELLS[shell], str(SYSV_GATE), "start"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("FIELDPASS")},
            "FIELDPASS_ROOT": str(root),
            "FIELDPASS_BIN": str(stub),
            "FIELDPASS_GATE_TIMEOUT_S": "1",
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "did not finish within 1 s" in result.stderr
    env = (verdicts / "verdict.env").read_text()
    assert "FIELDPASS_VERDICT='error'" in env and "FIELDPASS_REASON='timeout'" in env
    doc = json.loads((verdicts / "verdict.json").read_text())
    assert (doc["verdict"], doc["exit_code"], doc["reason"]) == ("error", 75, "timeout")
    allows = run([str(ALLOWS)], FIELDPASS_ROOT=str(root))
    assert allows.returncode == 1
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or " Z " in Path(f"/proc/{pid}/stat").read_text()


def test_sysvinit_gate_passes_a_quick_gate_untouched(tmp_path: Path) -> None:
    stub = tmp_path / "fieldpass"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    result = run([str(SYSV_GATE), "start"], FIELDPASS_ROOT=str(root), FIELDPASS_BIN=str(stub))
    assert result.returncode == 0 and "license valid" in result.stdout
    assert not (root / "run/fieldpass/verdict.env").exists()


# -- data partition: fieldpass-data-dir -----------------------------------------------


def test_data_dir_is_created_at_first_boot_mode_0700(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    result = run([str(DATA_DIR), "/data/fieldpass"], FIELDPASS_ROOT=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "created the state directory /data/fieldpass (first boot)" in result.stdout
    assert (tmp_path / "data/fieldpass").stat().st_mode & 0o777 == 0o700
    again = run([str(DATA_DIR), "/data/fieldpass"], FIELDPASS_ROOT=str(tmp_path))
    assert again.returncode == 0
    assert again.stdout == again.stderr == ""
    assert list((tmp_path / "data/fieldpass").iterdir()) == []


def test_data_dir_that_cannot_be_made_says_why(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a partition\n")
    result = run([str(DATA_DIR), "/data/fieldpass"], FIELDPASS_ROOT=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "cannot write the state directory /data/fieldpass" in result.stderr
    assert "mount the data partition read-write (FIELDPASS_DATA_MOUNT" in result.stderr
    (tmp_path / "data").unlink()
    (tmp_path / "data").mkdir()
    (tmp_path / "data/fieldpass").write_text("")
    result = run([str(DATA_DIR), "/data/fieldpass"], FIELDPASS_ROOT=str(tmp_path))
    assert result.returncode == 1
    assert "is not a directory" in result.stderr
    assert run([str(DATA_DIR)]).returncode == 2


# -- persistent machine id: fieldpass-machine-id --------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root (CI runs as root)")
ID_A = "0123456789abcdef0123456789abcdef"
ID_B = "fedcba9876543210fedcba9876543210"


def boot_machine_id(root: Path) -> subprocess.CompletedProcess[str]:
    """fieldpass-machine-id in a private mount namespace, then what /etc/machine-id
    reads there (after the '---' line)."""
    script = (
        f'"{MACHINE_ID}" /data/machine-id; rc=$?; echo ---; cat "{root}/etc/machine-id"; exit $rc'
    )
    return run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        FIELDPASS_ROOT=str(root),
    )


@needs_root
def test_machine_id_is_kept_on_the_data_partition(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "etc/machine-id").write_text(ID_A + "\n")  # this boot's, from systemd
    first = boot_machine_id(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "kept this boot's machine id in /data/machine-id" in first.stdout
    assert (tmp_path / "data/machine-id").read_text() == ID_A + "\n"
    assert (tmp_path / "data/machine-id").stat().st_mode & 0o777 == 0o444
    # The next boot: systemd made up another one; the kept one is mounted over it.
    (tmp_path / "etc/machine-id").write_text(ID_B + "\n")
    second = boot_machine_id(tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split("---\n")[1] == ID_A + "\n"
    assert (tmp_path / "etc/machine-id").read_text() == ID_B + "\n"  # outside: unchanged


@needs_root
def test_machine_id_without_an_id_to_keep_fails_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "etc/machine-id").write_text("uninitialized\n")
    result = boot_machine_id(tmp_path)
    assert result.returncode == 1
    assert "holds no id to keep" in result.stderr
    assert not (tmp_path / "data/machine-id").exists()
