"""A revocation signed by HQ: how a device learns, without an online answer of its own,
that its activation was revoked or suspended (over MQTT, or from a technician's laptop).

Format (canonical CBOR)::

    token = {"kid": KEY-ID, "msg": MSG, "sig": Ed25519(b"revocation/" || MSG)}
    MSG   = canonical CBOR {"v": 1, "type": "revocation", "activation_id": TEXT,
                            "issued_at": UNIX-SECONDS,
                            "reason": "revoked" | "suspended" | "deactivated"}

The signature covers the exact bytes of ``msg`` and is checked before ``msg`` is parsed.
A device acts on it only if it names the device's own activation; HQ lifts it by issuing
a newer machine file (its issued-at is later than the revocation's) or by a signed
"active" status; a device ignores a revocation HQ issued at or before the last lift it
recorded. ``deactivated`` (HQ freed the seat) is read by agents after 0.1.0; HQ sends
older agents ``revoked`` in its place. Armored label: ``FIELDPASS REVOCATION``.
"""

from . import fields
from .errors import (
    ClaimMismatchError,
    FormatError,
)
from .keys import Keyring, SigningKey
from .signed import open_signed, sign_message

FORMAT_VERSION = 1
SIGNATURE_CONTEXT = b"revocation/"
MAX_REVOCATION_BYTES = 1024
REASONS = frozenset({"revoked", "suspended", "deactivated"})
REASONS_V0_1 = frozenset({"revoked", "suspended"})  # what agents up to 0.1.0 accept
_MSG_FIELDS = frozenset({"activation_id", "issued_at", "reason"})


class Revocation:
    __slots__ = ("activation_id", "issued_at", "reason")

    def __init__(self, activation_id: str, issued_at: int, reason: str) -> None:
        fields.text(activation_id, "a revocation's activation id")
        fields.time_s(issued_at, "a revocation's time")
        if reason not in REASONS:
            raise FormatError(f"unknown revocation reason {reason!r}")
        self.activation_id = activation_id
        self.issued_at = issued_at
        self.reason = reason

    def __repr__(self) -> str:
        return f"Revocation({self.activation_id!r}, {self.issued_at}, {self.reason!r})"


def sign_revocation(signing_key: SigningKey, revocation: Revocation) -> bytes:
    return sign_message(
        signing_key,
        SIGNATURE_CONTEXT,
        {
            "v": FORMAT_VERSION,
            "type": "revocation",
            "activation_id": revocation.activation_id,
            "issued_at": revocation.issued_at,
            "reason": revocation.reason,
        },
    )


def verify_revocation(data: bytes, keyring: Keyring, activation_id: str) -> Revocation:
    """The revocation in ``data`` if HQ signed it for ``activation_id``; else WireError."""
    body = open_signed(
        data,
        keyring,
        SIGNATURE_CONTEXT,
        what="revocation",
        msg_type="revocation",
        fields_by_version={FORMAT_VERSION: _MSG_FIELDS},
        max_bytes=MAX_REVOCATION_BYTES,
    )
    revocation = Revocation(body["activation_id"], body["issued_at"], body["reason"])  # type: ignore[arg-type]
    if revocation.activation_id != activation_id:
        raise ClaimMismatchError("revocation names another activation")
    return revocation
