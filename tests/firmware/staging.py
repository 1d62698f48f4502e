"""A staged device root for the firmware tests: the systemd units, the gating drop-in,
the hooks and the scripts installed where the Yocto recipe installs them.

The systemd manager's own units (sysinit.target, basic.target, ...) are copied from the
host's systemd package so that `systemd-analyze verify --root` can resolve the default
dependencies, as it would on the image.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOOKS = REPO / "firmware-hooks"
LAYER = REPO / "yocto-layer" / "meta-fieldpass"
RECIPE = LAYER / "recipes-fieldpass/fieldpass/fieldpass_0.1.0.bb"
BIN = Path(sys.executable).parent
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))

UNIT_DIR = "usr/lib/systemd/system"
APP_UNIT = "robot-app.service"
DROP_IN = f"etc/systemd/system/{APP_UNIT}.d/50-fieldpass-gate.conf"
ALLOWS = "usr/libexec/fieldpass/fieldpass-verdict-allows"

# repository file -> path in the device root (mode)
INSTALLED = {
    "systemd/fieldpass-gate.service": (f"{UNIT_DIR}/fieldpass-gate.service", 0o644),
    "systemd/fieldpass-agent.service": (f"{UNIT_DIR}/fieldpass-agent.service", 0o644),
    "systemd/fieldpass-machine-id.service": (f"{UNIT_DIR}/fieldpass-machine-id.service", 0o644),
    "systemd/examples/robot-app.service": (f"{UNIT_DIR}/{APP_UNIT}", 0o644),
    "systemd/50-fieldpass-gate.conf": (DROP_IN, 0o644),
    "libexec/fieldpass-verdict-allows": (ALLOWS, 0o755),
    "libexec/fieldpass-data-dir": ("usr/libexec/fieldpass/fieldpass-data-dir", 0o755),
    "libexec/fieldpass-machine-id": ("usr/libexec/fieldpass/fieldpass-machine-id", 0o755),
    "identity/fieldpass-identity-hook": ("usr/libexec/fieldpass/identity-hook", 0o755),
    "on-verdict.d/50-hmi-message": ("etc/fieldpass/on-verdict.d/50-hmi-message", 0o755),
    "sysvinit/fieldpass-gate": ("etc/init.d/fieldpass-gate", 0o755),
    "sysvinit/fieldpass-agent": ("etc/init.d/fieldpass-agent", 0o755),
    "sysvinit/examples/robot-app": ("etc/init.d/robot-app", 0o755),
}


def host_unit_dir() -> Path:
    for candidate in HOST_UNIT_DIRS:
        if (candidate / "sysinit.target").exists():
            return candidate
    raise AssertionError("the systemd package's units are missing: run scripts/install-test-deps")


def stage_root(root: Path, *, with_manager_units: bool = True) -> Path:
    """Install the firmware hooks into ``root`` and return it."""
    if with_manager_units:
        shutil.copytree(host_unit_dir(), root / UNIT_DIR, symlinks=True, dirs_exist_ok=True)
    for source, (target, mode) in INSTALLED.items():
        dest = root / target
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HOOKS / source, dest)
        dest.chmod(mode)
    for stub in ("usr/bin/fieldpass", "usr/bin/robot-app"):
        path = root / stub
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    (root / "data/fieldpass").mkdir(parents=True, exist_ok=True)
    (root / "run/fieldpass").mkdir(parents=True, exist_ok=True)
    return root


def unit_values(path: Path, key: str) -> list[str]:
    """Every value of ``key=`` in a unit file (no section awareness needed here)."""
    values = []
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            values.append(value.strip())
    return values


def fieldpass_as_installed(script: str, python: str, site_packages: str) -> str:
    """``script`` (bin/fieldpass's text) as the recipe's do_install leaves it on the
    target: its own ``sed`` of the first line (FIELDPASS_SHEBANG, its ``${bindir}/python3``
    replaced by ``python``) and of the line it adds after it (FIELDPASS_SITE_LINE, its
    ``${PYTHON_SITEPACKAGES_DIR}`` replaced by ``site_packages``)."""
    text = RECIPE.read_text()
    shebang = re.search(r'^FIELDPASS_SHEBANG = "([^"]*)"$', text, re.M)
    assert shebang and shebang.group(1) == "${bindir}/python3 -IS", "FIELDPASS_SHEBANG"
    site_line = re.search(r'^FIELDPASS_SITE_LINE = "([^"]*)"$', text, re.M)
    assert site_line and "${PYTHON_SITEPACKAGES_DIR}" in site_line.group(1), "FIELDPASS_SITE_LINE"
    assert "install -m 0755 ${S}/bin/fieldpass ${D}${bindir}/fieldpass" in text
    found = re.search(
        r"sed -i -e '(1s\|\^#!\.\*\|#!\$\{FIELDPASS_SHEBANG\}\|)' "
        r'-e "(1a \$\{FIELDPASS_SITE_LINE\})" \$\{D\}\$\{bindir\}/fieldpass',
        text,
    )
    assert found, "the shebang sed of do_install"
    line = shebang.group(1).replace("${bindir}/python3", python)
    added = site_line.group(1).replace("${PYTHON_SITEPACKAGES_DIR}", site_packages)
    result = subprocess.run(
        [
            "sed",
            "-e",
            found.group(1).replace("${FIELDPASS_SHEBANG}", line),
            "-e",
            found.group(2).replace("${FIELDPASS_SITE_LINE}", added),
        ],
        input=script,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout
