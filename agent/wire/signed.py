"""Small signed messages from HQ (the signed status, revocations): one envelope, one
verifier.

Envelope (canonical CBOR)::

    {"kid": KEY-ID, "msg": MSG, "sig": Ed25519(CONTEXT || MSG)}

``MSG`` is itself canonical CBOR: a map with ``"v"`` (format version) and ``"type"``.
``open_signed`` checks the key id and the signature over the exact bytes of ``msg``
before ``msg`` is parsed, then checks its version, type and exact set of fields.
"""

from . import cbor, sodium
from .errors import FormatError, SignatureError, UnknownKeyError, UnsupportedVersionError
from .keys import Keyring, SigningKey

_ENVELOPE_KEYS = frozenset({"kid", "msg", "sig"})


def sign_message(signing_key: SigningKey, context: bytes, body: dict[str, object]) -> bytes:
    msg = cbor.dumps(body)
    return cbor.dumps({"kid": signing_key.kid, "msg": msg, "sig": signing_key.sign(context + msg)})


def open_signed(
    data: bytes,
    keyring: Keyring,
    context: bytes,
    *,
    what: str,
    msg_type: str,
    fields: frozenset[str],
    version: int = 1,
    max_bytes: int = 1024,
) -> dict[str, object]:
    """The verified body of a signed message, or a WireError naming ``what``."""
    doc = cbor.loads(data, max_size=max_bytes, max_depth=1)
    if not isinstance(doc, dict) or set(doc) != _ENVELOPE_KEYS:
        raise FormatError(f"a {what} is a map of kid, msg and sig")
    kid, msg, sig = doc["kid"], doc["msg"], doc["sig"]
    if type(kid) is not str or type(msg) is not bytes or type(sig) is not bytes:
        raise FormatError(f"{what} fields have the wrong types")
    public_key = keyring.get(kid)
    if public_key is None:
        raise UnknownKeyError(f"{what} signed by key {kid}, which this device does not trust")
    if not sodium.ed25519_verify(public_key, sig, context + msg):
        raise SignatureError(f"{what} signature does not verify")
    body = cbor.loads(msg, max_size=max_bytes, max_depth=1)
    if not isinstance(body, dict) or body.get("v") != version:
        raise UnsupportedVersionError(f"unsupported {what} version")
    if set(body) != fields | {"v", "type"} or body["type"] != msg_type:
        raise FormatError(f"{what} has missing or unknown fields")
    return {str(k): v for k, v in body.items()}
