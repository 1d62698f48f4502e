"""Ownership and modes the gate checks like ssh (agent/perms.py): what another user could
write is named loudly in the verdict files, on stderr and in `status`; the verdict of
a valid license stands (refusing it would lock the device out)."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import perms
from tests.conftest import DeviceRoot, Signer

NOBODY = 65534


def chown_nobody(path: Path) -> None:
    os.chown(path, NOBODY, NOBODY)


CASES: dict[str, tuple[Callable[[DeviceRoot], Path], Callable[[Path], None], str]] = {
    "keyring world-writable": (
        lambda d: d.path / "etc/fieldpass/keyring",
        lambda p: p.chmod(0o666),
        "world-writable",
    ),
    "keyring owned by another user": (
        lambda d: d.path / "etc/fieldpass/keyring",
        chown_nobody,
        f"owned by uid {NOBODY}",
    ),
    "keyring directory group-writable": (
        lambda d: d.path / "etc/fieldpass",
        lambda p: p.chmod(0o775),
        "group-writable",
    ),
    "agent.toml group-writable": (
        lambda d: d.path / "etc/fieldpass/agent.toml",
        lambda p: p.chmod(0o664),
        "group-writable",
    ),
    "state directory world-writable": (
        lambda d: d.state_dir,
        lambda p: p.chmod(0o777),
        "world-writable",
    ),
    "verdict directory owned by another user": (
        lambda d: d.verdict_dir,
        chown_nobody,
        f"owned by uid {NOBODY}",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unsafe_modes_are_warned_loudly_and_the_verdict_stands(
    device: DeviceRoot, signer: Signer, case: str
) -> None:
    signer.provision(device)
    device.write_config("# defaults\n")
    assert device.check().returncode == 0
    where, spoil, words = CASES[case]
    path = where(device)
    spoil(path)
    result = device.run("check")
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if "UNSAFE" in line)
    assert str(path) in warning and words in warning
    assert any("UNSAFE" in note and str(path) in note for note in device.verdict()["notes"])  # type: ignore[attr-defined]
    status = device.run("status")
    assert status.returncode == 0
    assert any(
        line.startswith("Warning:") and "UNSAFE" in line for line in status.stdout.splitlines()
    )


def test_safe_defaults_give_no_warning(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device)
    result = device.check()
    assert result.returncode == 0 and "UNSAFE" not in result.stderr
    assert perms.warnings(device.config()) == []


def test_a_sticky_parent_is_safe_for_an_entry_owned_by_root(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    mine = shared / "keyring"
    mine.write_text("x")
    mine.chmod(0o644)
    assert perms.path_problem(str(mine)) == ""
    chown_nobody(mine)
    assert "owned by uid" in perms.path_problem(str(mine))
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    (open_dir / "keyring").write_text("x")
    assert "world-writable" in perms.path_problem(str(open_dir / "keyring"))
    assert perms.path_problem(str(tmp_path / "absent")) == ""
