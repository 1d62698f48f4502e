"""A real systemd boot of the gate (not part of `make test`: it needs a Debian root made
with debootstrap, systemd-nspawn, and a few minutes).

    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm ROOT
    .venv/bin/python -m tests.firmware.real_boot ROOT

For each scenario the root gets the firmware hooks (tests/firmware/staging.py), the
stand-in application enabled with the gating drop-in, a machine file issued so that the
verdict comes out valid, grace or expired under the real clock (libfaketime cannot move
the clock of PID 1), and a reporter unit ordered after both that records the units'
states and the application's environment, then powers the container off. The host's
`fieldpass` (this virtualenv) is bind-mounted read-only into the container.
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
robot-app.service > /report; cat /run/robot-app.env >> /report 2>/dev/null; \
journalctl -b -o cat -u fieldpass-gate.service -u robot-app.service >> /report; \
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


def prepare(base: Path, work: Path, name: str, issued_days_ago: int) -> Path:
    root = work / name
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(base, root, symlinks=True)
    stage_root(root, with_manager_units=False)
    (root / "etc/machine-id").write_text(MACHINE_ID + "\n")
    (root / "usr/bin/fieldpass").write_text(f'#!/bin/sh\nexec {FIELDPASS} "$@"\n')
    (root / "usr/bin/robot-app").write_text(APP)
    (root / UNIT_DIR / "fieldpass-boot-report.service").write_text(REPORTER)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in ("fieldpass-gate.service", "robot-app.service", "fieldpass-boot-report.service"):
        link = wants / unit
        if not link.is_symlink():
            link.symlink_to(f"/{UNIT_DIR}/{unit}")
    device = DeviceRoot(root, MACHINE_ID)
    signer = Signer()
    issued_at = int(time.time()) - issued_days_ago * DAY
    signer.provision(device, issued_at=issued_at, ttl=365 * DAY)
    for path in ("run/fieldpass", "var/tmp/fieldpass-host"):
        shutil.rmtree(root / path, ignore_errors=True)
    return root


def boot(root: Path) -> str:
    result = subprocess.run(
        [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--boot",
            f"--directory={root}",
            f"--bind-ro={PYTHON_HOME}",
            f"--bind-ro={BIN.parent}",
            "--console=pipe",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = root / "report"
    if not report.exists():
        return f"no report; nspawn exited {result.returncode}\n{result.stdout}{result.stderr}"
    return report.read_text()


def main() -> int:
    base = Path(sys.argv[1])
    work = base.parent / "fieldpass-boots"
    work.mkdir(exist_ok=True)
    for name, (days, exit_code) in SCENARIOS.items():
        root = prepare(base, work, name, days)
        print(f"=== {name}: machine file issued {days} days ago, gate should exit {exit_code}")
        print(boot(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
