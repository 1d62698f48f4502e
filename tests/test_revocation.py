"""The signed revocation: verified before it is read, bound to one activation."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.wire import cbor, errors
from agent.wire.keys import Keyring, SigningKey
from agent.wire.revocation import Revocation, sign_revocation, verify_revocation

HQ_KEY = SigningKey(bytes(range(32)))
KEYRING = Keyring.of(HQ_KEY.public_key)


@given(
    st.text(min_size=1, max_size=50),
    st.integers(0, 253_402_300_799),
    st.sampled_from(["revoked", "suspended", "deactivated"]),
)
def test_round_trip(activation: str, t: int, reason: str) -> None:
    token = sign_revocation(HQ_KEY, Revocation(activation, t, reason))
    got = verify_revocation(token, KEYRING, activation)
    assert (got.activation_id, got.issued_at, got.reason) == (activation, t, reason)
    with pytest.raises(errors.ClaimMismatchError):
        verify_revocation(token, KEYRING, activation + "x")


def test_every_bit_flip_and_other_keys_refused() -> None:
    token = sign_revocation(HQ_KEY, Revocation("act_1", 1000, "revoked"))
    for i in range(len(token) * 8):
        mutated = bytearray(token)
        mutated[i // 8] ^= 1 << (i % 8)
        with pytest.raises(errors.WireError):
            verify_revocation(bytes(mutated), KEYRING, "act_1")
    stranger = sign_revocation(SigningKey(bytes(32)), Revocation("act_1", 1000, "revoked"))
    with pytest.raises(errors.UnknownKeyError):
        verify_revocation(stranger, KEYRING, "act_1")
    unsigned = cbor.dumps({"kid": HQ_KEY.kid, "msg": b"", "sig": bytes(64)})
    with pytest.raises(errors.SignatureError):
        verify_revocation(unsigned, KEYRING, "act_1")


def test_times_out_of_range_and_bools_are_refused() -> None:
    from agent.wire.signed import sign_message

    for body in (
        {
            "v": 1,
            "type": "revocation",
            "activation_id": "a",
            "issued_at": 1 << 40 << 20,
            "reason": "revoked",
        },
        {
            "v": True,
            "type": "revocation",
            "activation_id": "a",
            "issued_at": 5,
            "reason": "revoked",
        },
        {
            "v": 1,
            "type": "revocation",
            "activation_id": "a",
            "issued_at": True,
            "reason": "revoked",
        },
    ):
        token = sign_message(HQ_KEY, b"revocation/", body)
        with pytest.raises(errors.WireError):
            verify_revocation(token, KEYRING, "a")
