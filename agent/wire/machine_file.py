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

from . import cbor, fields, sodium
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


class Binding:
    """What an answer from HQ is bound to (claims version 2): the device's TPM counter
    value and/or the nonce the device sent with its request, and the usage HQ last
    accepted from it (so a device restored from a loss resumes from HQ's figures)."""

    __slots__ = ("counter", "nonce", "report_seq", "usage")

    def __init__(
        self,
        counter: int | None = None,
        nonce: str | None = None,
        report_seq: int = 0,
        usage: dict[str, int] | None = None,
    ) -> None:
        self.counter = counter
        self.nonce = nonce
        self.report_seq = report_seq
        self.usage = dict(usage or {})

    def to_dict(self) -> dict[str, object]:
        return {
            "counter": self.counter,
            "nonce": self.nonce,
            "report_seq": self.report_seq,
            "usage": dict(self.usage),
        }

    @classmethod
    def from_dict(cls, d: object) -> "Binding":
        doc = fields.exact_keys(d, _BINDING_KEYS, "the claims' binding")
        counter = doc["counter"]
        usage = doc["usage"]
        if not isinstance(usage, dict) or len(usage) > MAX_COUNTERS:
            raise FormatError("the binding's usage must be a map of at most 64 counters")
        return cls(
            None if counter is None else fields.uint(counter, "the binding's counter"),
            fields.opt_text(doc["nonce"], "the binding's nonce", MAX_NONCE_CHARS),
            fields.uint(doc["report_seq"], "the binding's report_seq"),
            {fields.name(k, "a counter"): fields.uint(v, "a counter") for k, v in usage.items()},
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Binding) and other.to_dict() == self.to_dict()

    __hash__ = None  # type: ignore[assignment]


class Meter:
    """A metered entitlement (claims version 2): ``feature`` is exhausted once the
    device's ``counter`` has grown by ``limit`` since ``base`` within the period."""

    __slots__ = ("base", "counter", "feature", "limit", "period_end", "period_start")

    def __init__(
        self, feature: str, counter: str, limit: int, period_start: int, period_end: int, base: int
    ) -> None:
        self.feature = fields.name(feature, "a meter's feature")
        self.counter = fields.name(counter, "a meter's counter")
        self.limit = fields.uint(limit, "a meter's limit")
        self.period_start = fields.time_s(period_start, "a meter's period_start")
        self.period_end = fields.time_s(period_end, "a meter's period_end")
        self.base = fields.uint(base, "a meter's base")
        if self.period_end <= self.period_start:
            raise FormatError("a meter's period ends before it starts")

    def to_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in _METER_KEYS}

    @classmethod
    def from_dict(cls, d: object) -> "Meter":
        doc = fields.exact_keys(d, _METER_KEYS, "a meter")
        return cls(**doc)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Meter) and other.to_dict() == self.to_dict()

    __hash__ = None  # type: ignore[assignment]


MAX_COUNTERS = 64
MAX_NONCE_CHARS = 128
_BINDING_KEYS = frozenset({"counter", "nonce", "report_seq", "usage"})
_METER_KEYS = frozenset({"feature", "counter", "limit", "period_start", "period_end", "base"})
_TEXT_CLAIMS = ("license_id", "product", "plan", "activation_id", "kid")
_TIME_CLAIMS = ("issued_at", "not_before", "expires_at")
_DURATION_CLAIMS = ("grace_s", "warn_s")
CLAIM_NAMES = frozenset(
    (
        *_TEXT_CLAIMS,
        *_TIME_CLAIMS,
        *_DURATION_CLAIMS,
        "serial",
        "fingerprint",
        "license_expires_at",
        "entitlements",
    )
)
CLAIM_NAMES_V2 = CLAIM_NAMES | {"device_key", "binding", "counters", "meters"}
CLAIMS_VERSIONS = (1, 2)


class Claims:
    """What HQ asserts about one activation. Times are Unix seconds (UTC).

    Version 1 is what agents up to 0.1.0 read; version 2 adds the device's own public
    key (``device_key``), what the answer is bound to (``binding``), the usage counters
    the plan declares and its metered entitlements. HQ writes the newest version the
    device's agent reads (``version``).

    Plain slotted class, not a dataclass: ``dataclasses`` costs the boot gate 20 ms of
    imports. Invariants are checked in the constructor, as python-tuf's model does.
    """

    __slots__ = (
        "activation_id",
        "binding",
        "counters",
        "device_key",
        "entitlements",
        "expires_at",
        "fingerprint",
        "grace_s",
        "issued_at",
        "kid",
        "license_expires_at",
        "license_id",
        "meters",
        "not_before",
        "plan",
        "product",
        "serial",
        "version",
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
        version: int = 1,
        device_key: bytes | None = None,
        binding: Binding | None = None,
        counters: tuple[str, ...] = (),
        meters: tuple[Meter, ...] = (),
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
        self.version = version
        self.device_key = device_key
        self.binding = binding
        self.counters = tuple(counters)
        self.meters = tuple(meters)
        self._check()

    def _check(self) -> None:
        if type(self.version) is not int or self.version not in CLAIMS_VERSIONS:
            raise UnsupportedVersionError(f"claims version {self.version!r} is not supported")
        for name in _TEXT_CLAIMS:
            fields.text(getattr(self, name), f"claim {name!r}")
        for name in _TIME_CLAIMS:
            fields.time_s(getattr(self, name), f"claim {name!r}")
        for name in _DURATION_CLAIMS:
            fields.time_s(getattr(self, name), f"claim {name!r}")
        fields.opt_time_s(self.license_expires_at, "claim 'license_expires_at'")
        if fields.uint(self.serial, "claim 'serial'") < 1:
            raise FormatError("claim 'serial' starts at 1")
        if not is_fingerprint(self.fingerprint):
            raise FormatError("claim 'fingerprint' must be 64 lowercase hex characters")
        if not self.issued_at <= self.expires_at or not self.not_before <= self.expires_at:
            raise FormatError("claims expire before they were issued")
        if self.expires_at + self.grace_s > fields.MAX_TIME_S:
            raise FormatError("claims' grace period ends after the year 9999")
        if len(self.entitlements) > 64:
            raise FormatError("too many entitlements")
        for ent in self.entitlements:
            fields.text(ent.feature, "an entitlement's feature")
            fields.opt_time_s(ent.expires_at, "an entitlement's expiry")
        if self.version == 1:
            if self.device_key is not None or self.binding is not None:
                raise FormatError("claims version 1 carry no device key and no binding")
            if self.counters or self.meters:
                raise FormatError("claims version 1 carry no counters and no meters")
            return
        if self.device_key is not None:
            fields.blob(self.device_key, "claim 'device_key'", sodium.PUBLIC_KEY_BYTES)
        if self.binding is not None and not isinstance(self.binding, Binding):
            raise FormatError("claim 'binding' is not a binding")
        if len(self.counters) > MAX_COUNTERS or len(self.meters) > MAX_COUNTERS:
            raise FormatError("too many counters or meters")
        for counter in self.counters:
            fields.name(counter, "a counter")
        if len(set(self.counters)) != len(self.counters):
            raise FormatError("a counter is declared twice")
        for meter in self.meters:
            if not isinstance(meter, Meter):
                raise FormatError("a meter is not a meter")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Claims) and other.to_dict() == self.to_dict()

    def __repr__(self) -> str:
        return f"Claims(activation_id={self.activation_id!r}, serial={self.serial})"

    __hash__ = None  # type: ignore[assignment]

    @property
    def grace_ends_at(self) -> int:
        return self.expires_at + self.grace_s

    def to_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "v": self.version,
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
        if self.version >= 2:
            doc.update(
                device_key=self.device_key,
                binding=None if self.binding is None else self.binding.to_dict(),
                counters=list(self.counters),
                meters=[m.to_dict() for m in self.meters],
            )
        return doc

    @classmethod
    def from_dict(cls, d: object) -> "Claims":
        if not isinstance(d, dict):
            raise FormatError("claims are not a map")
        version = d.get("v")
        if not any(fields.is_version(version, v) for v in CLAIMS_VERSIONS):
            raise UnsupportedVersionError(f"claims version {version!r} is not supported")
        names = CLAIM_NAMES if version == 1 else CLAIM_NAMES_V2
        fields.exact_keys(d, names | {"v"}, "the claims")
        raw_ents = d["entitlements"]
        if not isinstance(raw_ents, list):
            raise FormatError("entitlements must be a list")
        ents = []
        for item in raw_ents:
            if not isinstance(item, dict) or set(item) != {"feature", "expires_at"}:
                raise FormatError("an entitlement is a map of feature and expires_at")
            ents.append(Entitlement(item["feature"], item["expires_at"]))
        values = {k: v for k, v in d.items() if k in CLAIM_NAMES and k != "entitlements"}
        if version == 1:
            return cls(entitlements=tuple(ents), version=1, **values)
        counters, meters, binding = d["counters"], d["meters"], d["binding"]
        if not isinstance(counters, list) or not isinstance(meters, list):
            raise FormatError("counters and meters must be lists")
        if len(counters) > MAX_COUNTERS or len(meters) > MAX_COUNTERS:
            raise FormatError("too many counters or meters")
        return cls(
            entitlements=tuple(ents),
            version=2,
            device_key=d["device_key"],
            binding=None if binding is None else Binding.from_dict(binding),
            counters=tuple(counters),
            meters=tuple(Meter.from_dict(m) for m in meters),
            **values,
        )


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
        if not fields.is_version(doc.get("v"), FORMAT_VERSION):
            raise UnsupportedVersionError(f"machine file version {doc.get('v')!r} not supported")
        if set(doc) != _ENVELOPE_KEYS:
            raise FormatError("machine file envelope has missing or unknown fields")
        if doc["alg"] != ALGORITHM:
            raise UnsupportedVersionError(f"algorithm {doc['alg']!r} is not supported")
        kid, enc, sig = fields.text(doc["kid"], "the machine file's key id"), doc["enc"], doc["sig"]
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
