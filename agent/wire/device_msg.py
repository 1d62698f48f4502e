"""Messages the device signs with its own key (device_key.py): requests to HQ after
activation, the status it reports, the air-gapped request.

Envelope: the one of signed.py, with the context ``b"fieldpass/device/"``::

    {"kid": DEVICE-KEY-ID, "msg": MSG, "sig": Ed25519(b"fieldpass/device/" || MSG)}
    MSG = canonical CBOR {"v": 1, "type": TYPE, "activation_id", "fingerprint", "at",
                          "agent_version", ...the fields of TYPE}

``at`` is the device's clock (informational: HQ never trusts it). Each type has an exact
set of fields (``SCHEMAS``), plus, for ``KEYRING_TYPES``, the optional ``keyring``: the
ids of the keys the device's keyring holds, so that HQ signs its answer with one the
device trusts (agents of 0.1.0 send none). The verifier refuses anything else. HQ
finds the public key by the key id (the activation's recorded device key), except for
the self-signed types (``activate``, ``request``, and ``renew`` or ``status`` carrying a
``device_key`` to register), whose signer must be the key the message carries. What
each type means and how HQ answers it: docs/wire-format.md §9.
"""

from collections.abc import Callable

from . import fields, sodium
from .device_key import DeviceKey, key_id
from .errors import ClaimMismatchError, FormatError, WireError
from .keys import Keyring
from .license_key import is_fingerprint
from .signed import KeyLookup, open_signed, sign_message

FORMAT_VERSION = 1
SIGNATURE_CONTEXT = b"fieldpass/device/"
MAX_MESSAGE_BYTES = 2048
MAX_NOTES = 8
MAX_NOTE_CHARS = 200
MAX_NONCE_CHARS = 128
MAX_COUNTERS = 64
MAX_KEYRING_IDS = 16
_KID_PREFIX = "fpk_"
_KID_HEX = frozenset("0123456789abcdef")
CLAIMS_FORMATS = (1, 2)

Check = Callable[[object, str], object]


def _fp(value: object, what: str) -> str:
    if not is_fingerprint(value):
        raise FormatError(f"{what} must be 64 lowercase hex characters")
    assert isinstance(value, str)
    return value


def _act(value: object, what: str) -> str:
    return fields.text(value, what, empty=True)


def _nonce(value: object, what: str) -> str:
    return fields.text(value, what, MAX_NONCE_CHARS)


def _opt_nonce(value: object, what: str) -> str | None:
    return None if value is None else _nonce(value, what)


def _opt_uint(value: object, what: str) -> int | None:
    return None if value is None else fields.uint(value, what)


def _opt_key(value: object, what: str) -> bytes | None:
    return None if value is None else fields.blob(value, what, sodium.PUBLIC_KEY_BYTES)


def _opt_proof(value: object, what: str) -> bytes | None:
    return None if value is None else fields.blob(value, what, sodium.SHA256_BYTES)


def _pub(value: object, what: str) -> bytes:
    return fields.blob(value, what, sodium.PUBLIC_KEY_BYTES)


def _formats(value: object, what: str) -> list[int]:
    if not isinstance(value, list) or not 0 < len(value) <= 8:
        raise FormatError(f"{what} must be a short list of versions")
    return [fields.uint(v, what, 255) for v in value]


def _notes(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_NOTES:
        raise FormatError(f"{what} must be a list of at most {MAX_NOTES} texts")
    return [fields.text(v, what, MAX_NOTE_CHARS) for v in value]


def _counts(value: object, what: str) -> dict[str, int]:
    if not isinstance(value, dict) or len(value) > 32:
        raise FormatError(f"{what} must be a map of at most 32 counts")
    return {fields.name(k, what): fields.uint(v, what) for k, v in value.items()}


def _usage(value: object, what: str) -> dict[str, int]:
    if not isinstance(value, dict) or len(value) > MAX_COUNTERS:
        raise FormatError(f"{what} must be a map of at most {MAX_COUNTERS} counters")
    return {fields.name(k, what): fields.uint(v, what) for k, v in value.items()}


def is_kid(value: object) -> bool:
    """A signing key id in its documented form: ``fpk_`` + 16 lowercase hex digits."""
    return (
        type(value) is str
        and len(value) == len(_KID_PREFIX) + 16
        and value.startswith(_KID_PREFIX)
        and set(value[len(_KID_PREFIX) :]) <= _KID_HEX
    )


def _kids(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_KEYRING_IDS:
        raise FormatError(f"{what} must be a list of 1 to {MAX_KEYRING_IDS} key ids")
    if not all(is_kid(v) for v in value) or len(set(value)) != len(value):
        raise FormatError(f"{what} must hold distinct key ids of the form fpk_ + 16 hex digits")
    return [str(v) for v in value]


def _short(value: object, what: str) -> str:
    return fields.text(value, what, 100, empty=True)


_COMMON: dict[str, Check] = {
    "activation_id": _act,
    "fingerprint": _fp,
    "at": fields.time_s,
    "agent_version": _short,
}
SCHEMAS: dict[str, dict[str, Check]] = {
    # Online activation, sent with the license key to HQ over TLS (self-signed).
    "activate": {
        "license_id": fields.text,
        "device_key": _pub,
        "counter": _opt_uint,
        "nonce": _nonce,
        "device_name": _short,
        "formats": _formats,
    },
    # Ask HQ's signed status (POST /v1/validate).
    "validate": {"nonce": _nonce, "challenge": _opt_nonce},
    # Ask for a fresh machine file (HTTP, MQTT). device_key + proof register a key for an
    # activation that has none; counter + nonce ask for an answer bound to them.
    "renew": {
        "challenge": _opt_nonce,
        "serial": fields.uint,
        "expires_at": fields.time_s,
        "due": fields.flag,
        "revoked": fields.flag,
        "ttl_s": _opt_uint,
        "counter": _opt_uint,
        "nonce": _opt_nonce,
        "formats": _formats,
        "device_key": _opt_key,
        "proof": _opt_proof,
    },
    # Free the seat (POST /v1/deactivate).
    "deactivate": {"challenge": _opt_nonce},
    # What the device holds now (MQTT status topic; a laptop's record of an install);
    # device_key + proof register the key, as in "renew".
    "status": {
        "verdict": _short,
        "reason": _short,
        "serial": fields.uint,
        "expires_at": fields.time_s,
        "revoked": _short,
        "revoked_at": fields.time_s,
        "lifted_at": fields.time_s,
        "hwm": fields.time_s,
        "unrecorded_boots": fields.uint,
        "notes": _notes,
        "bad_messages": _counts,
        "challenge": _opt_nonce,
        "device_key": _opt_key,
        "proof": _opt_proof,
    },
    # The air-gapped request (armored FIELDPASS REQUEST), self-signed.
    "request": {
        "serial": fields.uint,
        "device_key": _pub,
        "counter": _opt_uint,
        "nonce": _nonce,
        "device_name": _short,
        "lost": fields.flag,
        "formats": _formats,
    },
    # The device's cumulative usage counters, numbered (HQ keeps the highest seq): with
    # the status over MQTT, after validate/refresh over HTTP, through a laptop, by hand.
    "report": {
        "seq": fields.uint,
        "counters": _usage,
        "challenge": _opt_nonce,
        "device_key": _opt_key,
        "proof": _opt_proof,
    },
    # The license given back (`fieldpass return`): HQ frees the seat when it sees this.
    "receipt": {
        "serial": fields.uint,
        "returned_at": fields.time_s,
        "reason": _short,
        "device_key": _opt_key,
        "proof": _opt_proof,
    },
}
SELF_SIGNED = frozenset({"activate", "request"})
# The types that may carry the device's keyring (the ids of the keys it trusts), so that
# HQ signs its answers with a key the device holds: optional, absent from 0.1.0's.
KEYRING_TYPES = frozenset({"activate", "validate", "renew", "status", "request"})
KEYRING = "keyring"
_FIELDS = {t: frozenset(_COMMON) | frozenset(s) for t, s in SCHEMAS.items()}


class DeviceMessage:
    """A verified device message: its type, its signer's key id, its checked fields."""

    __slots__ = ("fields", "kid", "type")

    def __init__(self, msg_type: str, kid: str, values: dict[str, object]) -> None:
        self.type = msg_type
        self.kid = kid
        self.fields = values

    def __getitem__(self, name: str) -> object:
        return self.fields[name]

    @property
    def activation_id(self) -> str:
        return str(self.fields["activation_id"])

    @property
    def fingerprint(self) -> str:
        return str(self.fields["fingerprint"])

    def __repr__(self) -> str:
        return f"DeviceMessage({self.type!r}, {self.activation_id!r})"


def _checked(msg_type: str, values: dict[str, object]) -> dict[str, object]:
    """The checked fields; the optional keyring is None when the message has none."""
    schema = {**_COMMON, **SCHEMAS[msg_type]}
    names = set(values)
    optional = msg_type in KEYRING_TYPES and KEYRING in names
    if names - ({KEYRING} if optional else set()) != set(schema):
        raise FormatError(f"a device {msg_type} message has missing or unknown fields")
    checked = {name: check(values[name], f"{msg_type}.{name}") for name, check in schema.items()}
    if msg_type in KEYRING_TYPES:
        checked[KEYRING] = _kids(values[KEYRING], f"{msg_type}.{KEYRING}") if optional else None
    return checked


def keyring_of(msg: "DeviceMessage") -> tuple[str, ...] | None:
    """The key ids the device says its keyring holds (None: it said nothing)."""
    value = msg.fields.get(KEYRING)
    return tuple(str(v) for v in value) if isinstance(value, list) else None


def sign(key: DeviceKey, msg_type: str, values: dict[str, object]) -> bytes:
    """A signed device message of ``msg_type`` (device side)."""
    if msg_type not in SCHEMAS:
        raise ValueError(f"unknown device message type {msg_type!r}")
    if KEYRING in values and values[KEYRING] is None:  # nothing to tell: left out
        values = {k: v for k, v in values.items() if k != KEYRING}
    body = {k: v for k, v in _checked(msg_type, values).items() if v is not None or k != KEYRING}
    data = sign_message(key, SIGNATURE_CONTEXT, {"v": FORMAT_VERSION, "type": msg_type, **body})
    if len(data) > MAX_MESSAGE_BYTES and KEYRING in body:  # advisory: left out, not refused
        del body[KEYRING]
        data = sign_message(key, SIGNATURE_CONTEXT, {"v": FORMAT_VERSION, "type": msg_type, **body})
    return data


def open_message(data: bytes, keys: KeyLookup, msg_type: str) -> DeviceMessage:
    """Verify a device message of ``msg_type`` signed by a key ``keys`` knows.

    The envelope is read once (by ``open_signed``); its key id, checked as
    ``signed_kid`` checks it, is taken as the key is looked up."""
    named: list[str] = []

    def lookup(kid: str) -> bytes | None:
        named.append(fields.text(kid, "a signed message's key id"))
        return keys.get(kid) if isinstance(keys, Keyring) else keys(kid)

    body = open_signed(
        data,
        lookup,
        SIGNATURE_CONTEXT,
        what=f"device {msg_type} message",
        msg_type=msg_type,
        fields_by_version={FORMAT_VERSION: _FIELDS[msg_type]},
        max_bytes=MAX_MESSAGE_BYTES,
        max_depth=2,
        optional=frozenset({KEYRING}) if msg_type in KEYRING_TYPES else frozenset(),
    )
    del body["v"], body["type"]
    return DeviceMessage(msg_type, named[0], _checked(msg_type, body))


def open_self_signed(data: bytes, msg_type: str, key_field: str = "device_key") -> DeviceMessage:
    """Verify a message whose signer is the public key it carries in ``key_field``.

    The key is read from the message only to check the signature with it, and the
    message is accepted only if the signature verifies and the key id matches.
    """
    from . import cbor
    from .signed import signed_kid

    kid = signed_kid(data, MAX_MESSAGE_BYTES)
    outer = cbor.loads(data, max_size=MAX_MESSAGE_BYTES, max_depth=1)
    assert isinstance(outer, dict)
    msg = outer["msg"]
    if type(msg) is not bytes:
        raise FormatError("a signed message's msg is not bytes")
    inner = cbor.loads(msg, max_size=MAX_MESSAGE_BYTES, max_depth=2)
    claimed = inner.get(key_field) if isinstance(inner, dict) else None
    if type(claimed) is not bytes or len(claimed) != sodium.PUBLIC_KEY_BYTES:
        raise FormatError(f"a device {msg_type} message carries no public key")
    if key_id(claimed) != kid:
        raise ClaimMismatchError(f"a device {msg_type} message is not signed by the key it carries")
    return open_message(data, lambda k: claimed if k == kid else None, msg_type)


def all_types() -> frozenset[str]:
    return frozenset(SCHEMAS)


def unverified_fingerprint(data: bytes) -> str:
    """The fingerprint a device message claims, NOT verified: only for looking up public,
    HQ-signed data to hand out (a technician's laptop offering a revocation to a device
    whose key it does not know; the device verifies what it gets). "" if unreadable."""
    from . import cbor

    try:
        outer = cbor.loads(data, max_size=MAX_MESSAGE_BYTES, max_depth=1)
        msg = outer.get("msg") if isinstance(outer, dict) else None
        inner = (
            cbor.loads(msg, max_size=MAX_MESSAGE_BYTES, max_depth=2) if type(msg) is bytes else None
        )
    except WireError:
        return ""
    value = inner.get("fingerprint") if isinstance(inner, dict) else None
    return value if is_fingerprint(value) else ""  # type: ignore[return-value]
