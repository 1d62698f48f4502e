"""Fingerprint sources, their order and refusals; the raw id never leaves the device."""

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from agent import identity
from agent.config import load
from agent.identity import FINGERPRINT_APP_ID, IdentityError, read_identity


def make_root(tmp_path: Path, **files: str) -> Path:
    mapping = {
        "dmi": "sys/class/dmi/id/product_uuid",
        "machine_id": "etc/machine-id",
        "dt": "proc/device-tree/serial-number",
        "config": "etc/fieldpass/agent.toml",
    }
    for name, content in files.items():
        path = tmp_path / mapping[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return tmp_path


def ident(root: Path) -> identity.Identity:
    return read_identity(load(str(root)))


def test_fingerprint_is_hmac_of_the_raw_id_like_systemd_app_ids(tmp_path: Path) -> None:
    root = make_root(tmp_path, machine_id="0123456789abcdef0123456789abcdef\n")
    expected = hmac.new(
        b"0123456789abcdef0123456789abcdef", FINGERPRINT_APP_ID, hashlib.sha256
    ).hexdigest()
    got = ident(root)
    assert got.fingerprint == expected and got.source == "machine-id"
    assert len(got.fingerprint) == 64 and got.fingerprint == got.fingerprint.lower()
    assert "0123456789abcdef" not in repr(got)


def test_order_dmi_then_machine_id_then_device_tree(tmp_path: Path) -> None:
    root = make_root(
        tmp_path,
        dmi="4C4C4544-0042-3510-8052-B4C04F4E4432\n",
        machine_id="0123456789abcdef0123456789abcdef\n",
        dt="SN-1234\0",
    )
    assert ident(root).source == "dmi"
    (root / "sys/class/dmi/id/product_uuid").write_text("00000000-0000-0000-0000-000000000000\n")
    assert ident(root).source == "machine-id"
    (root / "sys/class/dmi/id/product_uuid").write_text("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF\n")
    (root / "etc/machine-id").write_text("uninitialized\n")
    assert ident(root).source == "device-tree"
    (root / "etc/machine-id").write_text("")
    (root / "proc/device-tree/serial-number").write_text("\0")
    with pytest.raises(IdentityError):
        ident(root)


def test_hook_contract(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    hook = root / "usr/libexec/fieldpass/identity-hook"
    hook.parent.mkdir(parents=True)
    hook.write_text('#!/bin/sh\necho "model=x"\necho "id=BOARD-42"\n')
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    got = ident(root)
    assert got.source == "hook"
    hook.write_text('#!/bin/sh\necho "id=BOARD-42"\nexit 3\n')
    with pytest.raises(IdentityError):
        ident(root)  # a non-zero exit means: discard


def test_override_only_when_the_image_config_allows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_root(tmp_path, machine_id="0123456789abcdef0123456789abcdef\n")
    monkeypatch.setenv(identity.OVERRIDE_ENV, "container-7")
    assert ident(root).source == "machine-id"
    (root / "etc/fieldpass").mkdir(parents=True)
    (root / "etc/fieldpass/agent.toml").write_text("[identity]\nallow_override = true\n")
    assert ident(root).source == "override"
    assert ident(root).fingerprint != ""
    assert "container-7" not in repr(ident(root))
    assert os.environ[identity.OVERRIDE_ENV] == "container-7"
