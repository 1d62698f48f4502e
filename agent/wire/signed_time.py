"""HQ-signed current time and license status: what ``POST /v1/validate`` returns for the
device to re-anchor its clock's high-water mark on and to record a revocation by.

Format (canonical CBOR, see docs/wire-format.md)::

    token = {"kid": KEY-ID, "msg": MSG, "sig": Ed25519(b"time/" || MSG)}
    MSG   = canonical CBOR {"v": 2, "type": "time", "t": UNIX-SECONDS,
                            "fingerprint": FP, "license_id": LIC, "activation_id": ACT,
                            "nonce": NONCE, "status": STATUS}

STATUS is the status of that activation as HQ sees it: "active", "suspended",
"revoked", "expired", or "deactivated" (the activation is no longer live). The device
acts on the signed status only, never on unsigned JSON next to it, and only on one that
names its own fingerprint, license and activation and the nonce it just sent: an answer
obtained under another license, or for another request, is refused.

Version 1 (no license and activation, nonce optional) is what agents up to 0.1.0 read;
HQ still signs it for them (``sign_time_v1``). This agent never accepts it. The
signature covers the exact bytes of ``msg``, and is checked before ``msg`` is parsed.
Pure functions: nothing here reads a clock.
"""

from . import fields, sodium
from .errors import ClaimMismatchError, FormatError
from .keys import Keyring, SigningKey
from .license_key import is_fingerprint
from .signed import open_signed, sign_message

FORMAT_VERSION = 2
SIGNATURE_CONTEXT = b"time/"
MAX_TOKEN_BYTES = 1024
MAX_NONCE_CHARS = 128
_FIELDS_V1 = frozenset({"t", "fingerprint", "nonce", "status"})
_FIELDS_V2 = _FIELDS_V1 | {"license_id", "activation_id"}
ACK_NONCE_PREFIX = "ack/"  # an acknowledgement's nonce: "ack/" + hex(SHA-256(payload))
STATUSES = frozenset({"active", "suspended", "revoked", "expired", "deactivated"})


class SignedStatus:
    """A verified status: HQ's time and what HQ says of this activation."""

    __slots__ = ("activation_id", "license_id", "status", "t")

    def __init__(self, t: int, status: str, license_id: str, activation_id: str) -> None:
        self.t = t
        self.status = status
        self.license_id = license_id
        self.activation_id = activation_id

    def __repr__(self) -> str:
        return f"SignedStatus({self.t}, {self.status!r}, {self.activation_id!r})"


def _check(t: int, fingerprint: str, nonce: str | None, status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown license status {status!r}")
    if not is_fingerprint(fingerprint):
        raise ValueError("a fingerprint is 64 lowercase hex characters")
    if nonce is not None and (type(nonce) is not str or len(nonce) > MAX_NONCE_CHARS):
        raise ValueError(f"a nonce is a text of at most {MAX_NONCE_CHARS} characters")
    if not fields.is_uint(t, fields.MAX_TIME_S):
        raise ValueError("a time is a non-negative integer of Unix seconds")


def sign_time(
    signing_key: SigningKey,
    t: int,
    fingerprint: str,
    nonce: str,
    status: str,
    *,
    license_id: str,
    activation_id: str,
) -> bytes:
    """The signed status of one activation (HQ side, version 2)."""
    _check(t, fingerprint, nonce, status)
    fields.text(license_id, "a license id")
    fields.text(activation_id, "an activation id")
    return sign_message(
        signing_key,
        SIGNATURE_CONTEXT,
        {
            "v": FORMAT_VERSION,
            "type": "time",
            "t": t,
            "fingerprint": fingerprint,
            "license_id": license_id,
            "activation_id": activation_id,
            "nonce": nonce,
            "status": status,
        },
    )


def sign_time_v1(
    signing_key: SigningKey, t: int, fingerprint: str, nonce: str | None, status: str
) -> bytes:
    """The version-1 token agents up to 0.1.0 read (HQ side, for those agents only)."""
    _check(t, fingerprint, nonce, status)
    return sign_message(
        signing_key,
        SIGNATURE_CONTEXT,
        {
            "v": 1,
            "type": "time",
            "t": t,
            "fingerprint": fingerprint,
            "nonce": nonce,
            "status": status,
        },
    )


def verify_time(
    data: bytes,
    keyring: Keyring,
    fingerprint: str,
    nonce: str,
    *,
    license_id: str,
    activation_id: str,
) -> SignedStatus:
    """HQ's time and status in ``data``, if a trusted key signed it for this device, this
    license, this activation and this nonce; otherwise a ``WireError``."""
    signed = _open_status(data, keyring, fingerprint, nonce, activation_id)
    if signed.license_id != license_id:
        raise ClaimMismatchError("signed status is about another license or activation")
    return signed


def ack_nonce(payload: bytes) -> str:
    """The nonce HQ's acknowledgement of ``payload`` (a usage report or a return receipt,
    the exact bytes the device sent) is bound to."""
    return ACK_NONCE_PREFIX + sodium.sha256(payload).hex()


def verify_ack(
    data: bytes, keyring: Keyring, fingerprint: str, nonce: str, *, activation_id: str
) -> SignedStatus:
    """HQ's acknowledgement in ``data`` (its signed status bound to ``nonce``, the
    ``ack_nonce`` of a report or receipt the device sent), if a trusted key signed it for
    this device and this activation; otherwise a ``WireError``. The license it names is
    HQ's signed word (``SignedStatus.license_id``), left to the caller: a device that gave
    its license back no longer knows it, and the nonce already names the very payload,
    which names the activation."""
    return _open_status(data, keyring, fingerprint, nonce, activation_id)


def _open_status(
    data: bytes, keyring: Keyring, fingerprint: str, nonce: str, activation_id: str
) -> SignedStatus:
    body = open_signed(
        data,
        keyring,
        SIGNATURE_CONTEXT,
        what="signed status",
        msg_type="time",
        fields_by_version={FORMAT_VERSION: _FIELDS_V2},
        max_bytes=MAX_TOKEN_BYTES,
    )
    t = fields.time_s(body["t"], "the signed time")
    if body["fingerprint"] != fingerprint:
        raise ClaimMismatchError("signed status is for another device")
    if body["activation_id"] != activation_id or type(body["license_id"]) is not str:
        raise ClaimMismatchError("signed status is about another license or activation")
    if body["nonce"] != nonce:
        raise ClaimMismatchError("signed status answers another request")
    if body["status"] not in STATUSES:
        raise FormatError("signed status carries an unknown status")
    return SignedStatus(t, str(body["status"]), body["license_id"], activation_id)


def verify_time_v1(
    data: bytes, keyring: Keyring, fingerprint: str, nonce: str | None
) -> tuple[int, str]:
    """Version 1, as agents up to 0.1.0 verify it (tests and HQ's compatibility checks)."""
    body = open_signed(
        data,
        keyring,
        SIGNATURE_CONTEXT,
        what="signed time",
        msg_type="time",
        fields_by_version={1: _FIELDS_V1},
        max_bytes=MAX_TOKEN_BYTES,
    )
    t = fields.time_s(body["t"], "the signed time")
    if body["fingerprint"] != fingerprint or body["nonce"] != nonce:
        raise ClaimMismatchError("signed time is for another device or request")
    if body["status"] not in STATUSES:
        raise FormatError("signed time carries an unknown status")
    return t, str(body["status"])
