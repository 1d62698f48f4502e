"""Generate the golden machine-file vectors in tests/vectors/machine_files.json.

Deterministic: fixed seeds, license key and nonces (Ed25519 signing is deterministic),
so running it again reproduces the checked-in file byte for byte
(tests/test_vectors.py checks that). Run: ``make vectors``.

Every vector names the device (fingerprint), license key and keyring it is opened
with; invalid vectors name the error class the device must raise.
"""

import json
import sys
from pathlib import Path

from agent.wire import cbor, sodium
from agent.wire.keys import Keyring, SigningKey
from agent.wire.license_key import encryption_key, license_id
from agent.wire.machine_file import (
    ALGORITHM,
    MAX_MACHINE_FILE_BYTES,
    SIGNATURE_CONTEXT,
    Binding,
    Claims,
    Entitlement,
    Envelope,
    Meter,
    _aad,
    seal_machine_file,
)

OUT = Path(__file__).with_name("machine_files.json")
HQ_KEY = SigningKey(bytes(range(32)))
OTHER_KEY = SigningKey(bytes(range(32, 64)))
LICENSE_KEY = "FP-ABCDE-FGHJK-LMNPQ-RSTUV-WXYZ2"
FINGERPRINT = sodium.sha256(b"vector device").hex()
OTHER_FINGERPRINT = sodium.sha256(b"another device").hex()
NONCE = bytes(range(100, 124))
T0 = 1_800_000_000


def claims(**changes: object) -> Claims:
    base: dict[str, object] = {
        "license_id": license_id(LICENSE_KEY),
        "product": "robot-os",
        "plan": "industrial",
        "activation_id": "act_0001",
        "fingerprint": FINGERPRINT,
        "issued_at": T0,
        "not_before": T0,
        "expires_at": T0 + 365 * 86400,
        "grace_s": 30 * 86400,
        "warn_s": 90 * 86400,
        "serial": 1,
        "kid": HQ_KEY.kid,
        "license_expires_at": None,
        "entitlements": (Entitlement("navigation"), Entitlement("arm", T0 + 180 * 86400)),
    }
    base.update(changes)
    return Claims(**base)  # type: ignore[arg-type]


def claims_v2(**changes: object) -> Claims:
    """Version 2: the device's key, an answer bound to a TPM counter and a nonce, the
    plan's usage counters and a metered entitlement."""
    return claims(
        version=2,
        device_key=bytes(range(200, 232)),
        binding=Binding(counter=41, nonce="request-nonce-1", report_seq=3, usage={"hours": 120}),
        counters=("hours", "units"),
        meters=(Meter("navigation", "hours", 2000, T0, T0 + 365 * 86400, 100),),
        **changes,
    )


def jsonable(value: object) -> object:
    """Claims as the vectors file holds them: byte strings as hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def raw_envelope(doc: dict[str, object]) -> bytes:
    return cbor.dumps(doc)


def signed_envelope(claims_doc: dict[str, object], fingerprint: str = FINGERPRINT) -> bytes:
    """Encrypt and sign an arbitrary claims map (to build claims HQ would never send)."""
    key = encryption_key(LICENSE_KEY, fingerprint)
    enc = NONCE + sodium.aead_encrypt(key, NONCE, cbor.dumps(claims_doc), _aad(HQ_KEY.kid))
    sig = HQ_KEY.sign(SIGNATURE_CONTEXT + enc)
    return Envelope(HQ_KEY.kid, enc, sig).to_bytes()


def envelope_doc(data: bytes) -> dict[str, object]:
    doc = cbor.loads(data)
    assert isinstance(doc, dict)
    return doc


def build() -> dict[str, object]:
    good = seal_machine_file(claims(), LICENSE_KEY, HQ_KEY, nonce=NONCE)
    good_doc = envelope_doc(good)
    valid = [
        {"name": "basic", "file": good, "claims": claims().to_dict()},
        {
            "name": "license-expiry-and-serial-7",
            "file": seal_machine_file(
                claims(serial=7, license_expires_at=T0 + 200 * 86400, entitlements=()),
                LICENSE_KEY,
                HQ_KEY,
                nonce=NONCE,
            ),
            "claims": claims(
                serial=7, license_expires_at=T0 + 200 * 86400, entitlements=()
            ).to_dict(),
        },
        {
            "name": "version-2-bound-with-device-key",
            "file": seal_machine_file(claims_v2(serial=2), LICENSE_KEY, HQ_KEY, nonce=NONCE),
            "claims": claims_v2(serial=2).to_dict(),
        },
    ]
    v2_doc = claims_v2().to_dict()
    flipped_sig = bytearray(good_doc["sig"])  # type: ignore[arg-type]
    flipped_sig[0] ^= 1
    flipped_enc = bytearray(good_doc["enc"])  # type: ignore[arg-type]
    flipped_enc[-1] ^= 0x80
    wrong_fp_claims = claims().to_dict()
    wrong_fp_claims["fingerprint"] = OTHER_FINGERPRINT
    extra_claim = claims().to_dict()
    extra_claim["debug"] = True
    dup = good[:1] + b"\x63alg" + cbor.dumps(ALGORITHM) + good[1:]
    dup = bytes([0xA6]) + dup[1:]
    invalid = [
        ("bad-signature", raw_envelope({**good_doc, "sig": bytes(flipped_sig)}), "SignatureError"),
        ("edited-payload", raw_envelope({**good_doc, "enc": bytes(flipped_enc)}), "SignatureError"),
        (
            "unknown-key",
            seal_machine_file(claims(kid=OTHER_KEY.kid), LICENSE_KEY, OTHER_KEY, nonce=NONCE),
            "UnknownKeyError",
        ),
        (
            "kid-swapped-to-trusted",
            raw_envelope(
                {
                    **envelope_doc(
                        seal_machine_file(
                            claims(kid=OTHER_KEY.kid), LICENSE_KEY, OTHER_KEY, nonce=NONCE
                        )
                    ),
                    "kid": HQ_KEY.kid,
                }
            ),
            "SignatureError",
        ),
        (
            "other-device",
            seal_machine_file(
                claims(fingerprint=OTHER_FINGERPRINT), LICENSE_KEY, HQ_KEY, nonce=NONCE
            ),
            "DecryptError",
        ),
        (
            "fingerprint-claim-mismatch",
            signed_envelope(wrong_fp_claims),
            "ClaimMismatchError",
        ),
        ("unknown-claim", signed_envelope(extra_claim), "FormatError"),
        (
            "claims-version-true",
            signed_envelope({**claims().to_dict(), "v": True}),
            "UnsupportedVersionError",
        ),
        ("claims-version-3", signed_envelope({**v2_doc, "v": 3}), "UnsupportedVersionError"),
        (
            "v1-claims-with-a-device-key",
            signed_envelope({**claims().to_dict(), "device_key": bytes(32)}),
            "FormatError",
        ),
        (
            "expiry-after-9999",
            signed_envelope({**claims().to_dict(), "expires_at": 253_402_300_800}),
            "FormatError",
        ),
        ("serial-true", signed_envelope({**claims().to_dict(), "serial": True}), "FormatError"),
        (
            "binding-counter-true",
            signed_envelope(
                {**v2_doc, "binding": {**v2_doc["binding"], "counter": True}}  # type: ignore[dict-item]
            ),
            "FormatError",
        ),
        ("version-2", raw_envelope({**good_doc, "v": 2}), "UnsupportedVersionError"),
        ("unknown-algorithm", raw_envelope({**good_doc, "alg": "rsa"}), "UnsupportedVersionError"),
        ("extra-envelope-field", raw_envelope({**good_doc, "x": 1}), "FormatError"),
        ("duplicate-key", dup, "FormatError"),
        ("trailing-byte", good + b"\x00", "FormatError"),
        ("truncated", good[:-1], "FormatError"),
        ("empty", b"", "FormatError"),
        ("not-a-map", cbor.dumps([1, 2, 3]), "FormatError"),
        ("tagged", b"\xc0" + good, "FormatError"),
        ("oversized", bytes(MAX_MACHINE_FILE_BYTES + 1), "FormatError"),
        ("short-signature", raw_envelope({**good_doc, "sig": b"\x00" * 63}), "FormatError"),
    ]
    return {
        "comment": "Generated by tests/vectors/generate.py; see docs/wire-format.md",
        "keyring": Keyring.of(HQ_KEY.public_key).dumps(),
        "license_key": LICENSE_KEY,
        "fingerprint": FINGERPRINT,
        "valid": [
            {**v, "file": bytes(v["file"]).hex(), "claims": jsonable(v["claims"])}  # type: ignore[call-overload]
            for v in valid
        ],
        "invalid": [{"name": n, "file": f.hex(), "error": e} for n, f, e in invalid],
    }


def render() -> str:
    return json.dumps(build(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    sys.stdout.write(f"wrote {OUT}\n")
