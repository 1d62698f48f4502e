"""The air-gapped request: written by the device, read by HQ, nothing secret in it.

Version 2 is a device message signed by the device's own key, which it carries; version
1 (agents up to 0.1.0, unsigned) is still read by HQ.
"""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.wire import armor, cbor, device_msg
from agent.wire.device_key import DeviceKey
from agent.wire.errors import FormatError, WireError
from agent.wire.request import Request, make_request
from tests.conftest import DeviceRoot, Signer

texts = st.text(max_size=100)
fingerprints = st.binary(min_size=32, max_size=32).map(bytes.hex)


@given(fingerprints, texts, st.integers(0, 1 << 40), texts, st.integers(0, 1 << 34))
@example("0" * 64, "", 0, "-----BEGIN ", 0)  # binary, a device named like armor
def test_version_1_still_reads(fp: str, act: str, serial: int, name: str, created: int) -> None:
    req = Request(fp, activation_id=act, serial=serial, device_name=name, created_at=created)
    for data in (
        req.to_bytes_v1(),
        armor.armor(req.to_bytes_v1(), armor.REQUEST).encode(),
        armor.armor(req.to_bytes_v1(), armor.REQUEST).replace("\n", "\r\n").encode(),
    ):
        back = Request.parse(data)
        assert not back.signed
        assert (back.fingerprint, back.activation_id, back.serial, back.device_name) == (
            fp,
            act,
            serial,
            name,
        )


@given(
    fingerprints,
    st.text(max_size=60),
    st.integers(0, 1 << 40),
    st.none() | st.integers(0, 1 << 40),
    st.booleans(),
)
def test_version_2_round_trip(
    fp: str, act: str, serial: int, counter: int | None, lost: bool
) -> None:
    key = DeviceKey(bytes(range(32)))
    text = make_request(
        key,
        fp,
        activation_id=act,
        serial=serial,
        device_name="robot-7",
        agent_version="0.2.0",
        created_at=1_800_000_000,
        counter=counter,
        nonce="nonce-1",
        lost=lost,
    )
    back = Request.parse(text.encode())
    assert back.signed and back.device_key == key.public_key
    assert (back.fingerprint, back.activation_id, back.serial) == (fp, act, serial)
    assert (back.counter, back.nonce, back.lost) == (counter, "nonce-1", lost)


def test_strict() -> None:
    good = Request("ab" * 32).to_bytes_v1()
    doc = cbor.loads(good)
    assert isinstance(doc, dict)
    for bad in (
        cbor.dumps({**doc, "extra": 1}),
        cbor.dumps({**doc, "v": 3}),
        cbor.dumps({**doc, "v": True}),
        cbor.dumps({**doc, "serial": True}),
        cbor.dumps({**doc, "fingerprint": "xyz"}),
        good + b"\0",
        armor.armor(good, armor.MACHINE_FILE).encode(),
    ):
        with pytest.raises(FormatError):
            Request.parse(bad)


def test_version_2_is_refused_when_altered_or_signed_by_another_key() -> None:
    key, other = DeviceKey(bytes(32)), DeviceKey(bytes([1]) * 32)
    text = make_request(
        key,
        "ab" * 32,
        activation_id="act",
        serial=1,
        device_name="",
        agent_version="",
        created_at=1,
        counter=None,
        nonce="n",
        lost=False,
    )
    data = armor.unarmor(text, armor.REQUEST)
    for i in range(len(data) * 8):
        mutated = bytearray(data)
        mutated[i // 8] ^= 1 << (i % 8)
        with pytest.raises(WireError):
            Request.parse(bytes(mutated))
    # Signed by one key while carrying another's public half
    values = {
        "activation_id": "act",
        "fingerprint": "ab" * 32,
        "at": 1,
        "agent_version": "",
        "serial": 1,
        "device_key": key.public_key,
        "counter": None,
        "nonce": "n",
        "device_name": "",
        "lost": False,
        "formats": [1, 2],
    }
    forged = device_msg.sign(other, "request", values)
    with pytest.raises(WireError):
        Request.parse(forged)


def test_fieldpass_request_cli(device: DeviceRoot, signer: Signer) -> None:
    device.trust(signer.keyring)
    fresh = device.run("request")
    assert fresh.returncode == 0, fresh.stderr
    req = Request.parse(fresh.stdout.encode())
    assert req.signed and req.fingerprint == device.fingerprint
    assert req.activation_id == "" and req.serial == 0 and not req.lost
    assert "fieldpass-hq activate" in fresh.stderr and "--license-key-file" in fresh.stderr
    signer.provision(device, serial=3)
    out = device.path.parent / "req.txt"
    renew = device.run("request", "-o", str(out))
    assert renew.returncode == 0
    req = Request.parse(out.read_bytes())
    assert (req.activation_id, req.serial) == ("act_1", 3)
    text = out.read_text()
    assert signer.license_key not in text and device.machine_id not in text
    assert len(text.splitlines()) <= 14  # a screenful: a QR code or a paste, not a phone call
    # the device key stays on the device, its public half travels
    assert (device.state_dir / "device.key").stat().st_mode & 0o077 == 0
