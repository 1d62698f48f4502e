"""The machine file: claims signed by HQ and encrypted to one device.

Envelope (canonical CBOR map, exactly these keys)::

    {"v": 1, "alg": "ed25519+xchacha20poly1305", "kid": KEY-ID,
     "enc": NONCE(24) || XChaCha20-Poly1305(claims) , "sig": Ed25519(b"machine/" || enc)}

Order of checks in ``open_machine_file`` (never reordered): size cap, strict envelope
parse, known version and algorithm, key id in the keyring, signature over the exact
bytes of ``enc``; only then decryption with SHA-256(license_key || fingerprint), strict
claims parse, and the claims checked against this device, license and key id.
docs/wire-format.md specifies every byte.
"""

from . import cbor, sodium
from .errors import (
    ClaimMismatchError,
    DecryptError,
    FormatError,
    SignatureError,
    UnknownKeyError,
    UnsupportedVersionError,
)
from .keys import Keyring, SigningKey
from .license_key import encryption_key, is_fingerprint, license_id

FORMAT_VERSION = 1
ALGORITHM = "ed25519+xchacha20poly1305"
SIGNATURE_CONTEXT = b"machine/"
AAD_CONTEXT = b"fieldpass/machine/v1/"
MAX_MACHINE_FILE_BYTES = 16 * 1024
MAX_CLAIMS_BYTES = 12 * 1024
_ENVELOPE_KEYS = frozenset({"v", "alg", "kid", "enc", "sig"})
_MAX_TEXT = 200


class Entitlement:
    """A feature flag, with an optional expiry of its own (Unix seconds)."""

    __slots__ = ("expires_at", "feature")

    def __init__(self, feature: str, expires_at: int | None = None) -> None:
        self.feature = feature
        self.expires_at = expires_at

    def active_at(self, now: int) -> bool:
        return self.expires_at is None or now < self.expires_at

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entitlement) and (other.feature, other.expires_at) == (
            self.feature,
            self.expires_at,
        )

    def __repr__(self) -> str:
        return f"Entitlement({self.feature!r}, {self.expires_at!r})"

    __hash__ = None  # type: ignore[assignment]


_TEXT_CLAIMS = ("license_id", "product", "plan", "activation_id", "kid")
_INT_CLAIMS = ("issued_at", "not_before", "expires_at", "grace_s", "warn_s", "serial")
CLAIM_NAMES = frozenset(
    (*_TEXT_CLAIMS, *_INT_CLAIMS, "fingerprint", "license_expires_at", "entitlements")
)


class Claims:
    """What HQ asserts about one activation. Times are Unix seconds (UTC).

    Plain slotted class, not a dataclass: ``dataclasses`` costs the boot gate 20 ms of
    imports. Invariants are checked in the constructor, as python-tuf's model does.
    """

    __slots__ = (
        "activation_id",
        "entitlements",
        "expires_at",
        "fingerprint",
        "grace_s",
        "issued_at",
        "kid",
        "license_expires_at",
        "license_id",
        "not_before",
        "plan",
        "product",
        "serial",
        "warn_s",
    )

    def __init__(
        self,
        *,
        license_id: str,
        product: str,
        plan: str,
        activation_id: str,
        fingerprint: str,
        issued_at: int,
        not_before: int,
        expires_at: int,
        grace_s: int,
        warn_s: int,
        serial: int,
        kid: str,
        license_expires_at: int | None = None,
        entitlements: tuple[Entitlement, ...] = (),
    ) -> None:
        self.license_id = license_id
        self.product = product
        self.plan = plan
        self.activation_id = activation_id
        self.fingerprint = fingerprint
        self.issued_at = issued_at
        self.not_before = not_before
        self.expires_at = expires_at
        self.grace_s = grace_s
        self.warn_s = warn_s
        self.serial = serial
        self.kid = kid
        self.license_expires_at = license_expires_at
        self.entitlements = tuple(entitlements)
        self._check()

    def _check(self) -> None:
        for name in _TEXT_CLAIMS:
            value = getattr(self, name)
            if type(value) is not str or not 0 < len(value) <= _MAX_TEXT:
                raise FormatError(f"claim {name!r} must be a short non-empty text")
        for name in _INT_CLAIMS:
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value < 1 << 63:
                raise FormatError(f"claim {name!r} must be a non-negative integer")
        if self.license_expires_at is not None and type(self.license_expires_at) is not int:
            raise FormatError("claim 'license_expires_at' must be an integer or null")
        if not is_fingerprint(self.fingerprint):
            raise FormatError("claim 'fingerprint' must be 64 lowercase hex characters")
        if self.serial < 1:
            raise FormatError("claim 'serial' starts at 1")
        if not self.issued_at <= self.expires_at or not self.not_before <= self.expires_at:
            raise FormatError("claims expire before they were issued")
        if len(self.entitlements) > 64:
            raise FormatError("too many entitlements")
        for ent in self.entitlements:
            if type(ent.feature) is not str or not 0 < len(ent.feature) <= _MAX_TEXT:
                raise FormatError("an entitlement needs a short feature name")
            if ent.expires_at is not None and type(ent.expires_at) is not int:
                raise FormatError("an entitlement's expiry must be an integer or null")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Claims) and other.to_dict() == self.to_dict()

    def __repr__(self) -> str:
        return f"Claims(activation_id={self.activation_id!r}, serial={self.serial})"

    __hash__ = None  # type: ignore[assignment]

    @property
    def grace_ends_at(self) -> int:
        return self.expires_at + self.grace_s

    def to_dict(self) -> dict[str, object]:
        return {
            "v": FORMAT_VERSION,
            "license_id": self.license_id,
            "product": self.product,
            "plan": self.plan,
            "entitlements": [
                {"feature": e.feature, "expires_at": e.expires_at} for e in self.entitlements
            ],
            "activation_id": self.activation_id,
            "fingerprint": self.fingerprint,
            "issued_at": self.issued_at,
            "not_before": self.not_before,
            "expires_at": self.expires_at,
            "grace_s": self.grace_s,
            "warn_s": self.warn_s,
            "serial": self.serial,
            "license_expires_at": self.license_expires_at,
            "kid": self.kid,
        }

    @classmethod
    def from_dict(cls, d: object) -> "Claims":
        if not isinstance(d, dict):
            raise FormatError("claims are not a map")
        expected = CLAIM_NAMES | {"v"}
        if d.get("v") != FORMAT_VERSION:
            raise UnsupportedVersionError(f"claims version {d.get('v')!r} is not supported")
        if set(d) != expected:
            raise FormatError("claims have missing or unknown fields")
        raw_ents = d["entitlements"]
        if not isinstance(raw_ents, list):
            raise FormatError("entitlements must be a list")
        ents = []
        for item in raw_ents:
            if not isinstance(item, dict) or set(item) != {"feature", "expires_at"}:
                raise FormatError("an entitlement is a map of feature and expires_at")
            ents.append(Entitlement(item["feature"], item["expires_at"]))
        fields = {k: v for k, v in d.items() if k not in ("v", "entitlements")}
        return cls(entitlements=tuple(ents), **fields)


class Envelope:
    """The outer, signed layer of a machine file."""

    __slots__ = ("enc", "kid", "sig")

    def __init__(self, kid: str, enc: bytes, sig: bytes) -> None:
        self.kid = kid
        self.enc = enc
        self.sig = sig

    @classmethod
    def parse(cls, data: bytes) -> "Envelope":
        if len(data) > MAX_MACHINE_FILE_BYTES:
            raise FormatError(f"machine file larger than {MAX_MACHINE_FILE_BYTES} bytes")
        doc = cbor.loads(data, max_size=MAX_MACHINE_FILE_BYTES, max_depth=1)
        if not isinstance(doc, dict):
            raise FormatError("machine file is not a CBOR map")
        if doc.get("v") != FORMAT_VERSION:
            raise UnsupportedVersionError(f"machine file version {doc.get('v')!r} not supported")
        if set(doc) != _ENVELOPE_KEYS:
            raise FormatError("machine file envelope has missing or unknown fields")
        if doc["alg"] != ALGORITHM:
            raise UnsupportedVersionError(f"algorithm {doc['alg']!r} is not supported")
        kid, enc, sig = doc["kid"], doc["enc"], doc["sig"]
        if type(kid) is not str or not 0 < len(kid) <= _MAX_TEXT:
            raise FormatError("machine file key id is not a short text")
        if type(enc) is not bytes or len(enc) < sodium.AEAD_NONCE_BYTES + sodium.AEAD_TAG_BYTES:
            raise FormatError("machine file payload is missing or too short")
        if type(sig) is not bytes or len(sig) != sodium.SIGNATURE_BYTES:
            raise FormatError("machine file signature is not 64 bytes")
        return cls(kid, enc, sig)

    def to_bytes(self) -> bytes:
        return cbor.dumps(
            {
                "v": FORMAT_VERSION,
                "alg": ALGORITHM,
                "kid": self.kid,
                "enc": self.enc,
                "sig": self.sig,
            }
        )


def _aad(kid: str) -> bytes:
    return AAD_CONTEXT + kid.encode("utf-8")


def seal_machine_file(
    claims: Claims, license_key: str, signing_key: SigningKey, *, nonce: bytes | None = None
) -> bytes:
    """Encrypt ``claims`` to the device and sign the result (HQ side)."""
    if claims.kid != signing_key.kid:
        raise ValueError("claims name another key id than the signing key")
    if claims.license_id != license_id(license_key):
        raise ValueError("claims name another license than the license key")
    nonce = nonce if nonce is not None else sodium.random_bytes(sodium.AEAD_NONCE_BYTES)
    plaintext = cbor.dumps(claims.to_dict())
    key = encryption_key(license_key, claims.fingerprint)
    enc = nonce + sodium.aead_encrypt(key, nonce, plaintext, _aad(claims.kid))
    sig = signing_key.sign(SIGNATURE_CONTEXT + enc)
    return Envelope(claims.kid, enc, sig).to_bytes()


def verify_envelope(data: bytes, keyring: Keyring) -> Envelope:
    """Strict parse and signature check; nothing inside is read before this passes."""
    envelope = Envelope.parse(data)
    public_key = keyring.get(envelope.kid)
    if public_key is None:
        raise UnknownKeyError(f"signed by key {envelope.kid}, which this device does not trust")
    if not sodium.ed25519_verify(public_key, envelope.sig, SIGNATURE_CONTEXT + envelope.enc):
        raise SignatureError("machine file signature does not verify: it was altered or forged")
    return envelope


def open_machine_file(data: bytes, keyring: Keyring, license_key: str, fingerprint: str) -> Claims:
    """Verify, decrypt and check a machine file for this device; raise a WireError."""
    envelope = verify_envelope(data, keyring)
    nonce, ciphertext = (
        envelope.enc[: sodium.AEAD_NONCE_BYTES],
        envelope.enc[sodium.AEAD_NONCE_BYTES :],
    )
    plaintext = sodium.aead_decrypt(
        encryption_key(license_key, fingerprint), nonce, ciphertext, _aad(envelope.kid)
    )
    if plaintext is None:
        raise DecryptError("machine file does not decrypt here: issued for another device or key")
    claims = Claims.from_dict(cbor.loads(plaintext, max_size=MAX_CLAIMS_BYTES, max_depth=3))
    if claims.fingerprint != fingerprint:
        raise ClaimMismatchError("machine file names another device")
    if claims.kid != envelope.kid:
        raise ClaimMismatchError("machine file claims another signing key than its envelope")
    if claims.license_id != license_id(license_key):
        raise ClaimMismatchError("machine file names another license")
    return claims
