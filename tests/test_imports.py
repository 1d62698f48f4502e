"""Import discipline: the boot gate stays lean; the device never imports HQ code."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

from tests.conftest import FIELDPASS, DeviceRoot, Signer, clean_env

REPO = Path(__file__).resolve().parents[1]
# Heavy or off-limits on the boot path (docs/performance.md has the measured costs).
FORBIDDEN_ON_GATE = {
    "click",
    "paho",
    "provisioning",
    "cbor2",
    "json",
    "tomllib",
    "dataclasses",
    "typing",
    "re",
    "hashlib",
    "nacl.bindings",
    "contextlib",
    "subprocess",
    "datetime",
    "http",
}


def gate_modules(device: DeviceRoot) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", FIELDPASS, "--root", str(device.path), "check"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_gate_path_imports_nothing_heavy(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device)
    modules = gate_modules(device)
    assert "agent.gate" in modules
    bad = {m for m in modules if m.split(".")[0] in FORBIDDEN_ON_GATE or m in FORBIDDEN_ON_GATE}
    assert not bad, f"the boot gate imports {sorted(bad)}"


def test_gate_modules_are_precompiled_in_the_install(device: DeviceRoot, signer: Signer) -> None:
    """No .pyc needs writing at run time (a read-only root has nowhere to write it)."""
    signer.provision(device)
    for name in sorted(m for m in gate_modules(device) if m.startswith("agent")):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        if "site-packages" not in spec.origin:
            continue  # the source tree; the installed copy is what the gate ran
        assert Path(importlib.util.cache_from_source(spec.origin)).exists(), name


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_agent_never_imports_provisioning_and_wire_stays_pure() -> None:
    for path in (REPO / "agent").rglob("*.py"):
        roots = {name.split(".")[0] for name in imports_of(path)}
        assert "provisioning" not in roots, path
        if "wire" in path.parts:
            assert not roots & {"click", "paho", "json", "tomllib", "socket", "http"}, path


def test_python_dash_m_agent_works(device: DeviceRoot) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--root", str(device.path), "fingerprint", "--json"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0
    assert '"source": "machine-id"' in result.stdout


def test_the_gate_interpreter_is_isolated_from_the_environment(
    device: DeviceRoot, tmp_path: Path
) -> None:
    """A fake ``agent`` (and a fake ``encodings``, ``sitecustomize``, a user site with a
    .pth) in the environment of the installed script: none of it runs, the gate says
    30 for a device without a machine file. The flag survives pip's rewrite of the
    interpreter line because the script starts with sh (see bin/fieldpass)."""
    fake = tmp_path / "fake"
    (fake / "agent").mkdir(parents=True)
    (fake / "agent/__init__.py").write_text("")
    (fake / "agent/main.py").write_text("def main():\n    print('FAKE AGENT')\n    return 0\n")
    (fake / "encodings").mkdir()
    (fake / "encodings/__init__.py").write_text("raise SystemExit('FAKE ENCODINGS')\n")
    (fake / "sitecustomize.py").write_text("print('FAKE SITECUSTOMIZE')\n")
    user_site = tmp_path / "userbase/lib/python3.11/site-packages"
    user_site.mkdir(parents=True)
    (user_site / "evil.pth").write_text("import sys; print('FAKE PTH')\n")
    env = clean_env(
        PYTHONPATH=str(fake),
        PYTHONUSERBASE=str(tmp_path / "userbase"),
        PYTHONSTARTUP=str(fake / "sitecustomize.py"),
        PYTHONINSPECT="1",
        PYTHONWARNINGS="error",
    )
    result = subprocess.run(
        [FIELDPASS, "--root", str(device.path), "check"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert "FAKE" not in result.stdout + result.stderr
    assert result.returncode == 30, result.stdout + result.stderr
    script = Path(FIELDPASS).read_text()
    assert script.startswith("#!/bin/sh\n") and 'exec "$py" -I "$0"' in script
