"""A real systemd boot of the gate (not part of `make test`: it needs a Debian root made
with debootstrap, systemd-nspawn, and a few minutes).

    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm ROOT
    .venv/bin/python -m tests.firmware.real_boot ROOT

The root gets the firmware hooks (tests/firmware/staging.py) and the stand-in
application enabled with the gating drop-in; it is never copied (its /dev holds device
nodes). For each scenario a small device directory gets a machine file issued so that the
verdict comes out valid, grace or expired under the real clock (libfaketime cannot move
the clock of PID 1), and a reporter unit ordered after both that records the units'
states and the application's environment, then powers the container off. State,
keyring and report are bind-mounted. The host's `fieldpass` (this virtualenv and its
Python under /root) is bind-mounted read-only; only for that, a drop-in turns the gate's
ProtectHome= off (on an image Python lives in /usr).
"""

import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import DAY, FIELDPASS, DeviceRoot, Signer
from tests.firmware.staging import BIN, UNIT_DIR, stage_root

PYTHON_HOME = Path(sys.base_prefix)
MACHINE_ID = "5e1dface5e1dface5e1dface5e1dface"

APP = """#!/bin/sh
env | grep '^FIELDPASS_' | sort > /run/robot-app.env
exec sleep infinity
"""
REPORTER = """[Unit]
Description=Record the boot outcome and power off
After=fieldpass-gate.service robot-app.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'systemctl show -p Id -p ActiveState -p Result fieldpass-gate.service \
robot-app.service > /var/report/report; cat /run/robot-app.env >> /var/report/report 2>/dev/null; \
journalctl -b -o cat -u fieldpass-gate.service -u robot-app.service >> /var/report/report; \
systemctl --no-block poweroff'

[Install]
WantedBy=multi-user.target
"""

SCENARIOS = {
    # name: (issued so many days ago, expected gate exit)
    "valid": (0, 0),
    "grace": (370, 10),
    "expired": (400, 20),
}


def prepare_root(root: Path) -> None:
    """Install the hooks into the debootstrap root itself. Nothing of the root is ever
    copied or read (its /dev holds device nodes): per-scenario state is bind-mounted."""
    stage_root(root, with_manager_units=False)
    (root / "etc/machine-id").write_text(MACHINE_ID + "\n")
    (root / "usr/bin/fieldpass").write_text(f'#!/bin/sh\nexec {FIELDPASS} "$@"\n')
    (root / "usr/bin/robot-app").write_text(APP)
    (root / UNIT_DIR / "fieldpass-boot-report.service").write_text(REPORTER)
    (root / "var/report").mkdir(exist_ok=True)
    host_python = root / "etc/systemd/system/fieldpass-gate.service.d/90-host-python.conf"
    host_python.parent.mkdir(parents=True, exist_ok=True)
    host_python.write_text("[Service]\n# The host's Python lives under /root.\nProtectHome=no\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in ("fieldpass-gate.service", "robot-app.service", "fieldpass-boot-report.service"):
        link = wants / unit
        if not link.is_symlink():
            link.symlink_to(f"/{UNIT_DIR}/{unit}")


def provision(work: Path, issued_days_ago: int) -> DeviceRoot:
    """A small device directory (same machine-id) holding the state and keyring."""
    if work.exists():
        shutil.rmtree(work)
    device = DeviceRoot(work, MACHINE_ID)
    issued_at = int(time.time()) - issued_days_ago * DAY
    Signer().provision(device, issued_at=issued_at, ttl=365 * DAY)
    shutil.rmtree(work / "run", ignore_errors=True)
    (work / "report").mkdir()
    return device


def boot(root: Path, device: DeviceRoot) -> str:
    result = subprocess.run(
        [
            "timeout",
            "180",
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--boot",
            f"--directory={root}",
            f"--bind-ro={PYTHON_HOME}",
            f"--bind-ro={BIN.parent}",
            f"--bind={device.state_dir}:/data/fieldpass",
            f"--bind-ro={device.path / 'etc/fieldpass/keyring'}:/etc/fieldpass/keyring",
            f"--bind={device.path / 'report'}:/var/report",
            "--console=pipe",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    report = device.path / "report/report"
    if not report.exists():
        return f"no report; nspawn exited {result.returncode}\n{result.stdout[-3000:]}"
    return report.read_text()


def main() -> int:
    root = Path(sys.argv[1])
    prepare_root(root)
    for name, (days, exit_code) in SCENARIOS.items():
        device = provision(root.parent / f"device-{name}", days)
        print(f"=== {name}: machine file issued {days} days ago, gate should exit {exit_code}")
        print(boot(root, device), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
