"""agent.toml as a person writes it wrong, and as an attacker would: every mistake is a
config error (exit 78) with one sentence that names the key, never a traceback."""

import os
import subprocess
from pathlib import Path

import pytest

from agent.config import ConfigError, load
from tests.conftest import FIELDPASS, DeviceRoot, clean_env


def test_a_2000_deep_array_is_a_config_error(device: DeviceRoot) -> None:
    device.write_config("[online]\nservers = " + "[" * 2000 + "\n")
    result = device.run("check", "--json")
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr
    assert "nested more than 16 deep" in result.stderr
    assert device.verdict()["verdict"] == "error"
    assert device.verdict()["reason"] == "config"
    assert device.run("status").returncode == 78


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[clock]\ntolerance_s = "300"\n', "[clock] tolerance_s must be a whole number, not text"),
        ("[identity]\nallow_override = 1\n", "must be true or false, not a whole number"),
        ("keyring = 5\n", "keyring must be text in quotes"),
        ("[online]\nservers = 'x'\n", "[online] servers must be a list"),
        ("[clock]\ntolerance_s = 1.5\n", "not a decimal number"),
    ],
)
def test_type_errors_are_said_in_words(device: DeviceRoot, text: str, words: str) -> None:
    device.write_config(text)
    with pytest.raises(ConfigError) as info:
        load(str(device.path))
    assert words in str(info.value)
    assert "a int" not in str(info.value) and "a str" not in str(info.value)


def test_a_root_that_does_not_exist_says_so(tmp_path: Path) -> None:
    missing = str(tmp_path / "nonexistent")
    for args in (["check"], ["check", "--json"], ["status"], ["fingerprint"]):
        result = subprocess.run(
            [FIELDPASS, "--root", missing, *args],
            capture_output=True,
            text=True,
            env=clean_env(),
            check=False,
        )
        assert result.returncode == 78, (args, result.stderr)
        assert "no such directory" in result.stderr, result.stderr
        assert "no device id" not in result.stderr
    assert not os.path.exists(missing)  # nothing created under it


def test_config_larger_than_the_cap(device: DeviceRoot) -> None:
    device.write_config("# " + "x" * (64 * 1024) + "\n")
    result = device.check()
    assert result.returncode == 78
    assert "larger than 65536 bytes" in result.stderr
