"""verdict.env read by every consumer there is: dash, bash, busybox sh, systemd's
EnvironmentFile= parser and Python's ``str.splitlines`` all see exactly the variables
written, whatever an entitlement name, a message or a --root path holds (agent/report.py,
agent/jsonout.py env_clean).

systemd is not PID 1 on this machine, so ``systemd-run --property=EnvironmentFile=``
cannot run here; the test calls ``load_env_file()`` in systemd's own
libsystemd-shared (the function the service manager's exec_context_load_environment()
calls for EnvironmentFile=) through ctypes: the real parser, not a model of it.
"""

import ctypes
import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent import report
from agent.wire.machine_file import Entitlement
from tests.conftest import DeviceRoot, Signer

SEPARATORS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00"
HOSTILE = [
    "nav\u2028LD_PRELOAD=/tmp/evil.so",
    "x\x0bBASH_ENV=/tmp/evil",
    "x\x1cPATH=/tmp",
    "x\x85FIELDPASS_VERDICT=valid",
    "x\nFIELDPASS_EXIT=0",
    "nul\x00byte",
    "quote'$(touch /tmp/pwned)'",
    "back\\slash",
]
NAMES = [k for k, _ in report.env_pairs({})]


def shell_env(shell: list[str], path: Path) -> dict[str, str]:
    """The FIELDPASS_* variables a shell has after sourcing ``path``."""
    script = f"set -a; . '{path}'; set +a; env -0"
    out = subprocess.run([*shell, "-c", script], capture_output=True, check=True, env={}).stdout
    pairs = (item.split(b"=", 1) for item in out.split(b"\0") if item)
    return {k.decode(): v.decode() for k, v in pairs if k.startswith(b"FIELDPASS_")}


def systemd_env(path: Path) -> dict[str, str]:
    libs = glob.glob("/usr/lib/*/systemd/libsystemd-shared-*.so")
    assert libs, "systemd is not installed (scripts/install-test-deps installs it)"
    lib = ctypes.CDLL(libs[0])
    strv_p = ctypes.POINTER(ctypes.c_char_p)
    lib.load_env_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(strv_p)]
    strv = strv_p()
    assert lib.load_env_file(None, str(path).encode(), ctypes.byref(strv)) >= 0
    found = {}
    i = 0
    while strv[i]:
        key, _, value = strv[i].decode("utf-8").partition("=")
        found[key] = value
        i += 1
    return found


def splitlines_env(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, quoted = line.partition("=")
        found[key] = quoted[1:-1]
    return found


CONSUMERS = {
    "dash": lambda p: shell_env([shutil.which("dash") or "/usr/bin/dash"], p),
    "bash": lambda p: shell_env(["bash", "--norc", "--noprofile"], p),
    "busybox sh": lambda p: shell_env([shutil.which("busybox") or "/bin/busybox", "sh"], p),
    "systemd EnvironmentFile=": systemd_env,
    "str.splitlines": splitlines_env,
}


def every_consumer_reads_exactly(path: Path, expected: dict[str, str]) -> None:
    for name, read in CONSUMERS.items():
        assert read(path) == expected, name


def hostile_doc(text: str) -> dict[str, object]:
    return {
        "verdict": "valid",
        "exit_code": 0,
        "limited": False,
        "message": f"License valid {text}",
        "warning": text,
        "reason": text,
        "expires_at": "2027-01-01T00:00:00Z",
        "entitlements": ["navigation", text],
        "checked_at": text,
    }


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(alphabet=st.sampled_from([*SEPARATORS, "'", "\\", "=", "$", "a", "é", "\udcff"])))
@example("\u2028LD_PRELOAD=/tmp/evil.so")
@example("\x1e\x1dFIELDPASS_VERDICT='valid'")
def test_every_consumer_reads_exactly_the_variables_written(tmp_path: Path, text: str) -> None:
    doc = hostile_doc(text)
    path = tmp_path / "verdict.env"
    path.write_bytes(report.env_text(doc).encode("utf-8"))
    expected = dict(report.env_pairs(doc))
    assert sorted(expected) == sorted(NAMES)
    kept = ",".join(["navigation", *([text] if report.is_feature_name(text) else [])])
    assert expected["FIELDPASS_ENTITLEMENTS"] == kept  # a name HQ never issues is left out
    every_consumer_reads_exactly(path, expected)


def test_values_keep_what_every_reader_agrees_on() -> None:
    assert report.env_value("valid until 2027-11-28 (é)") == "valid until 2027-11-28 (é)"
    assert report.env_value("a'b\\c\u2028d\x00e") == "a\u2019b/c d e"


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("navigation", True),
        ("a", True),
        ("A.b_c-9", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("-lead", False),
        (".hidden", False),
        ("näv", False),
        ("a b", False),
        ("a,b", False),
        ("a\u2028", False),
    ],
)
def test_feature_names_are_what_hq_issues(name: str, ok: bool) -> None:
    """The pattern of provisioning's check_name, checked on the device without ``re``."""
    import re

    assert report.is_feature_name(name) is ok
    assert bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name)) is ok


# -- through the real gate, with a file HQ signed holding hostile entitlement names ----


def test_hostile_entitlements_reach_no_consumer_and_never_crash_the_gate(
    device: DeviceRoot, signer: Signer
) -> None:
    ents = (Entitlement("navigation"), *(Entitlement(name) for name in HOSTILE))
    signer.provision(device, entitlements=ents)
    hook_out = device.path / "hook.env"
    hooks_dir = device.path / "etc/fieldpass/on-verdict.d"
    hooks_dir.mkdir()
    hook = hooks_dir / "10-dump"
    hook.write_text(f"#!/bin/sh\nenv -0 > '{hook_out}'\n")
    hook.chmod(0o755)
    result = device.run("check", "--json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    assert doc["entitlements"] == ["navigation"]
    assert any("entitlement(s) ignored" in note for note in doc["notes"])
    env_file = device.verdict_dir / "verdict.env"
    expected = splitlines_env(env_file)
    assert sorted(expected) == sorted(NAMES) and expected["FIELDPASS_ENTITLEMENTS"] == "navigation"
    every_consumer_reads_exactly(env_file, expected)
    hook_env = dict(item.split("=", 1) for item in hook_out.read_text().split("\0") if "=" in item)
    for name in ("LD_PRELOAD", "BASH_ENV"):
        assert name not in hook_env
    assert hook_env["FIELDPASS_ENTITLEMENTS"] == "navigation"
    assert hook_env["FIELDPASS_VERDICT"] == "valid" and hook_env["FIELDPASS_EXIT"] == "0"
    assert hook_env["FIELDPASS_ROOT"] == str(device.path)


def test_a_hostile_root_path_reaches_no_consumer(tmp_path: Path) -> None:
    """--root holding separators: the paths in messages cannot add variables."""
    root = tmp_path / "robot\u2028LD_PRELOAD=x\x1cPATH=y\x85Z=1"
    device = DeviceRoot(root, os.urandom(16).hex())
    device.write_config('[clock]\npolicy = "sometimes"\n')  # an error message with the path
    result = device.check()
    assert result.returncode == 78 and "Traceback" not in result.stderr
    env_file = device.verdict_dir / "verdict.env"
    expected = splitlines_env(env_file)
    assert sorted(expected) == sorted(NAMES)
    assert "robot LD_PRELOAD=x PATH=y Z=1" in expected["FIELDPASS_MESSAGE"]
    every_consumer_reads_exactly(env_file, expected)
