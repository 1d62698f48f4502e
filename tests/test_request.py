"""The air-gapped request: written by the device, read by HQ, nothing secret in it."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.wire import armor, cbor
from agent.wire.errors import FormatError
from agent.wire.request import Request
from tests.conftest import DeviceRoot, Signer

texts = st.text(max_size=100)


@given(
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    texts,
    st.integers(0, 1 << 40),
    texts,
    st.integers(0, 1 << 40),
)
def test_round_trip(fp: str, act: str, serial: int, name: str, created: int) -> None:
    req = Request(fp, activation_id=act, serial=serial, device_name=name, created_at=created)
    for data in (
        req.to_bytes(),
        req.armored().encode(),
        req.armored().replace("\n", "\r\n").encode(),
    ):
        back = Request.parse(data)
        assert (back.fingerprint, back.activation_id, back.serial, back.device_name) == (
            fp,
            act,
            serial,
            name,
        )


def test_strict() -> None:
    good = Request("ab" * 32).to_bytes()
    doc = cbor.loads(good)
    assert isinstance(doc, dict)
    for bad in (
        cbor.dumps({**doc, "extra": 1}),
        cbor.dumps({**doc, "v": 2}),
        cbor.dumps({**doc, "fingerprint": "xyz"}),
        good + b"\0",
        armor.armor(good, armor.MACHINE_FILE).encode(),
    ):
        with pytest.raises(FormatError):
            Request.parse(bad)


def test_fieldpass_request_cli(device: DeviceRoot, signer: Signer) -> None:
    fresh = device.run("request")
    assert fresh.returncode == 0
    req = Request.parse(fresh.stdout.encode())
    assert req.fingerprint == device.fingerprint and req.activation_id == "" and req.serial == 0
    assert "fieldpass-hq activate" in fresh.stderr
    signer.provision(device, serial=3)
    out = device.path.parent / "req.txt"
    renew = device.run("request", "-o", str(out))
    assert renew.returncode == 0
    req = Request.parse(out.read_bytes())
    assert (req.activation_id, req.serial) == ("act_1", 3)
    text = out.read_text()
    assert signer.license_key not in text and device.machine_id not in text
    assert len(text.splitlines()) <= 7  # short enough to read over a phone
