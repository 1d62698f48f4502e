"""The authenticated A/B state: tampering, foreign copies, future formats, slot choice."""

import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import state
from agent.state import State, StateError

if False:  # typing only
    from agent.wire.machine_file import Claims

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


# -- the record of returned activations --------------------------------------------------


def _sealed_record(record: dict[str, object]) -> bytes:
    from agent.wire import cbor, sodium

    body = cbor.dumps(record)
    return cbor.dumps(
        {"v": 2, "body": body, "mac": sodium.hmac_sha256(KEY, state.MAC_CONTEXT + body)}
    )


def test_the_returned_record_round_trips_and_an_earlier_agents_state_loads(
    tmp_path: object,
) -> None:
    d = str(tmp_path)
    kept = State(activation_id="act_3", returned_ids=("act_1", "act_2"), returned_at=50)
    saved = state.save(d, KEY, kept)
    assert state.load(d, KEY) == saved and saved.returned_ids == ("act_1", "act_2")
    # What the agent before the record wrote: every field but returned_ids. It loads as
    # an empty record, and a state with none is written as that agent wrote it.
    earlier = State(activation_id="act_1", returned_at=50).to_dict()
    assert "returned_ids" not in earlier
    loaded = state.unseal(_sealed_record(earlier), KEY)
    assert loaded.returned_ids == () and loaded.returned_at == 50
    assert state.seal(loaded, KEY) == _sealed_record(earlier)


def test_a_bad_returned_record_is_refused() -> None:
    good = State(hwm=10).to_dict()
    long_id = "a" * 200
    for bad in (
        [],  # an empty record is never written
        ["act_1", "act_1"],
        [f"act_{n}" for n in range(state.MAX_RETURNED + 1)],
        [f"{n:03d}" + long_id[3:] for n in range(6)],  # 1,200 characters
        ["act_1", 7],
        [""],
        "act_1",
        [["act_1"]],  # nested: also past the parser's depth bound
    ):
        with pytest.raises(StateError) as caught:
            state.unseal(_sealed_record({**good, "returned_ids": bad}), KEY)
        assert caught.value.reason == "state_corrupt"


def test_the_fullest_record_fits_the_state_parsers_bound() -> None:
    """MAX_RETURNED_CHARS of the longest ids the wire allows, beside a full state."""
    ids: tuple[str, ...] = ()
    for n in range(40):
        ids = state.remember_return(ids, f"{n:03d}" + "x" * 197)
    assert sum(map(len, ids)) <= state.MAX_RETURNED_CHARS and len(ids) == 5
    for n in range(40):
        ids = state.remember_return(ids, f"act_{n:020x}")
    assert len(ids) == state.MAX_RETURNED and ids[-1] == f"act_{39:020x}"
    full = State(
        hwm=253_402_300_000, activation_id="a" * 200, usage={f"c{n}": 1 << 60 for n in range(8)}
    )
    for record in (ids, tuple(f"{n:03d}" + "x" * 197 for n in range(5))):
        sealed = state.seal(full.replace(returned_ids=record), KEY)
        assert len(sealed) < state.MAX_STATE_BYTES
        assert state.unseal(sealed, KEY).returned_ids == record


def _claims(activation_id: str, serial: int, issued_at: int) -> "Claims":
    from agent.wire.machine_file import Claims

    return Claims(
        license_id="lic_x",
        product="p",
        plan="q",
        activation_id=activation_id,
        fingerprint="ab" * 32,
        issued_at=issued_at,
        not_before=issued_at,
        expires_at=issued_at + 86400,
        grace_s=0,
        warn_s=0,
        serial=serial,
        kid="fpk_x",
    )


def _fits(ids: tuple[str, ...]) -> bool:
    return len(ids) <= state.MAX_RETURNED and sum(map(len, ids)) <= state.MAX_RETURNED_CHARS


_ops = st.lists(
    st.tuples(
        st.sampled_from(["return", "activate", "renew", "bound", "check"]), st.integers(0, 40)
    ),
    max_size=60,
)


@given(_ops, st.integers(3, 200))
def test_the_returned_record_only_grows_and_keeps_the_last_returns(
    ops: list[tuple[str, int]], id_len: int
) -> None:
    """Whatever the device does (give back, activate anew, renew, boot) and however long
    HQ's ids are: only a return changes the record, and only by adding the id given back
    and dropping the oldest beyond the bounds; the files of the last returns that fit
    are refused from then on; the state round-trips through its seal."""
    from agent import verdict as v

    current = State()
    given_back: list[str] = []
    t = 1_700_000_000
    for op, n in ops:
        before = current.returned_ids
        t += 60
        if op == "return" and current.activation_id and not current.returned_at:
            current = v.give_back(current, t)
            new = current.activation_id
            given_back.append(new)
            after = current.returned_ids
            grown = (*(a for a in before if a != new), new)
            # the longest tail of the grown record that fits the bounds: nothing else lost
            assert after == grown[-len(after) :]
            assert after == grown or not _fits(grown[-len(after) - 1 :])
        elif op == "activate":
            found = _claims(f"{n:03d}".ljust(id_len, "x"), 1, t)
            if v.given_back(found, current):  # refused by every caller
                assert found.activation_id in given_back
                continue
            current = v.absorb(found, current)
        elif op in ("renew", "bound") and current.activation_id and not current.returned_at:
            renewal = _claims(current.activation_id, current.serial + 1, t)
            current = v.absorb(renewal, current, bound=op == "bound")
        elif op == "check":
            current = v.advance(current, t, v.Verdict(v.VALID, ""))
        if op != "return":
            assert current.returned_ids == before
        assert _fits(current.returned_ids)
        assert state.unseal(state.seal(current, KEY), KEY) == current
    chars = 0
    for act in list(dict.fromkeys(reversed(given_back)))[: state.MAX_RETURNED]:  # newest first
        chars += len(act)
        if chars > state.MAX_RETURNED_CHARS:
            break
        assert act in current.returned_ids
        assert v.given_back(_claims(act, 99, t + 60), current)


def _fullest() -> State:
    """Every field at the longest or largest the rules allow: texts of fields.MAX_TEXT,
    MAX_USAGE_COUNTERS counters of the longest names a plan may declare at the largest
    count, the fullest record of returned activations."""
    from agent.wire.fields import MAX_NAME, MAX_TEXT, MAX_TIME_S, MAX_UINT

    ids: tuple[str, ...] = ()
    for n in range(100):
        ids = state.remember_return(ids, f"{n:03d}" + "x" * 61)
    usage = {f"{n:02d}".ljust(MAX_NAME, "c"): MAX_UINT for n in range(state.MAX_USAGE_COUNTERS)}
    return State(
        gen=MAX_UINT - 10, boot=MAX_UINT, hwm=MAX_TIME_S, activation_id="a" * MAX_TEXT,
        serial=MAX_UINT, issued_at=MAX_TIME_S, revoked="r" * MAX_TEXT, revoked_at=MAX_TIME_S,
        lifted_at=MAX_TIME_S, returned_at=MAX_TIME_S, last_verdict="v" * MAX_TEXT,
        id_source="i" * MAX_TEXT, tpm=MAX_UINT, unrecorded_mark=MAX_TIME_S, usage=usage,
        usage_at=MAX_TIME_S, usage_stop=MAX_TIME_S, report_seq=MAX_UINT, returned_ids=ids,
    )  # fmt: skip


def test_the_fullest_state_the_rules_allow_is_saved_and_loads(tmp_path: object) -> None:
    """It was 7,005 bytes against a bound of 4,096: a plan declaring 64 counters with
    long names made a state the device wrote and then refused as corrupt at the next
    boot. Every field at its largest now saves and loads back equal."""
    import pathlib

    directory = pathlib.Path(str(tmp_path))
    fullest = _fullest()
    assert len(state.seal(fullest, KEY)) > 4096  # what the bound was
    saved = state.save(str(directory), KEY, fullest)
    loaded = state.load(str(directory), KEY)
    assert loaded is not None
    assert loaded.to_dict() == saved.to_dict()


def test_a_state_past_the_bound_is_not_written_and_the_slots_keep_theirs(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never a slot that load would refuse: past the bound (the bound lowered here, as
    no state the rules allow reaches it), the write fails as a full disk does, and
    what the slots held still loads."""
    import errno
    import pathlib

    directory = pathlib.Path(str(tmp_path))
    first = state.save(str(directory), KEY, State(activation_id="act_1"))
    slots = {p.name: p.read_bytes() for p in directory.iterdir()}
    monkeypatch.setattr(state, "MAX_STATE_BYTES", len(state.seal(first, KEY)) + 20)
    with pytest.raises(OSError) as caught:
        state.save(str(directory), KEY, first.replace(usage={"c" * 64: 1, "d" * 64: 2}))
    assert caught.value.errno == errno.EFBIG and "over its" in str(caught.value)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == slots
    loaded = state.load(str(directory), KEY)
    assert loaded is not None and loaded.to_dict() == first.to_dict()


def test_both_slots_take_a_lasting_change_and_a_full_disk_at_the_second_is_no_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``both``: either slot alone holds the new state. The disk filling up between the
    two writes cannot be timed on a real disk, so the second write's ENOSPC is raised
    by hand: the state stays saved in the slot written first, as without ``both``."""
    import errno

    d = str(tmp_path)
    first = state.save(d, KEY, State(activation_id="act_1", serial=1))
    saved = state.save(d, KEY, first.replace(revoked="revoked", revoked_at=5), both=True)
    for slot in state.SLOTS:
        blob = (tmp_path / slot).read_bytes()
        assert state.unseal(blob, KEY).revoked == "revoked"
    assert state.lasting_change(first, saved) and not state.lasting_change(
        saved, saved.replace(boot=saved.boot + 1, hwm=99)
    )
    writes: list[int] = []
    real = state._write

    def disk_fills(state_dir: str, st: State, key: bytes) -> None:
        writes.append(st.gen)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(state_dir, st, key)

    monkeypatch.setattr(state, "_write", disk_fills)
    lifted = state.save(d, KEY, saved.replace(revoked="", lifted_at=9), both=True)
    assert writes == [saved.gen + 1, saved.gen + 2] and lifted.gen == saved.gen + 1
    monkeypatch.undo()
    assert state.load(d, KEY) == lifted
