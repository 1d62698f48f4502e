"""The authenticated A/B state: tampering, foreign copies, future formats, slot choice."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import state
from agent.state import State, StateError

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def test_round_trip_and_alternating_slots(tmp_path: object) -> None:
    d = str(tmp_path)
    assert state.load(d, KEY) is None
    s1 = state.save(d, KEY, State(hwm=100))
    s2 = state.save(d, KEY, s1.replace(boot=1))
    assert (s1.gen, s2.gen) == (1, 2)
    assert state.load(d, KEY) == s2
    names = sorted(p.name for p in __import__("pathlib").Path(d).iterdir())
    assert names == ["state.a", "state.b"]


def test_one_bad_slot_falls_back_to_the_other(tmp_path: object) -> None:
    import pathlib

    d = pathlib.Path(str(tmp_path))
    s1 = state.save(str(d), KEY, State(hwm=100))
    s2 = state.save(str(d), KEY, s1.replace(hwm=200))
    (d / state.SLOTS[s2.gen % 2]).write_bytes(b"\x00garbage")
    assert state.load(str(d), KEY) == s1


@given(st.integers(0, 8 * 150 - 1))
def test_any_bit_flip_is_refused_or_falls_back(bit: int) -> None:
    sealed = state.seal(State(hwm=12345, boot=7, serial=3, activation_id="act"), KEY)
    i = bit % (len(sealed) * 8)
    mutated = bytearray(sealed)
    mutated[i // 8] ^= 1 << (i % 8)
    with pytest.raises(StateError):
        state.unseal(bytes(mutated), KEY)


def test_edited_or_foreign_state_is_detected() -> None:
    sealed = state.seal(State(hwm=10), KEY)
    with pytest.raises(StateError) as caught:
        state.unseal(sealed, OTHER)
    assert caught.value.reason == "state_foreign"


def test_future_format_is_reported_as_such() -> None:
    from agent.wire import cbor

    with pytest.raises(StateError) as caught:
        state.unseal(cbor.dumps({"v": 2, "body": b"", "mac": b""}), KEY)
    assert caught.value.reason == "state_future"


def test_all_slots_bad_is_an_error_never_a_reset(tmp_path: object) -> None:
    import pathlib

    d = pathlib.Path(str(tmp_path))
    (d / "state.a").write_bytes(b"junk")
    (d / "state.b").write_bytes(state.seal(State(), OTHER))
    with pytest.raises(StateError) as caught:
        state.load(str(d), KEY)
    assert caught.value.reason == "state_foreign"
