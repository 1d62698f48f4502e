"""The machine file: sealed by HQ, opened only by its device; every alteration refused."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.wire import cbor, errors, sodium
from agent.wire.keys import Keyring, SigningKey
from agent.wire.license_key import generate, license_id, normalize
from agent.wire.machine_file import Claims, Entitlement, open_machine_file, seal_machine_file
from tests.vectors import generate as vectors

VECTORS = json.loads(Path(vectors.OUT).read_text())
KEYRING = Keyring.loads(VECTORS["keyring"].encode())


def test_vectors_file_is_what_the_generator_makes() -> None:
    assert vectors.render() == Path(vectors.OUT).read_text()


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vectors_open(vector: dict[str, object]) -> None:
    claims = open_machine_file(
        bytes.fromhex(str(vector["file"])), KEYRING, VECTORS["license_key"], VECTORS["fingerprint"]
    )
    assert vectors.jsonable(claims.to_dict()) == vector["claims"]


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors_refused_with_their_error(vector: dict[str, str]) -> None:
    with pytest.raises(errors.WireError) as caught:
        open_machine_file(
            bytes.fromhex(vector["file"]), KEYRING, VECTORS["license_key"], VECTORS["fingerprint"]
        )
    assert type(caught.value).__name__ == vector["error"]
    assert VECTORS["license_key"] not in str(caught.value)


GOOD = bytes.fromhex(VECTORS["valid"][0]["file"])


def test_every_single_bit_flip_is_refused() -> None:
    """All bit positions of a real machine file, not a sample."""
    for i in range(len(GOOD) * 8):
        mutated = bytearray(GOOD)
        mutated[i // 8] ^= 1 << (i % 8)
        with pytest.raises(errors.WireError):
            open_machine_file(
                bytes(mutated), KEYRING, VECTORS["license_key"], VECTORS["fingerprint"]
            )


def test_every_truncation_is_refused() -> None:
    for n in range(len(GOOD)):
        with pytest.raises(errors.WireError):
            open_machine_file(GOOD[:n], KEYRING, VECTORS["license_key"], VECTORS["fingerprint"])


@settings(max_examples=300)
@given(st.data())
def test_any_mutation_is_refused(data: st.DataObject) -> None:
    mutated = bytearray(GOOD)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(mutated) - (op != "insert")))
        if op == "set":
            mutated[pos] = data.draw(st.integers(0, 255).filter(lambda b, p=pos: b != mutated[p]))
        elif op == "insert":
            mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del mutated[pos]
    if bytes(mutated) == GOOD:
        return
    with pytest.raises(errors.WireError):
        open_machine_file(bytes(mutated), KEYRING, VECTORS["license_key"], VECTORS["fingerprint"])


def test_signature_checked_before_decryption() -> None:
    """A forged file for this very device fails on the signature, never on decryption:
    the payload of an unverified file is not even decrypted."""
    doc = cbor.loads(GOOD)
    assert isinstance(doc, dict)
    forged = cbor.dumps({**doc, "sig": bytes(64)})
    with pytest.raises(errors.SignatureError):
        open_machine_file(forged, KEYRING, VECTORS["license_key"], VECTORS["fingerprint"])


fingerprints = st.binary(min_size=32, max_size=32).map(lambda b: b.hex())
features = st.lists(
    st.builds(
        Entitlement,
        st.text(min_size=1, max_size=20),
        st.none() | st.integers(0, 253_402_300_799),
    ),
    max_size=5,
)


@settings(max_examples=60)
@given(
    fingerprint=fingerprints,
    issued_at=st.integers(0, 200_000_000_000),
    ttl=st.integers(0, 400 * 86400),
    serial=st.integers(1, 1 << 40),
    ents=features,
    license_expires_at=st.none() | st.integers(0, 200_000_000_000),
)
def test_round_trip(
    fingerprint: str,
    issued_at: int,
    ttl: int,
    serial: int,
    ents: list[Entitlement],
    license_expires_at: int | None,
) -> None:
    hq = vectors.HQ_KEY
    key = vectors.LICENSE_KEY
    claims = Claims(
        license_id=license_id(key),
        product="p",
        plan="plan",
        activation_id="act",
        fingerprint=fingerprint,
        issued_at=issued_at,
        not_before=issued_at,
        expires_at=issued_at + ttl,
        grace_s=0,
        warn_s=ttl // 3,
        serial=serial,
        kid=hq.kid,
        license_expires_at=license_expires_at,
        entitlements=tuple(ents),
    )
    sealed = seal_machine_file(claims, key, hq)
    assert open_machine_file(sealed, Keyring.of(hq.public_key), key, fingerprint) == claims
    other = sodium.sha256(fingerprint.encode()).hex()
    with pytest.raises(errors.DecryptError):
        open_machine_file(sealed, Keyring.of(hq.public_key), key, other)
    with pytest.raises(errors.DecryptError):
        open_machine_file(sealed, Keyring.of(hq.public_key), generate(), fingerprint)


def test_claims_invariants() -> None:
    base = Claims.from_dict(VECTORS["valid"][0]["claims"]).to_dict()
    assert base["v"] == 1
    for change in (
        {"serial": 0},
        {"expires_at": base["issued_at"] - 1},  # type: ignore[operator]
        {"fingerprint": "AB" * 32},
        {"product": ""},
        {"issued_at": True},
        {"serial": True},
        {"grace_s": -1},
        {"v": True},  # True == 1 in Python: never a version here
        # Times a device cannot print (after 9999-12-31) or that overflow with the grace
        {"expires_at": 253_402_300_800},
        {"license_expires_at": 1 << 62},
        {"grace_s": 253_402_300_799},
        {"device_key": None},  # a version-2 claim in a version-1 file
    ):
        with pytest.raises(errors.FormatError):
            Claims.from_dict({**base, **change})


def test_version_2_claims_round_trip_and_are_strict() -> None:
    from agent.wire.machine_file import Binding, Meter

    hq, key = vectors.HQ_KEY, vectors.LICENSE_KEY
    fp = VECTORS["fingerprint"]
    claims = Claims(
        **{
            k: v
            for k, v in Claims.from_dict(VECTORS["valid"][0]["claims"]).to_dict().items()
            if k not in ("v", "entitlements")
        },
        version=2,
        device_key=bytes(range(32)),
        binding=Binding(counter=7, nonce="n-1", report_seq=3, usage={"hours": 12}),
        counters=("hours", "units"),
        meters=(Meter("navigation", "hours", 2000, 0, 86400 * 365, 10),),
    )
    sealed = seal_machine_file(claims, key, hq)
    back = open_machine_file(sealed, Keyring.of(hq.public_key), key, fp)
    assert back == claims and back.binding is not None and back.binding.counter == 7
    doc = claims.to_dict()
    for change in (
        {"device_key": b"short"},
        {"binding": {"counter": True, "nonce": None, "report_seq": 0, "usage": {}}},
        {"binding": {"counter": 1, "nonce": None, "report_seq": 0}},
        {"counters": ["hours", "hours"]},
        {"counters": ["bad name"]},
        {
            "meters": [
                {
                    "feature": "x",
                    "counter": "h",
                    "limit": 1,
                    "period_start": 5,
                    "period_end": 5,
                    "base": 0,
                }
            ]
        },
        {"v": 3},
    ):
        with pytest.raises(errors.FormatError):
            Claims.from_dict({**doc, **change})
    v1 = {k: v for k, v in doc.items() if k not in ("device_key", "binding", "counters", "meters")}
    with pytest.raises(errors.FormatError):
        Claims.from_dict(v1)  # version 2 needs its claims


def test_license_keys() -> None:
    key = generate()
    assert normalize(f"  {key.lower()} ") == key
    assert license_id(key).startswith("lic_") and key not in license_id(key)
    for bad in ("", "FP-1", "XX-ABCDE-FGHJK-LMNPQ-RSTUV-WXYZ2", "FP-ABCDE-FGHJK-LMNPQ-RSTUV-WXYZ0"):
        with pytest.raises(ValueError):
            normalize(bad)


def test_keyring_refuses_mismatched_ids_and_junk() -> None:
    key = SigningKey(bytes(32))
    text = Keyring.of(key.public_key).dumps()
    assert Keyring.loads(text.replace("\n", "\r\n").encode()).get(key.kid) == key.public_key
    other = SigningKey(bytes([1]) * 32)
    with pytest.raises(errors.FormatError, match="does not match"):
        Keyring.loads(text.replace(key.kid, other.kid).encode())
    for junk in (b"", b"# only a comment\n", b"a b", b"\xff\xfe", b"fpk_x ed448 AAAA"):
        with pytest.raises(errors.FormatError):
            Keyring.loads(junk)
    assert "seed" not in repr(key) and key.seed.hex() not in repr(key)
