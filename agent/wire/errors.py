"""Typed errors of the wire format.

Every failure to read untrusted bytes is a ``WireError``. Subclasses say what went
wrong, so that callers can tell a forged file from a file meant for another device,
but none of them carries secret material in its message.
"""


class WireError(Exception):
    """Untrusted bytes were refused. ``reason`` is a stable machine-readable code."""

    reason = "malformed"


class FormatError(WireError):
    """The bytes are not a well-formed object of the expected format."""

    reason = "malformed"


class UnsupportedVersionError(FormatError):
    """A format version or algorithm this agent does not implement (never a fallback)."""

    reason = "unsupported_version"


class UnknownKeyError(WireError):
    """Signed by a key id that is not in the trusted keyring."""

    reason = "unknown_key"


class SignatureError(WireError):
    """The Ed25519 signature does not verify. Deliberately says nothing more."""

    reason = "bad_signature"


class DecryptError(WireError):
    """The payload does not decrypt: another device, or another license key."""

    reason = "wrong_device"


class ClaimMismatchError(WireError):
    """The decrypted claims do not match this device, license or key id."""

    reason = "claim_mismatch"
