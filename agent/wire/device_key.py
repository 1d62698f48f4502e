"""The device's own key: an Ed25519 key pair the device creates, whose private half never
leaves its data directory and whose public half HQ records with the activation and names
in the machine file (claims version 2), so HQ's signature vouches for it.

It is the one device credential: requests after activation, the signed status a device
reports, usage reports and return receipts are signed with it. Key id::

    kid = "fpd_" + hex(SHA-256("fieldpass/device-key-id\\0" || public_key))[:16]

On disk (``device.key`` in the state directory, mode 0600) it is the canonical CBOR map
``{"v": 1, "seed": bytes(32)}``. Pure: the file is read and written by the device.

A device whose activation HQ recorded without a key (factory provisioning by fingerprint,
an agent of 0.1.0) registers one with its next renewal: the request is signed by the new
key and carries ``proof = HMAC-SHA256(SHA-256("fieldpass/device-key-proof\\0" ||
license_key), PROOF_CONTEXT || public_key || activation_id || challenge)``, which shows
HQ that the device holds the license key without sending it.
"""

from . import cbor, fields, sodium
from .errors import FormatError

FILE_VERSION = 1
MAX_FILE_BYTES = 128
PROOF_CONTEXT = b"fieldpass/device-key-proof/v1\0"


def key_id(public_key: bytes) -> str:
    return "fpd_" + sodium.sha256(b"fieldpass/device-key-id\0" + public_key)[:8].hex()


class DeviceKey:
    """The device's Ed25519 key. ``repr`` never shows the seed."""

    __slots__ = ("_secret", "kid", "public_key", "seed")

    def __init__(self, seed: bytes) -> None:
        if type(seed) is not bytes or len(seed) != sodium.SEED_BYTES:
            raise FormatError("a device key seed is 32 bytes")
        self.seed = seed
        self.public_key, self._secret = sodium.ed25519_keypair_from_seed(seed)
        self.kid = key_id(self.public_key)

    def __repr__(self) -> str:
        return f"DeviceKey(kid={self.kid})"

    @classmethod
    def generate(cls) -> "DeviceKey":
        return cls(sodium.random_bytes(sodium.SEED_BYTES))

    def sign(self, message: bytes) -> bytes:
        return sodium.ed25519_sign(self._secret, message)

    def dumps(self) -> bytes:
        return cbor.dumps({"v": FILE_VERSION, "seed": self.seed})

    @classmethod
    def loads(cls, data: bytes) -> "DeviceKey":
        doc = cbor.loads(data, max_size=MAX_FILE_BYTES, max_depth=1)
        fields.exact_keys(doc, frozenset({"v", "seed"}), "the device key file")
        assert isinstance(doc, dict)
        if not fields.is_version(doc["v"], FILE_VERSION):
            raise FormatError("the device key file has an unknown version")
        return cls(fields.blob(doc["seed"], "the device key seed", sodium.SEED_BYTES))


def proof_key(license_key: str) -> bytes:
    return sodium.sha256(b"fieldpass/device-key-proof\0" + license_key.encode("ascii"))


def key_proof(license_key: str, public_key: bytes, activation_id: str, challenge: str) -> bytes:
    """Proof that whoever registers ``public_key`` for ``activation_id`` holds the license
    key (computed by the device, checked by HQ)."""
    message = PROOF_CONTEXT + public_key + activation_id.encode("utf-8") + b"\0"
    return sodium.hmac_sha256(proof_key(license_key), message + challenge.encode("utf-8"))


def check_key_proof(
    license_key: str, public_key: bytes, activation_id: str, challenge: str, proof: bytes
) -> bool:
    expected = key_proof(license_key, public_key, activation_id, challenge)
    return sodium.constant_time_equal(expected, proof)
