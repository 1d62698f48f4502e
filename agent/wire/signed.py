"""Small signed messages (HQ's signed status and revocations, the device's own signed
messages): one envelope, one verifier.

Envelope (canonical CBOR)::

    {"kid": KEY-ID, "msg": MSG, "sig": Ed25519(CONTEXT || MSG)}

``MSG`` is itself canonical CBOR: a map with ``"v"`` (format version) and ``"type"``.
``open_signed`` finds the public key by the key id, checks the signature over the exact
bytes of ``msg`` before ``msg`` is parsed, then checks its version, type and exact set of
fields. The key id is the only thing read before the signature: HQ's keyring on the
device, the activation's device key at HQ.
"""

from collections.abc import Callable

from . import cbor, fields, sodium
from .errors import FormatError, SignatureError, UnknownKeyError, UnsupportedVersionError
from .keys import Keyring

if False:  # typing only (the gate cannot afford ``typing``)
    from .device_key import DeviceKey
    from .keys import SigningKey

_ENVELOPE_KEYS = frozenset({"kid", "msg", "sig"})
KeyLookup = Keyring | Callable[[str], bytes | None]


def sign_message(
    signing_key: "SigningKey | DeviceKey", context: bytes, body: dict[str, object]
) -> bytes:
    msg = cbor.dumps(body)
    return cbor.dumps({"kid": signing_key.kid, "msg": msg, "sig": signing_key.sign(context + msg)})


def signed_kid(data: bytes, max_bytes: int = 1024) -> str:
    """The key id of a signed message, read before anything else (to find the key)."""
    doc = cbor.loads(data, max_size=max_bytes, max_depth=1)
    if not isinstance(doc, dict) or set(doc) != _ENVELOPE_KEYS:
        raise FormatError("a signed message is a map of kid, msg and sig")
    return fields.text(doc["kid"], "a signed message's key id")


def open_signed(
    data: bytes,
    keys: KeyLookup,
    context: bytes,
    *,
    what: str,
    msg_type: str,
    fields_by_version: dict[int, frozenset[str]],
    max_bytes: int = 1024,
    max_depth: int = 1,
    optional: frozenset[str] = frozenset(),
) -> dict[str, object]:
    """The verified body of a signed message, or a WireError naming ``what``.

    ``fields_by_version`` names the versions accepted and the exact fields of each;
    ``optional`` the fields a body may carry besides them.
    """
    doc = cbor.loads(data, max_size=max_bytes, max_depth=1)
    if not isinstance(doc, dict) or set(doc) != _ENVELOPE_KEYS:
        raise FormatError(f"a {what} is a map of kid, msg and sig")
    kid, msg, sig = doc["kid"], doc["msg"], doc["sig"]
    if type(kid) is not str or type(msg) is not bytes or type(sig) is not bytes:
        raise FormatError(f"{what} fields have the wrong types")
    public_key = keys.get(kid) if isinstance(keys, Keyring) else keys(kid)
    if public_key is None:
        raise UnknownKeyError(f"{what} signed by key {kid}, which is not trusted here")
    if not sodium.ed25519_verify(public_key, sig, context + msg):
        raise SignatureError(f"{what} signature does not verify")
    body = cbor.loads(msg, max_size=max_bytes, max_depth=max_depth)
    if not isinstance(body, dict):
        raise FormatError(f"a {what} is not a map")
    version = body.get("v")
    expected = next(
        (names for v, names in fields_by_version.items() if fields.is_version(version, v)), None
    )
    if expected is None:
        raise UnsupportedVersionError(f"unsupported {what} version")
    if set(body) - optional != expected | {"v", "type"} or body["type"] != msg_type:
        raise FormatError(f"{what} has missing or unknown fields")
    return {str(k): v for k, v in body.items()}
