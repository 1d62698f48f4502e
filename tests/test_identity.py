"""Fingerprint sources, their order and refusals; the raw id never leaves the device."""

import hashlib
import hmac
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import identity
from agent.config import IDENTITY_SOURCES, ConfigError, load
from agent.identity import FINGERPRINT_APP_ID, IdentityError, read_identity
from tests.conftest import FIELDPASS, DeviceRoot, Signer, clean_env


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


def write_config(root: Path, text: str) -> None:
    (root / "etc/fieldpass").mkdir(parents=True, exist_ok=True)
    (root / "etc/fieldpass/agent.toml").write_text(text)


def test_the_image_chooses_the_sources_and_their_order(tmp_path: Path) -> None:
    root = make_root(
        tmp_path,
        dmi="4C4C4544-0042-3510-8052-B4C04F4E4432\n",
        machine_id="0123456789abcdef0123456789abcdef\n",
        dt="SN-1234\0",
    )
    write_config(root, '[identity]\nsources = ["device-tree", "dmi"]\n')
    assert ident(root).source == "device-tree"
    write_config(root, '[identity]\nsources = ["hook", "dmi"]\n')
    assert ident(root).source == "dmi"  # no hook installed: the next source
    # A source left out is never used, even when it is the only one with an id.
    (root / "sys/class/dmi/id/product_uuid").write_text("")
    with pytest.raises(IdentityError, match=r"none of the identity sources \(hook, dmi\)"):
        ident(root)


@pytest.mark.parametrize(
    "value",
    ["[]", '["dmi", "dmi"]', '["override"]', '["serial"]', '"dmi"', "[1]"],
)
def test_bad_sources_are_a_config_error(tmp_path: Path, value: str) -> None:
    write_config(tmp_path, f"[identity]\nsources = {value}\n")
    with pytest.raises(ConfigError, match="sources"):
        load(str(tmp_path))


def test_the_shipped_agent_toml_lists_the_default_sources() -> None:
    shipped = Path(__file__).resolve().parents[1] / "firmware-hooks/config/agent.toml"
    cfg = load("", str(shipped))
    assert cfg.identity_sources == IDENTITY_SOURCES


def test_candidates_are_every_source_with_an_id_but_a_refused_one(tmp_path: Path) -> None:
    root = make_root(tmp_path, machine_id="0123456789abcdef0123456789abcdef\n", dt="SN-1\0")
    write_config(root, '[identity]\nsources = ["device-tree"]\n')
    found = identity.candidates(load(str(root)))
    assert [c.source for c in found] == ["machine-id", "device-tree"]  # listed or not
    assert ident(root).source == "device-tree"


def run_with_mount(root: Path, mount: str) -> subprocess.CompletedProcess[str]:
    """`fieldpass --root ROOT fingerprint` in a private mount namespace after ``mount``
    (shell commands, as root): the mounts a booted device has, on a staged root."""
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-ec",
            f'{mount}\nexec "{FIELDPASS}" --root "{root}" fingerprint',
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root (CI runs as root)")


@needs_root
def test_a_transient_machine_id_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    """What systemd does on a read-only root with an empty /etc/machine-id: a random id
    in a tmpfs file bind-mounted over it, new at every boot."""
    root = make_root(tmp_path / "root", machine_id="", dt="SN-1234\0")
    run = tmp_path / "run"
    run.mkdir()
    transient = (
        f'mount -t tmpfs tmpfs "{run}"\n'
        f'echo 0123456789abcdef0123456789abcdef > "{run}/machine-id"\n'
        f'mount --bind "{run}/machine-id" "{root}/etc/machine-id"'
    )
    write_config(root, '[identity]\nsources = ["machine-id"]\n')
    refused = run_with_mount(root, transient)
    assert refused.returncode == 78, refused.stdout + refused.stderr
    assert "machine-id refused: /etc/machine-id is transient (tmpfs mounted over it" in (
        refused.stderr
    )
    assert "0123456789abcdef" not in refused.stdout + refused.stderr
    # With another source after it, that source identifies the device.
    write_config(root, '[identity]\nsources = ["machine-id", "device-tree"]\n')
    fallback = run_with_mount(root, transient)
    assert fallback.returncode == 0, fallback.stderr
    assert "fingerprint source: device-tree" in fallback.stderr


@needs_root
def test_a_machine_id_bound_from_the_data_partition_is_not_transient(tmp_path: Path) -> None:
    """fieldpass-machine-id bind-mounts the id kept on the data partition (not a tmpfs)."""
    root = make_root(tmp_path / "root", machine_id="")
    kept = tmp_path / "data/machine-id"
    kept.parent.mkdir()
    kept.write_text("0123456789abcdef0123456789abcdef\n")
    write_config(root, '[identity]\nsources = ["machine-id"]\n')
    result = run_with_mount(root, f'mount --bind "{kept}" "{root}/etc/machine-id"')
    assert result.returncode == 0, result.stderr
    expected = identity.Identity("0123456789abcdef0123456789abcdef", "machine-id")
    assert result.stdout.strip() == expected.fingerprint


def test_an_update_that_reorders_the_sources_says_so(
    make_device: Callable[..., DeviceRoot], signer: Signer
) -> None:
    """Activated with its machine-id; a new image reads the device-tree serial first: the
    gate refuses (31) and says the identity source changed, with what to do."""
    device = make_device()
    signer.provision(device)
    assert device.check().returncode == 0
    dt = device.path / "proc/device-tree/serial-number"
    dt.parent.mkdir(parents=True)
    dt.write_bytes(b"SN-1234\0")
    device.write_config('[identity]\nsources = ["device-tree", "machine-id"]\n')
    result = device.check()
    assert result.returncode == 31
    out = result.stdout + result.stderr
    assert "the identity source changed: this device was activated with its machine-id" in out
    assert "[identity] sources in agent.toml" in out
    device.write_config('[identity]\nsources = ["machine-id", "device-tree"]\n')
    assert device.check().returncode == 0
