"""License keys: their text form, the public license id derived from them, and the
machine-file encryption key derived from a key and a device fingerprint.

A license key is a secret shared by HQ and the device it is installed on. It never
appears in logs, topics or error messages; the license id (a one-way hash of it) is
what may be shown.
"""

from . import sodium

PREFIX = "FP"
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no I, O, 0, 1: read over a phone
GROUPS = 5
GROUP_LEN = 5
FINGERPRINT_HEX_LEN = 64
_HEX = frozenset("0123456789abcdef")


def generate() -> str:
    raw = sodium.random_bytes(GROUPS * GROUP_LEN)
    chars = "".join(_ALPHABET[b % len(_ALPHABET)] for b in raw)  # 256 % 32 == 0: unbiased
    groups = [chars[i : i + GROUP_LEN] for i in range(0, len(chars), GROUP_LEN)]
    return "-".join([PREFIX, *groups])


def normalize(text: str) -> str:
    """The canonical form of a license key typed by a person, or ValueError."""
    key = text.strip().upper().replace(" ", "")
    parts = key.split("-")
    if (
        len(parts) != GROUPS + 1
        or parts[0] != PREFIX
        or any(len(p) != GROUP_LEN or any(c not in _ALPHABET for c in p) for p in parts[1:])
    ):
        raise ValueError("not a Fieldpass license key (FP-XXXXX-XXXXX-XXXXX-XXXXX-XXXXX)")
    return key


def license_id(key: str) -> str:
    """The public id of a license: safe to log, cannot be turned back into the key."""
    return "lic_" + sodium.sha256(b"fieldpass/license-id\0" + key.encode("ascii"))[:10].hex()


def is_fingerprint(text: object) -> bool:
    return isinstance(text, str) and len(text) == FINGERPRINT_HEX_LEN and _HEX.issuperset(text)


def encryption_key(key: str, fingerprint: str) -> bytes:
    """SHA-256(license_key || fingerprint); the fixed-length fingerprint makes the split
    unambiguous."""
    if not is_fingerprint(fingerprint):
        raise ValueError("a fingerprint is 64 lowercase hex characters")
    return sodium.sha256(key.encode("ascii") + fingerprint.encode("ascii"))
