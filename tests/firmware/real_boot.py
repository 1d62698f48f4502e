"""A real systemd boot of the gate in systemd-nspawn (`make boot-test`; not part of
`make test`: it needs root, debootstrap and systemd-container, and a few minutes).

A Debian bookworm root (systemd 252, python3, python3-nacl, python3-click) is made once
with debootstrap into a work folder outside the repository (FIELDPASS_BOOT_WORK, default
/var/tmp/fieldpass-boot). It gets what the image gets from meta-fieldpass: the agent
package under /usr/lib/python3/dist-packages with precompiled bytecode, /usr/bin/fieldpass
with the shebang the recipe writes (`#!/usr/bin/python3` and bin/fieldpass's own options),
the units, the drop-in, the scripts, and the stand-in application enabled with the
drop-in. Nothing of the host's virtualenv is used, so the checkout may be anywhere
(under /tmp, which the gate's PrivateTmp= hides, or /root, which ProtectHome= hides).

Every boot runs with a read-only root (`--read-only`), as OE's read-only-rootfs images
do: /etc/machine-id is empty, so systemd mounts a new random one at each boot. The data
partition is a directory of the scenario bound at /data. Per scenario, agent.toml's
[identity] sources, the keyring and a stand-in identity hook (this machine has no
EEPROM: the hook prints a fixed board serial, as the example hook prints an EEPROM's) are
bound read-only. A reporter unit ordered after the gate and the application records the
units' states, the application's environment and the journal, then powers off.
Run with `pytest -p no:cacheprovider tests/firmware/real_boot.py`.
"""

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DAY, DeviceRoot, Signer
from tests.firmware.staging import HOOKS, REPO, UNIT_DIR, fieldpass_as_installed, stage_root

WORK = Path(os.environ.get("FIELDPASS_BOOT_WORK", "/var/tmp/fieldpass-boot"))
MIRROR = os.environ.get("FIELDPASS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-cffi-backend,python3-nacl,python3-click"
SITE = "usr/lib/python3/dist-packages"
HOOK_PATH = "usr/libexec/fieldpass/identity-hook"
BOARD_SERIAL = "RB-0042-7731"
MACHINE_ID = "5e1dface5e1dface5e1dface5e1dface"
BOOT_TIMEOUT_S = 180

APP = """#!/bin/sh
env | grep '^FIELDPASS_' | sort > /run/robot-app.env
exec sleep infinity
"""
HOOK = f"""#!/bin/sh
# Stand-in for the board's identity hook: this machine has no EEPROM.
printf 'id={BOARD_SERIAL}\\nsource=nvmem:stand-in\\n'
"""
UNITS = ("fieldpass-gate.service", "robot-app.service", "fieldpass-machine-id.service")
REPORT_SCRIPT = """#!/bin/sh
# Record the boot outcome in /report, then stop the container.
i=0
while [ $i -lt 50 ] && systemctl -q is-active robot-app.service && [ ! -s /run/robot-app.env ]; do
    sleep 0.2
    i=$((i + 1))
done
for unit in {units}; do
    systemctl show -p Id -p ActiveState -p Result -p ExecMainStatus "$unit"
    echo
done > /report/states
cat /run/robot-app.env > /report/app.env 2>/dev/null
cat /etc/machine-id > /report/machine-id
journalctl -b -o cat -u fieldpass-gate.service -u robot-app.service \\
    -u fieldpass-machine-id.service > /report/journal
sync
# The shutdown is not under test, and a clean one takes about 50 s in this container.
systemctl poweroff --force --force
""".format(units=" ".join(UNITS))
REPORTER = """[Unit]
Description=Record the boot outcome and power off
After=fieldpass-gate.service robot-app.service fieldpass-machine-id.service

[Service]
Type=oneshot
ExecStart=/usr/local/bin/fieldpass-boot-report

[Install]
WantedBy=multi-user.target
"""


def debian_root() -> Path:
    """The debootstrap root, made once per package list."""
    root, stamp = WORK / "root", WORK / "root.packages"
    if root.is_dir() and stamp.exists() and stamp.read_text() == PACKAGES:
        return root
    new = WORK / "root.new"
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(new), MIRROR],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    new.rename(root)
    stamp.write_text(PACKAGES)
    return root


def install_image(root: Path) -> None:
    """What meta-fieldpass installs, into the Debian root (again at every run)."""
    stage_root(root, with_manager_units=False)
    site = root / SITE / "agent"
    shutil.rmtree(site, ignore_errors=True)
    shutil.copytree(REPO / "agent", site, ignore=shutil.ignore_patterns("__pycache__"))
    # Precompiled, as the recipe's wheel install does: a read-only root cannot write them.
    subprocess.run(
        ["chroot", str(root), "python3", "-m", "compileall", "-q", f"/{SITE}/agent"], check=True
    )
    fieldpass = root / "usr/bin/fieldpass"
    fieldpass.write_text(
        fieldpass_as_installed((REPO / "bin/fieldpass").read_text(), "/usr/bin/python3", f"/{SITE}")
    )
    fieldpass.chmod(0o755)
    (root / "usr/bin/robot-app").write_text(APP)
    (root / "etc/fieldpass").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HOOKS / "config/agent.toml", root / "etc/fieldpass/agent.toml")
    (root / "etc/fieldpass/keyring").write_text("")
    (root / UNIT_DIR / "fieldpass-boot-report.service").write_text(REPORTER)
    report = root / "usr/local/bin/fieldpass-boot-report"
    report.write_text(REPORT_SCRIPT)
    report.chmod(0o755)
    (root / "report").mkdir(exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    # A read-only root as OE ships it: systemd makes up a machine id at every boot.
    (root / "etc/machine-id").write_text("")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in ("fieldpass-gate.service", "robot-app.service", "fieldpass-boot-report.service"):
        link = wants / unit
        if not link.is_symlink():
            link.symlink_to(f"/{UNIT_DIR}/{unit}")


@pytest.fixture(scope="module")
def root() -> Path:
    assert os.geteuid() == 0, "systemd-nspawn needs root: run `make boot-test` as root"
    debian = debian_root()
    install_image(debian)
    return debian


@dataclass
class Boot:
    """One boot: the units' states, the application's environment, the journal."""

    states: dict[str, dict[str, str]]
    app_env: dict[str, str]
    machine_id: str
    journal: str
    data: Path

    def state(self, unit: str) -> str:
        return self.states[unit]["ActiveState"]


@dataclass
class Scenario:
    sources: str = '["hook"]'
    issued_days_ago: int | None = 0
    raw_id: str = BOARD_SERIAL
    data_partition: bool = True
    keep_machine_id: str | None = None  # None: fieldpass-machine-id.service not wanted
    prepare: Callable[[DeviceRoot], None] | None = None


def provision(work: Path, scenario: Scenario) -> DeviceRoot:
    """The scenario's device directory: config, hook, keyring, data partition."""
    shutil.rmtree(work, ignore_errors=True)
    device = DeviceRoot(work, scenario.raw_id)
    device.write_config(f"[identity]\nsources = {scenario.sources}\n")
    hook = work / HOOK_PATH
    hook.parent.mkdir(parents=True)
    hook.write_text(HOOK)
    hook.chmod(0o755)
    signer = Signer()
    if scenario.issued_days_ago is None:
        device.trust(signer.keyring)
    else:
        issued_at = int(time.time()) - scenario.issued_days_ago * DAY
        signer.provision(device, issued_at=issued_at, ttl=365 * DAY)
    if scenario.prepare:
        scenario.prepare(device)
    shutil.rmtree(work / "run", ignore_errors=True)
    (work / "report").mkdir()
    (work / "data").mkdir(exist_ok=True)
    if scenario.keep_machine_id:
        (work / "data/machine-id").write_text(scenario.keep_machine_id + "\n")
    return device


def boot(root: Path, device: DeviceRoot, scenario: Scenario) -> Boot:
    work = device.path
    binds = [
        f"--bind-ro={work / 'etc/fieldpass/agent.toml'}:/etc/fieldpass/agent.toml",
        f"--bind-ro={work / 'etc/fieldpass/keyring'}:/etc/fieldpass/keyring",
        f"--bind-ro={work / 'usr/libexec/fieldpass/identity-hook'}:/{HOOK_PATH}",
        f"--bind={work / 'report'}:/report",
    ]
    if scenario.data_partition:
        binds.append(f"--bind={work / 'data'}:/data")
    init_args = []
    if scenario.keep_machine_id is not None:
        init_args.append("systemd.wants=fieldpass-machine-id.service")
    result = subprocess.run(
        [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--boot",
            "--read-only",
            f"--directory={root}",
            *binds,
            "--console=pipe",
            *init_args,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BOOT_TIMEOUT_S,
        check=False,
    )
    report = work / "report"
    assert (report / "states").exists(), (
        f"no report; nspawn exited {result.returncode}\n"
        f"{result.stdout[-3000:]}{result.stderr[-2000:]}"
    )
    states: dict[str, dict[str, str]] = {}
    for block in (report / "states").read_text().split("\n\n"):
        values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" in values:
            states[values["Id"]] = values
    env_file = report / "app.env"
    app_env = (
        dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
        if env_file.exists()
        else {}
    )
    return Boot(
        states,
        app_env,
        (report / "machine-id").read_text().strip(),
        (report / "journal").read_text(),
        work / "data",
    )


def run_scenario(root: Path, name: str, scenario: Scenario) -> Boot:
    device = provision(WORK / f"device-{name}", scenario)
    outcome = boot(root, device, scenario)
    print(f"{name}: {outcome.states}")
    return outcome


def other_board(device: DeviceRoot) -> None:
    """The machine file was issued for this board; the one that boots is another."""
    hook = device.path / HOOK_PATH
    hook.write_text(HOOK.replace(BOARD_SERIAL, "RB-9999-0000"))


def empty_data_partition(device: DeviceRoot) -> None:
    shutil.rmtree(device.state_dir, ignore_errors=True)


def tamper(device: DeviceRoot) -> None:
    data = bytearray(device.machine_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    device.machine_file.write_bytes(bytes(data))


# -- the gate runs before the application and decides ---------------------------------


@pytest.mark.parametrize(
    ("name", "days", "verdict", "limited"),
    [("valid", 0, "valid", "0"), ("grace", 370, "grace", "1")],
)
def test_gate_lets_the_application_start(
    root: Path, name: str, days: int, verdict: str, limited: str
) -> None:
    outcome = run_scenario(root, name, Scenario(issued_days_ago=days))
    gate = outcome.states["fieldpass-gate.service"]
    assert gate["ActiveState"] == "active" and gate["Result"] == "success", outcome.journal
    assert outcome.state("robot-app.service") == "active", outcome.journal
    # EnvironmentFile= took verdict.env's quotes off. The identity came from the hook,
    # run inside the hardened gate's sandbox.
    assert outcome.app_env["FIELDPASS_VERDICT"] == verdict
    assert outcome.app_env["FIELDPASS_LIMITED"] == limited


@pytest.mark.parametrize(
    ("name", "scenario", "status"),
    [
        ("expired", Scenario(issued_days_ago=400), "20"),
        ("invalid", Scenario(prepare=tamper), "31"),
        ("other-board", Scenario(prepare=other_board), "31"),
    ],
)
def test_gate_holds_the_application_back(
    root: Path, name: str, scenario: Scenario, status: str
) -> None:
    outcome = run_scenario(root, name, scenario)
    gate = outcome.states["fieldpass-gate.service"]
    assert gate["ActiveState"] == "failed", outcome.journal
    assert gate["ExecMainStatus"] == status, outcome.journal
    assert outcome.state("robot-app.service") == "inactive"
    assert "Dependency failed for" in outcome.journal
    assert outcome.app_env == {}


# -- read-only root, data partition ---------------------------------------------------


def test_first_boot_creates_the_state_directory_on_the_data_partition(root: Path) -> None:
    outcome = run_scenario(
        root, "first-boot", Scenario(issued_days_ago=None, prepare=empty_data_partition)
    )
    assert "created the state directory /data/fieldpass (first boot)" in outcome.journal
    assert (outcome.data / "fieldpass").stat().st_mode & 0o777 == 0o700
    gate = outcome.states["fieldpass-gate.service"]
    assert gate["ExecMainStatus"] == "30", outcome.journal  # not activated, no 226/NAMESPACE
    assert outcome.state("robot-app.service") == "inactive"


def test_without_the_data_partition_the_gate_says_so(root: Path) -> None:
    outcome = run_scenario(root, "no-data", Scenario(data_partition=False))
    assert outcome.state("fieldpass-gate.service") == "failed"
    assert "cannot write the state directory /data/fieldpass" in outcome.journal
    assert "mount the data partition read-write" in outcome.journal
    assert "226/NAMESPACE" not in outcome.journal
    assert outcome.state("robot-app.service") == "inactive"


# -- machine-id on a read-only root ---------------------------------------------------


def test_a_transient_machine_id_is_refused(root: Path) -> None:
    """The image opted in to machine-id, but the root is read-only and the id is new at
    every boot: the gate refuses it with a clear message (exit 78)."""
    outcome = run_scenario(
        root, "transient-machine-id", Scenario(sources='["machine-id"]', issued_days_ago=None)
    )
    gate = outcome.states["fieldpass-gate.service"]
    assert gate["ExecMainStatus"] == "78", outcome.journal
    assert "machine-id refused: /etc/machine-id is transient (tmpfs mounted over it" in (
        outcome.journal
    )
    assert outcome.state("robot-app.service") == "inactive"


def test_a_machine_id_kept_on_the_data_partition_identifies_the_device(root: Path) -> None:
    """FIELDPASS_PERSISTENT_MACHINE_ID and an image that lists machine-id: the id kept on
    the data partition is mounted over the transient one before the gate runs."""
    outcome = run_scenario(
        root,
        "persistent-machine-id",
        Scenario(sources='["machine-id"]', raw_id=MACHINE_ID, keep_machine_id=MACHINE_ID),
    )
    assert outcome.state("fieldpass-machine-id.service") == "active", outcome.journal
    assert outcome.machine_id == MACHINE_ID
    assert outcome.state("fieldpass-gate.service") == "active", outcome.journal
    assert outcome.state("robot-app.service") == "active"


def test_the_first_boot_keeps_its_machine_id(root: Path) -> None:
    outcome = run_scenario(
        root,
        "machine-id-first-boot",
        Scenario(sources='["machine-id"]', issued_days_ago=None, keep_machine_id=""),
    )
    assert outcome.state("fieldpass-machine-id.service") == "active", outcome.journal
    kept = (outcome.data / "machine-id").read_text().strip()
    assert len(kept) == 32 and kept == outcome.machine_id
    assert "kept this boot's machine id in /data/machine-id" in outcome.journal
