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
