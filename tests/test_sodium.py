"""The libsodium fast path agrees with PyNaCl's public API, hashlib and hmac; where
``hashlib`` is loaded (here, as at HQ) ``sha256`` and ``hmac_sha256`` are the stdlib's,
and the libsodium ones the gate uses compute the same bytes."""

import hashlib
import hmac
import subprocess
import sys

import nacl.bindings
import nacl.signing
from hypothesis import given
from hypothesis import strategies as st

from agent.wire import sodium


@given(st.binary(max_size=2000))
def test_sha256(data: bytes) -> None:
    assert sodium.sha256(data) == hashlib.sha256(data).digest()


@given(st.binary(max_size=2000))
def test_sha256_of_libsodium_and_of_hashlib_agree(data: bytes) -> None:
    assert sodium.sodium_sha256(data) == sodium.sha256(data) == hashlib.sha256(data).digest()


@given(st.binary(max_size=200), st.binary(max_size=500))
def test_hmac_sha256_any_key_length(key: bytes, message: bytes) -> None:
    assert sodium.hmac_sha256(key, message) == hmac.new(key, message, "sha256").digest()


@given(st.binary(max_size=200), st.binary(max_size=500))
def test_hmac_sha256_of_libsodium_and_of_the_stdlib_agree(key: bytes, message: bytes) -> None:
    reference = hmac.new(key, message, "sha256").digest()
    assert sodium.sodium_hmac_sha256(key, message) == sodium.hmac_sha256(key, message) == reference


def test_the_stdlib_is_used_only_where_hashlib_is_loaded_already() -> None:
    """On the gate (hashlib never imported) the libsodium path runs and loads nothing;
    once hashlib is loaded, the stdlib's is taken, with the same result."""
    probe = (
        "import sys\n"
        "from agent.wire import sodium\n"
        "a = sodium.hmac_sha256(b'k', b'm'), sodium.sha256(b'm')\n"
        "print(sodium._stdlib is None, 'hashlib' in sys.modules, 'hmac' in sys.modules)\n"
        "import hashlib\n"
        "b = sodium.hmac_sha256(b'k', b'm'), sodium.sha256(b'm')\n"
        "print(sodium._stdlib is not None, a == b)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["True", "False", "False", "True", "True"]


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=1000))
def test_ed25519_matches_pynacl(seed: bytes, message: bytes) -> None:
    reference = nacl.signing.SigningKey(seed)
    public, secret = sodium.ed25519_keypair_from_seed(seed)
    assert public == bytes(reference.verify_key)
    signature = sodium.ed25519_sign(secret, message)
    assert signature == reference.sign(message).signature
    assert sodium.ed25519_verify(public, signature, message)
    assert not sodium.ed25519_verify(public, signature, message + b"x")
    bad = bytes([signature[0] ^ 1]) + signature[1:]
    assert not sodium.ed25519_verify(public, bad, message)


@given(
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=24, max_size=24),
    st.binary(max_size=2000),
    st.binary(max_size=64),
)
def test_xchacha20poly1305_matches_pynacl(
    key: bytes, nonce: bytes, plaintext: bytes, aad: bytes
) -> None:
    ciphertext = sodium.aead_encrypt(key, nonce, plaintext, aad)
    assert ciphertext == nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, aad, nonce, key
    )
    assert sodium.aead_decrypt(key, nonce, ciphertext, aad) == plaintext
    assert sodium.aead_decrypt(key, nonce, ciphertext, aad + b"x") is None
    other_key = bytes([key[0] ^ 1]) + key[1:]
    assert sodium.aead_decrypt(other_key, nonce, ciphertext, aad) is None


def test_wrong_sizes_never_verify() -> None:
    assert not sodium.ed25519_verify(b"\x00" * 31, b"\x00" * 64, b"")
    assert not sodium.ed25519_verify(b"\x00" * 32, b"\x00" * 63, b"")
    assert sodium.aead_decrypt(b"\x00" * 32, b"\x00" * 24, b"short", b"") is None
