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
        state.unseal(cbor.dumps({"v": 3, "body": b"", "mac": b""}), KEY)
    assert caught.value.reason == "state_future"


def test_all_slots_bad_is_an_error_never_a_reset(tmp_path: object) -> None:
    import pathlib

    d = pathlib.Path(str(tmp_path))
    (d / "state.a").write_bytes(b"junk")
    (d / "state.b").write_bytes(state.seal(State(), OTHER))
    with pytest.raises(StateError) as caught:
        state.load(str(d), KEY)
    assert caught.value.reason == "state_foreign"


def test_bools_and_out_of_range_fields_are_refused() -> None:
    from agent.wire import cbor, sodium

    good = State(hwm=10).to_dict()
    for change in ({"boot": True}, {"hwm": 1 << 62}, {"tpm": True}, {"usage": {"x y": 1}}):
        body = cbor.dumps({**good, **change})
        mac = sodium.hmac_sha256(KEY, state.MAC_CONTEXT + body)
        sealed = cbor.dumps({"v": 2, "body": body, "mac": mac, "src": ""})
        with pytest.raises(StateError):
            state.unseal(sealed, KEY)
    with pytest.raises(StateError):
        outer = cbor.loads(state.seal(State(), KEY))
        assert isinstance(outer, dict)
        state.unseal(cbor.dumps({**outer, "v": True}), KEY)


def test_a_version_1_slot_is_read_only_while_no_version_2_exists(tmp_path: object) -> None:
    import pathlib

    d = pathlib.Path(str(tmp_path))
    legacy = State(hwm=100, serial=4, activation_id="act", gen=9)
    (d / "state.a").write_bytes(state.seal_legacy(legacy, OTHER))
    got = state.load(str(d), KEY, OTHER)
    assert got is not None and got.legacy and got.serial == 4
    saved = state.save(str(d), KEY, got.replace(hwm=200))
    # the migration writes version 2 to both slots: no v1 slot remains to fall back to
    assert all(state.parse_slot((d / n).read_bytes()).version == 2 for n in state.SLOTS)
    assert state.load(str(d), KEY, OTHER) == saved.replace()
    # a v1 slot planted beside a v2 one is never read, even if the v2 slot is damaged
    (d / "state.a").write_bytes(state.seal_legacy(legacy, OTHER))
    (d / "state.b").write_bytes(b"junk")
    with pytest.raises(StateError):
        state.load(str(d), KEY, OTHER)
