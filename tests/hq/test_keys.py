"""Signing keys (services/keys.py, cli/keys.py): a retired key signs nothing new, is
marked in `keys list`, stays in the exported keyring unless the operator leaves it out,
and a device given a keyring without it refuses what it signed (exit 31)."""

import sqlite3
from collections.abc import Callable
from pathlib import Path

from agent.wire import armor
from agent.wire.keys import Keyring
from agent.wire.machine_file import open_machine_file
from tests.conftest import HQ, DeviceRoot

from .conftest import Run, fingerprint


def test_a_retired_key_signs_nothing_new(hq: Run, license_key: str, home: Path) -> None:
    old = hq("keys", "list", "--json").json()[0]["kid"]
    refused = hq("keys", "retire", old)
    assert refused.code == 1 and "keys generate" in refused.err  # the active key stays
    new = hq("keys", "generate").out.strip()
    done = hq("keys", "retire", old, "--json")
    assert done.code == 0, done.err
    assert done.json()["retired_at"] is not None and done.json()["active"] is False
    assert hq("keys", "retire", old).code == 1  # once
    listed = {k["kid"]: k for k in hq("keys", "list", "--json").json()}
    assert listed[old]["retired_at"] is not None and listed[new]["retired_at"] is None
    table = hq("keys", "list").out
    assert "RETIRED" in table.splitlines()[0]
    row = next(line for line in table.splitlines() if line.startswith(old)).split()
    assert row[-2].endswith("Z") and row[-1] == "0"  # RETIRED, then REPORTED (no device)
    issued = hq("activate", license_key, "--fingerprint", fingerprint(1), "--json").json()
    assert issued["kid"] == new
    keyring = Keyring.loads(hq("keys", "export").out.encode())
    assert set(keyring.keys) == {old, new}  # devices keep trusting the old files
    claims = open_machine_file(
        armor.unarmor(issued["machine_file"], armor.MACHINE_FILE),
        keyring,
        license_key,
        fingerprint(1),
    )
    assert claims.kid == new
    assert any(e["action"] == "key_retire" for e in hq("audit", "--json").json())
    # even if the database said otherwise, a retired key is never chosen to sign
    conn = sqlite3.connect(home / "hq.sqlite3")
    with conn:
        conn.execute("UPDATE signing_keys SET active = (kid = ?)", (old,))
    conn.close()
    res = hq("activate", license_key, "--fingerprint", fingerprint(1))
    assert res.code == 78 and "keys generate" in res.err


def test_export_without_retired_keys_warns_and_devices_then_refuse_old_files(
    make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    hq = HQ(tmp_path / "hq-home")  # the installed fieldpass-hq, as a subprocess
    key = hq.setup()
    robot = make_device()
    hq.image(robot)
    out = tmp_path / "robot.machine"
    assert hq.activate(key, robot, out).returncode == 0
    (tmp_path / "key.txt").write_text(key + "\n")
    installed = robot.run("install", str(out), "--license-key-file", str(tmp_path / "key.txt"))
    assert installed.returncode == 0, installed.stderr
    old = hq.run("keys", "list").stdout.splitlines()[1].split()[0]
    new = hq.run("keys", "generate").stdout.strip()
    hq.run("keys", "retire", old)

    everything = hq.run("keys", "export")
    assert everything.stderr == "" and old in everything.stdout
    slim = hq.run("keys", "export", "--without-retired", "-o", str(tmp_path / "keyring"))
    assert f"left out retired key(s) {old}" in slim.stderr
    assert "stop trusting" in slim.stderr
    assert set(Keyring.loads((tmp_path / "keyring").read_bytes()).keys) == {new}
    doc = hq.json("keys", "export", "--without-retired")
    assert doc["left_out"] == [old] and doc["kids"] == [new]

    # what the warning says: the device's file, signed by the retired key, is refused
    robot.trust((tmp_path / "keyring").read_text())
    assert robot.check().returncode == 31
    # renewed with the active key, it is valid again under the slim keyring
    renewal = tmp_path / "renewal.machine"
    act = hq.json("licenses", "show", key)["activations"][0]["activation_id"]  # type: ignore[index]
    hq.run("machine-file", str(act), "-o", str(renewal))
    assert robot.run("install", str(renewal)).returncode == 0
    assert robot.check().returncode == 0
