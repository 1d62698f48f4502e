"""HQ-signed current time and license status: what ``POST /v1/validate`` returns for the
device to re-anchor its clock's high-water mark on and to record a revocation by.

Format (canonical CBOR, see docs/hq.md)::

    token = {"kid": KEY-ID, "msg": MSG, "sig": Ed25519(b"time/" || MSG)}
    MSG   = canonical CBOR {"v": 1, "type": "time", "t": UNIX-SECONDS,
                            "fingerprint": FP, "nonce": NONCE-OR-NULL, "status": STATUS}

STATUS is the license's status for this device as HQ sees it: "active", "suspended",
"revoked", "expired", or "deactivated" (no live activation for this fingerprint). The
device acts on the signed status only, never on unsigned JSON next to it.

The signature covers the exact bytes of ``msg``, and is checked before ``msg`` is parsed.
The fingerprint binds the answer to one device and the nonce (chosen by the device, up to
128 characters) to one request, so a recorded answer cannot be replayed later to hold a
device's clock back or to lift a revocation. Pure functions: nothing here reads a clock.
"""

from .errors import (
    ClaimMismatchError,
    FormatError,
)
from .keys import Keyring, SigningKey
from .license_key import is_fingerprint
from .signed import open_signed, sign_message

FORMAT_VERSION = 1
SIGNATURE_CONTEXT = b"time/"
MAX_TOKEN_BYTES = 1024
MAX_NONCE_CHARS = 128
_MSG_FIELDS = frozenset({"t", "fingerprint", "nonce", "status"})
STATUSES = frozenset({"active", "suspended", "revoked", "expired", "deactivated"})


def _check_nonce(nonce: object) -> None:
    if nonce is not None and (type(nonce) is not str or len(nonce) > MAX_NONCE_CHARS):
        raise FormatError(f"a nonce is a text of at most {MAX_NONCE_CHARS} characters")


def sign_time(
    signing_key: SigningKey, t: int, fingerprint: str, nonce: str | None, status: str
) -> bytes:
    """The signed time-and-status token (HQ side)."""
    if status not in STATUSES:
        raise ValueError(f"unknown license status {status!r}")
    if not is_fingerprint(fingerprint):
        raise ValueError("a fingerprint is 64 lowercase hex characters")
    _check_nonce(nonce)
    if type(t) is not int or not 0 <= t < 1 << 63:
        raise ValueError("a time is a non-negative integer of Unix seconds")
    return sign_message(
        signing_key,
        SIGNATURE_CONTEXT,
        {
            "v": FORMAT_VERSION,
            "type": "time",
            "t": t,
            "fingerprint": fingerprint,
            "nonce": nonce,
            "status": status,
        },
    )


def verify_time(
    data: bytes, keyring: Keyring, fingerprint: str, nonce: str | None
) -> tuple[int, str]:
    """HQ's time and the license status in ``data``, if it is signed by a trusted key for
    this device and this nonce; otherwise a ``WireError``."""
    body = open_signed(
        data,
        keyring,
        SIGNATURE_CONTEXT,
        what="signed time",
        msg_type="time",
        fields=_MSG_FIELDS,
        version=FORMAT_VERSION,
        max_bytes=MAX_TOKEN_BYTES,
    )
    t = body["t"]
    if type(t) is not int or not 0 <= t < 1 << 63:
        raise FormatError("signed time is not a non-negative integer")
    if body["fingerprint"] != fingerprint:
        raise ClaimMismatchError("signed time is for another device")
    if body["nonce"] != nonce:
        raise ClaimMismatchError("signed time answers another request")
    if body["status"] not in STATUSES:
        raise FormatError("signed time carries an unknown status")
    return t, str(body["status"])
