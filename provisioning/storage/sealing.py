"""License keys sealed at rest: what the ``licenses.license_key`` column holds.

HQ needs each license key in clear to seal a device's machine file (its encryption key
is SHA-256 of license key and fingerprint), so it keeps the key, but not in clear in
the database: each is sealed with XChaCha20-Poly1305 under HQ's license-key secret
(``HOME/license-keys.secret``, provisioning/sealed_keys.py), its license's id the
associated data, so that a database dump, a replica, a ``db copy`` target or a backup
without the secret reveals no key, and a sealed key moved onto another license's row
does not open. The column then reads::

    sealed1:KID:BASE64URL(nonce (24 bytes) || ciphertext || tag)

``KID`` names the secret (16 hex digits of a hash of it, never the secret itself), so
that a home holding another secret says so in one line. A row in clear (written by an
HQ before schema 12, until ``fieldpass-hq db seal-keys``: sealed_keys.py) reads as it
is.

No I/O here: the store hands each transaction its ``LicenseKeys`` (storage/tx.py seals
at ``insert_license`` and opens where a license row is read).
"""

import base64
import binascii
import hashlib
import os

import nacl.bindings
import nacl.exceptions

from ..errors import ConfigError, StorageError

PREFIX = "sealed1:"
SECRET_BYTES = 32
_NONCE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
_AAD = b"fieldpass/license-key/v1\0"
_KID = b"fieldpass/license-keys-secret/v1\0"


def kid_of(secret: bytes) -> str:
    """The public name of a secret (safe to store and print)."""
    return hashlib.sha256(_KID + secret).hexdigest()[:16]


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


class LicenseKeys:
    """Seals and opens license keys; this base holds no secret: it reads keys still in
    clear and refuses sealed ones with ``why`` (a ``ConfigError`` naming what to do)."""

    kid: str | None = None

    def __init__(self, why: str = "") -> None:
        self.why = why or (
            "the license keys in this database are sealed, and this HQ was opened without "
            "its license-key secret"
        )

    def seal(self, license_id: str, key: str) -> str:
        raise ConfigError(self.why)

    def open(self, license_id: str, value: str) -> str:
        if not is_sealed(value):
            return value
        raise ConfigError(self.why)


class SealedLicenseKeys(LicenseKeys):
    """License keys sealed under ``secret``."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SECRET_BYTES:
            raise ConfigError(f"a license-key secret is {SECRET_BYTES} bytes")
        super().__init__()
        self._secret = secret
        self.kid = kid_of(secret)
        self._head = f"{PREFIX}{self.kid}:"

    def seal(self, license_id: str, key: str) -> str:
        nonce = os.urandom(_NONCE)
        box = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            key.encode("ascii"), _AAD + license_id.encode("utf-8"), nonce, self._secret
        )
        return self._head + base64.urlsafe_b64encode(nonce + box).decode("ascii")

    def open(self, license_id: str, value: str) -> str:
        if not is_sealed(value):
            return value
        if not value.startswith(self._head):
            kid = value[len(PREFIX) :].partition(":")[0][:16]
            raise ConfigError(
                f"license {license_id}'s key is sealed with the license-key secret {kid!r}, "
                f"not this home's ({self.kid}): copy license-keys.secret from the HQ home "
                "that sealed it"
            )
        try:
            raw = base64.urlsafe_b64decode(value[len(self._head) :].encode("ascii"))
            plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                raw[_NONCE:], _AAD + license_id.encode("utf-8"), raw[:_NONCE], self._secret
            )
            return plain.decode("ascii")
        except (binascii.Error, ValueError, UnicodeError, nacl.exceptions.CryptoError):
            raise StorageError(
                f"license {license_id}'s sealed key does not open: the row was altered or "
                "moved from another license"
            ) from None


class ClearLicenseKeys(LicenseKeys):
    """Keys kept in clear: a database upgraded from before schema 12 until its keys are
    sealed (``fieldpass-hq db seal-keys``, provisioning/sealed_keys.py)."""

    def seal(self, license_id: str, key: str) -> str:
        return key


UNSEALED = LicenseKeys()
IN_CLEAR = ClearLicenseKeys()
