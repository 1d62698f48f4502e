"""Signing keys (HQ) and the keyring of trusted public keys (device).

Key ids are derived from the public key, so a keyring line whose id does not match its
key is refused: a typo cannot make the device trust the wrong key under a known id.

Keyring file (text, UTF-8; ``#`` comments and blank lines ignored, CRLF accepted)::

    # key-id              algorithm  public key (base64, 32 bytes)
    fpk_3f2a9c0d51e8b7a4  ed25519    mR0b0t...=
"""

import binascii

from . import sodium
from .errors import FormatError

ALGORITHM = "ed25519"
MAX_KEYRING_BYTES = 64 * 1024


def key_id(public_key: bytes) -> str:
    return "fpk_" + sodium.sha256(b"fieldpass/key-id\0" + public_key)[:8].hex()


class SigningKey:
    """An Ed25519 signing key. ``repr`` never shows the seed."""

    __slots__ = ("_kid", "_public", "_secret", "seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != sodium.SEED_BYTES:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self.seed = seed
        self._public, self._secret = sodium.ed25519_keypair_from_seed(seed)
        self._kid = key_id(self._public)

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigningKey) and other.seed == self.seed

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(sodium.random_bytes(sodium.SEED_BYTES))

    @property
    def public_key(self) -> bytes:
        return self._public

    @property
    def kid(self) -> str:
        return self._kid

    def sign(self, message: bytes) -> bytes:
        return sodium.ed25519_sign(self._secret, message)


class Keyring:
    """Trusted public keys by key id."""

    __slots__ = ("keys",)

    def __init__(self, keys: dict[str, bytes]) -> None:
        self.keys = dict(keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keyring) and other.keys == self.keys

    __hash__ = None  # type: ignore[assignment]

    def get(self, kid: str) -> bytes | None:
        return self.keys.get(kid)

    def dumps(self) -> str:
        lines = ["# Fieldpass keyring: public keys trusted to sign machine files"]
        for kid, public_key in sorted(self.keys.items()):
            b64 = binascii.b2a_base64(public_key, newline=False).decode("ascii")
            lines.append(f"{kid} {ALGORITHM} {b64}")
        return "\n".join(lines) + "\n"

    @classmethod
    def of(cls, *public_keys: bytes) -> "Keyring":
        return cls({key_id(pk): pk for pk in public_keys})

    @classmethod
    def loads(cls, data: bytes) -> "Keyring":
        if len(data) > MAX_KEYRING_BYTES:
            raise FormatError("keyring file is too large")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError("keyring is not UTF-8 text") from e
        keys: dict[str, bytes] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 3:
                raise FormatError(f"keyring line {number}: expected 'KEY-ID ed25519 BASE64'")
            kid, algorithm, b64 = parts
            if algorithm != ALGORITHM:
                raise FormatError(f"keyring line {number}: unsupported algorithm {algorithm!r}")
            try:
                public_key = binascii.a2b_base64(b64, strict_mode=True)
            except binascii.Error as e:
                raise FormatError(f"keyring line {number}: invalid base64") from e
            if len(public_key) != sodium.PUBLIC_KEY_BYTES:
                raise FormatError(f"keyring line {number}: an Ed25519 key is 32 bytes")
            if key_id(public_key) != kid:
                raise FormatError(f"keyring line {number}: key id {kid} does not match its key")
            keys[kid] = public_key
        if not keys:
            raise FormatError("keyring holds no keys")
        return cls(keys)
