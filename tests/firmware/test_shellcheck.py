"""shellcheck on every shell script of firmware-hooks/ and yocto-layer/."""

import subprocess
from pathlib import Path

from tests.firmware.staging import HOOKS, LAYER


def shell_scripts() -> list[Path]:
    scripts = []
    for base in (HOOKS, LAYER.parent):
        for path in sorted(base.rglob("*")):
            if not path.is_file():
                continue
            with path.open("rb") as f:
                first = f.readline()
            if first.startswith(b"#!") and (b"/sh" in first or b"bash" in first):
                scripts.append(path)
    return scripts


def test_the_scripts_are_found() -> None:
    names = {p.name for p in shell_scripts()}
    assert {
        "fieldpass-identity-hook",
        "fieldpass-verdict-allows",
        "50-hmi-message",
        "fieldpass-gate",
        "fieldpass-agent",
        "fieldpass-data-dir",
        "fieldpass-machine-id",
        "robot-app",
    } <= names


def test_shellcheck_is_clean() -> None:
    scripts = [str(p) for p in shell_scripts()]
    result = subprocess.run(
        ["shellcheck", "--shell=sh", "--severity=style", *scripts],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_executable() -> None:
    for path in shell_scripts():
        assert path.stat().st_mode & 0o111, path
