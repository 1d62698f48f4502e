"""The cryptographic primitives of the wire format, called straight into libsodium.

Why not ``nacl.signing`` / ``nacl.bindings`` / ``hashlib``? They are the reference, and
``tests/test_sodium.py`` proves with hypothesis that every function here agrees with
them, but on the boot path they cost more than the whole gate may: ``nacl.bindings``
imports ``typing`` (+13 ms) and ``hashlib`` loads OpenSSL (+4 MiB RSS). libsodium,
already loaded by PyNaCl's compiled ``_sodium`` module (+1 ms), has everything the
format needs. See docs/performance.md.

Where ``hashlib`` is loaded already (HQ: the price of OpenSSL is paid), ``sha256`` and
``hmac_sha256`` use it and OpenSSL's one-shot HMAC (what ``hmac.digest`` calls), a fifth
of the cost of building HMAC's pads here per call, found in ``sys.modules``, never
imported (the device's image has no ``hashlib``); the gate, which never loads it, keeps
the libsodium ones. Both compute the same bytes (tests/test_sodium.py proves each
against the other).

Everything here is pure: bytes in, bytes or a boolean out.
"""

import sys

from nacl._sodium import ffi, lib

if False:  # typing only (the gate cannot afford ``typing``)
    from collections.abc import Callable

    _Stdlib = tuple[Callable[[bytes], bytes], Callable[[bytes, bytes, str], bytes]]

if lib.sodium_init() < 0:  # pragma: no cover - libsodium refuses only on a broken system
    raise ImportError("libsodium failed to initialise")

SHA256_BYTES = 32
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
SECRET_KEY_BYTES = 64
AEAD_KEY_BYTES = 32
AEAD_NONCE_BYTES = 24
AEAD_TAG_BYTES = 16
_HMAC_BLOCK = 64

# hashlib's SHA-256 and OpenSSL's one-shot HMAC (what hmac.digest calls), once loaded.
_stdlib: "_Stdlib | None" = None


def _loaded_stdlib() -> "_Stdlib | None":
    """The C SHA-256 and HMAC of ``hashlib`` if something loaded it already; never
    imports it (nor anything: the gate must not pay for OpenSSL, and the device's image
    holds no ``hashlib``). None otherwise."""
    global _stdlib
    if _stdlib is None:
        hashlib, openssl = sys.modules.get("hashlib"), sys.modules.get("_hashlib")
        if hashlib is not None and openssl is not None:
            new = hashlib.sha256

            def sha256(data: bytes) -> bytes:
                digest: bytes = new(data).digest()
                return digest

            _stdlib = (sha256, openssl.hmac_digest)
    return _stdlib


def sha256(data: bytes) -> bytes:
    stdlib = _stdlib or _loaded_stdlib()
    if stdlib is not None:
        return stdlib[0](data)
    return sodium_sha256(data)


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """RFC 2104 HMAC-SHA256 (any key length)."""
    stdlib = _stdlib or _loaded_stdlib()
    if stdlib is not None:
        return stdlib[1](key, message, "sha256")
    return sodium_hmac_sha256(key, message)


def sodium_sha256(data: bytes) -> bytes:
    """libsodium's SHA-256 (what ``sha256`` is where ``hashlib`` is not loaded)."""
    out = ffi.new("unsigned char[]", SHA256_BYTES)
    lib.crypto_hash_sha256(out, data, len(data))
    return bytes(ffi.buffer(out, SHA256_BYTES))


def sodium_hmac_sha256(key: bytes, message: bytes) -> bytes:
    """RFC 2104 HMAC-SHA256 built on libsodium's SHA-256 (``hmac_sha256`` on the gate)."""
    if len(key) > _HMAC_BLOCK:
        key = sodium_sha256(key)
    key = key.ljust(_HMAC_BLOCK, b"\0")
    inner = sodium_sha256(bytes(b ^ 0x36 for b in key) + message)
    return sodium_sha256(bytes(b ^ 0x5C for b in key) + inner)


def constant_time_equal(a: bytes, b: bytes) -> bool:
    if len(a) != len(b):
        return False
    return bool(lib.sodium_memcmp(a, b, len(a)) == 0)


def random_bytes(n: int) -> bytes:
    """Random bytes from the OS (``os.urandom`` is getrandom(2) underneath)."""
    import os

    return os.urandom(n)


def ed25519_keypair_from_seed(seed: bytes) -> tuple[bytes, bytes]:
    """Return ``(public_key, secret_key)`` for a 32-byte seed."""
    if len(seed) != SEED_BYTES:
        raise ValueError("an Ed25519 seed is 32 bytes")
    pk = ffi.new("unsigned char[]", PUBLIC_KEY_BYTES)
    sk = ffi.new("unsigned char[]", SECRET_KEY_BYTES)
    lib.crypto_sign_seed_keypair(pk, sk, seed)
    return bytes(ffi.buffer(pk, PUBLIC_KEY_BYTES)), bytes(ffi.buffer(sk, SECRET_KEY_BYTES))


def ed25519_sign(secret_key: bytes, message: bytes) -> bytes:
    """Detached Ed25519 signature (64 bytes) of ``message``."""
    if len(secret_key) != SECRET_KEY_BYTES:
        raise ValueError("an Ed25519 secret key is 64 bytes")
    signed = ffi.new("unsigned char[]", len(message) + SIGNATURE_BYTES)
    signed_len = ffi.new("unsigned long long *")
    lib.crypto_sign(signed, signed_len, message, len(message), secret_key)
    return bytes(ffi.buffer(signed, SIGNATURE_BYTES))


def ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True only if ``signature`` is a valid Ed25519 signature of exactly ``message``."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    signed = signature + message
    out = ffi.new("unsigned char[]", max(len(message), 1))
    out_len = ffi.new("unsigned long long *")
    return bool(lib.crypto_sign_open(out, out_len, signed, len(signed), public_key) == 0)


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """XChaCha20-Poly1305 (IETF): ciphertext followed by the 16-byte tag."""
    if len(key) != AEAD_KEY_BYTES or len(nonce) != AEAD_NONCE_BYTES:
        raise ValueError("XChaCha20-Poly1305 takes a 32-byte key and a 24-byte nonce")
    out = ffi.new("unsigned char[]", len(plaintext) + AEAD_TAG_BYTES)
    out_len = ffi.new("unsigned long long *")
    lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out, out_len, plaintext, len(plaintext), aad, len(aad), ffi.NULL, nonce, key
    )
    return bytes(ffi.buffer(out, out_len[0]))


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes | None:
    """Plaintext, or None when the key, nonce, data or tag do not match."""
    if (
        len(key) != AEAD_KEY_BYTES
        or len(nonce) != AEAD_NONCE_BYTES
        or len(ciphertext) < AEAD_TAG_BYTES
    ):
        return None
    out = ffi.new("unsigned char[]", max(len(ciphertext) - AEAD_TAG_BYTES, 1))
    out_len = ffi.new("unsigned long long *")
    rc = lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
        out, out_len, ffi.NULL, ciphertext, len(ciphertext), aad, len(aad), nonce, key
    )
    if rc != 0:
        return None
    return bytes(ffi.buffer(out, out_len[0]))
