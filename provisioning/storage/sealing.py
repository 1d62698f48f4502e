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
from collections.abc import Callable

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


def kid_in(value: str) -> str:
    """The name of the secret a sealed value names."""
    return value[len(PREFIX) :].partition(":")[0][:16]


class LicenseKeys:
    """Seals and opens license keys; this base holds no secret: it reads keys still in
    clear and refuses sealed ones with ``why`` (a ``ConfigError`` naming what to do).
    ``usable``: False for this base (a home without the database's secret)."""

    kid: str | None = None
    usable = False

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

    usable = True

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
            kid = kid_in(value)
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
    sealed (``fieldpass-hq db seal-keys``, provisioning/sealed_keys.py). A sealed key
    met meanwhile (sealed by ``db seal-keys`` while this process runs) opens with the
    secret ``load_secret`` gives (the home's) if it is the one the value names; from
    then on new keys are sealed too."""

    usable = True

    def __init__(self, load_secret: Callable[[], bytes | None] = lambda: None) -> None:
        super().__init__()
        self._load_secret = load_secret
        self._sealed: SealedLicenseKeys | None = None

    def _sealing(self, value: str) -> SealedLicenseKeys:
        if self._sealed is None:
            secret = self._load_secret()
            if secret is None or kid_of(secret) != kid_in(value):
                raise ConfigError(
                    f"the license keys were sealed (secret {kid_in(value)!r}) since this HQ "
                    "started, and its home holds "
                    + ("no license-key secret" if secret is None else "another")
                    + ": copy license-keys.secret from the home that sealed them and restart"
                )
            self._sealed = SealedLicenseKeys(secret)
        return self._sealed

    def seal(self, license_id: str, key: str) -> str:
        return key if self._sealed is None else self._sealed.seal(license_id, key)

    def open(self, license_id: str, value: str) -> str:
        if not is_sealed(value):
            return value
        return self._sealing(value).open(license_id, value)


UNSEALED = LicenseKeys()
