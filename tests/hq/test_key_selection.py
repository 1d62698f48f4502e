"""Per-device signing keys during a rotation, against a real ``fieldpass-hq serve`` (on
each engine) and the real ``fieldpass``: a device names its keyring's key ids in its
signed requests, HQ records them and signs what it sends that device with a key it
trusts (provisioning/services/keys.py ``choose_kid``; docs/hq.md, "Which key signs for
a device"). The pure rule is checked on its own too, for every combination.
"""

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.wire import cbor, device_msg
from agent.wire.errors import FormatError
from provisioning.models import KeyInfo
from provisioning.services.keys import choose_kid
from tests.conftest import HQ, DeviceRoot
from tests.hq.server import Server, start_server


@pytest.fixture
def hqc(tmp_path: Path, hq_engine: Any) -> HQ:
    hq = HQ(tmp_path / "hq-home")
    hq_engine.configure(hq.home)
    return hq


@pytest.fixture
def server(hqc: HQ) -> Iterator[Server]:
    hqc.setup(seats=10)
    s = start_server(hqc.home)
    yield s
    s.stop()


def signer_of(device: DeviceRoot) -> str:
    """The key id in the envelope of the machine file the device holds."""
    envelope = cbor.loads(device.machine_file.read_bytes(), max_size=16384, max_depth=1)
    assert isinstance(envelope, dict)
    return str(envelope["kid"])


def online(hqc: HQ, device: DeviceRoot, url: str, key: str) -> None:
    device.write_config(f'[online]\nserver = "{url}"\n')
    done = device.run("activate", key, "--server", url)
    assert done.returncode == 0, done.stderr
    assert device.check().returncode == 0


def console_reported(hqc: HQ, server: Server) -> dict[str, str]:
    """Key id -> its "Reported by" cell on the console's Keys page (a real session)."""
    import re

    import httpx

    from tests.hq.test_console_http import login

    token = hqc.run("tokens", "create", "console").stdout.strip()
    with httpx.Client(base_url=server.url, timeout=30, follow_redirects=False) as c:
        assert login(c, token).status_code == 303
        page = c.get("/console/keys")
    assert page.status_code == 200
    rows = re.findall(r'data-kid="(fpk_[0-9a-f]{16})".*?class="reported">([^<]*)<', page.text, re.S)
    return dict(rows)


def keys_by_kid(hqc: HQ) -> dict[str, dict[str, Any]]:
    listed: Any = hqc.json("keys", "list")
    return {k["kid"]: k for k in listed}


def test_each_device_gets_files_from_a_key_its_keyring_holds(
    hqc: HQ, server: Server, make_device: Callable[..., DeviceRoot]
) -> None:
    key = str(hqc.json("licenses", "create", "--plan", "industrial")["key"])
    (old,) = keys_by_kid(hqc)
    only_old, both = make_device("a" * 32), make_device("b" * 32)
    hqc.image(only_old)  # an image built before the rotation
    new = str(hqc.json("keys", "generate", "--standby")["kid"])
    hqc.image(both)  # an image built after phase 1: [old, new]
    online(hqc, only_old, server.url, key)
    online(hqc, both, server.url, key)
    assert signer_of(only_old) == old and signer_of(both) == old  # old is active

    hqc.run("keys", "activate", new)  # phase 2, before the rollout ends
    for device in (only_old, both):
        assert device.run("refresh").returncode == 0
        assert device.check().returncode == 0
    assert signer_of(both) == new
    assert signer_of(only_old) == old  # still a file it can install
    # and a device activated after the switch, either way
    late_both, late_old = make_device("c" * 32), make_device("d" * 32)
    hqc.image(late_both)
    late_old.trust(only_old.path.joinpath("etc/fieldpass/keyring").read_text())
    online(hqc, late_both, server.url, key)
    online(hqc, late_old, server.url, key)
    assert signer_of(late_both) == new and signer_of(late_old) == old
    # its online check is answered with a key it trusts too
    for device in (only_old, both, late_old):
        assert device.run("check", "--online").returncode == 0

    listed = keys_by_kid(hqc)
    assert listed[old]["reported_by"] == 4 and listed[new]["reported_by"] == 2
    assert "REPORTED" in hqc.run("keys", "list").stdout
    acts: Any = hqc.json("activations", "list")
    assert sorted(len(a["keyring"]) for a in acts) == [1, 1, 2, 2]
    assert console_reported(hqc, server) == {old: "4 device(s)", new: "2 device(s)"}

    # Two live devices trust only the old key: HQ refuses to retire it, says so, and
    # changes nothing; --force is the operator's decision (a leaked key), audited.
    refused = hqc.run("keys", "retire", old, check=False)
    assert refused.returncode == 1
    assert f"2 live device(s) trust no other key than {old}" in refused.stderr
    assert keys_by_kid(hqc)[old]["retired_at"] is None
    hqc.run("keys", "retire", old, "--force")
    audit: Any = hqc.json("audit")
    retired = [e for e in audit if e["action"] == "key_retire"]
    assert [e["detail"] for e in retired] == [f"kid={old} forced stranded=2"]
    # A retired key is never chosen: the device that trusts only it gets the active
    # key's file, refuses it (exit 31 on install) and keeps the file it holds.
    assert only_old.run("refresh").returncode != 0
    assert signer_of(only_old) == old and only_old.check().returncode == 0
    assert both.run("refresh").returncode == 0 and signer_of(both) == new


def test_a_device_that_reports_no_keyring_gets_the_active_key(
    hqc: HQ, server: Server, make_device: Callable[..., DeviceRoot]
) -> None:
    """A keyring of more than 16 keys is not sent (as an agent of 0.1.0 sends none):
    HQ answers with the active key, as before."""
    from agent.wire.keys import Keyring, SigningKey

    key = str(hqc.json("licenses", "create", "--plan", "industrial")["key"])
    new = str(hqc.json("keys", "generate", "--standby")["kid"])
    device = make_device("e" * 32)
    hqc.image(device)
    held = Keyring.loads(device.path.joinpath("etc/fieldpass/keyring").read_bytes()).keys
    extra = [SigningKey.generate().public_key for _ in range(device_msg.MAX_KEYRING_IDS)]
    device.trust(Keyring.of(*held.values(), *extra).dumps())
    hqc.run("keys", "activate", new)
    online(hqc, device, server.url, key)
    assert signer_of(device) == new
    acts: Any = hqc.json("activations", "list")
    assert acts[0]["keyring"] == []


def info(kid: str, created_at: int, *, active: bool = False, retired: bool = False) -> KeyInfo:
    return KeyInfo(kid, b"\0" * 32, created_at, active, 5 if retired else None)


def test_the_rule_for_every_keyring() -> None:
    a, b, c = "fpk_" + "a" * 16, "fpk_" + "b" * 16, "fpk_" + "c" * 16
    keys = [info(a, 1, retired=True), info(b, 2), info(c, 3, active=True)]
    unknown = "fpk_" + "d" * 16
    for n in range(4):
        for reported in itertools.permutations([a, b, c, unknown], n):
            chosen = choose_kid(keys, reported)
            if not reported or c in reported:
                assert chosen == c
            elif b in reported:
                assert chosen == b  # the newest reported one that is not retired
            else:
                assert chosen == c  # only retired or unknown keys: the active one
            assert chosen != a  # a retired key, never
    assert choose_kid([info(a, 1)], [a]) is None  # no active key, nothing to sign with


def test_the_keyring_field_is_strict_and_optional() -> None:
    from agent.wire.device_key import DeviceKey

    dk = DeviceKey.generate()
    body: dict[str, object] = {
        "activation_id": "act_1",
        "fingerprint": "0" * 64,
        "at": 1,
        "agent_version": "0.3.0",
        "nonce": "n",
        "challenge": "c",
    }
    kids = ["fpk_" + "0" * 16, "fpk_" + "1" * 16]
    lookup = {dk.kid: dk.public_key}.get
    with_ring = device_msg.open_message(
        device_msg.sign(dk, "validate", {**body, "keyring": kids}), lookup, "validate"
    )
    assert device_msg.keyring_of(with_ring) == tuple(kids)
    without = device_msg.open_message(device_msg.sign(dk, "validate", body), lookup, "validate")
    assert device_msg.keyring_of(without) is None  # what agents of 0.1.0 and others send
    for bad in (
        [],
        ["fpk_" + "0" * 15],
        ["fpk_" + "G" * 16],
        ["fpd_" + "0" * 16],
        [kids[0], kids[0]],
        [f"fpk_{i:016x}" for i in range(device_msg.MAX_KEYRING_IDS + 1)],
        "fpk_" + "0" * 16,
        [[kids[0]]],
    ):
        with pytest.raises(FormatError):
            device_msg.sign(dk, "validate", {**body, "keyring": bad})
    with pytest.raises(FormatError):  # only the types that may carry it
        device_msg.sign(dk, "deactivate", {**body, "keyring": kids})


def test_a_keyring_that_would_make_a_message_too_large_is_left_out() -> None:
    from agent.wire.device_key import DeviceKey

    dk = DeviceKey.generate()
    kids = [f"fpk_{i:016x}" for i in range(device_msg.MAX_KEYRING_IDS)]
    status: dict[str, object] = {
        "activation_id": "act_" + "0" * 20,
        "fingerprint": "0" * 64,
        "at": 1,
        "agent_version": "0.3.0",
        "verdict": "valid",
        "reason": "",
        "serial": 1,
        "expires_at": 1,
        "revoked": "",
        "revoked_at": 0,
        "lifted_at": 0,
        "hwm": 1,
        "unrecorded_boots": 0,
        "notes": ["n" * device_msg.MAX_NOTE_CHARS] * device_msg.MAX_NOTES,
        "bad_messages": {},
        "challenge": None,
        "device_key": None,
        "proof": None,
    }
    data = device_msg.sign(dk, "status", {**status, "keyring": kids})
    assert len(data) <= device_msg.MAX_MESSAGE_BYTES
    opened = device_msg.open_message(data, {dk.kid: dk.public_key}.get, "status")
    assert device_msg.keyring_of(opened) is None
    small = device_msg.sign(dk, "status", {**status, "notes": [], "keyring": kids})
    opened = device_msg.open_message(small, {dk.kid: dk.public_key}.get, "status")
    assert device_msg.keyring_of(opened) == tuple(kids)
