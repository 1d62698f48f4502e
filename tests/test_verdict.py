"""The verdict rules over arbitrary times (pure core: no files, no clock)."""

from hypothesis import assume, given
from hypothesis import strategies as st

from agent import verdict as v
from agent.state import State
from agent.wire.machine_file import Claims

FP = "ab" * 32
DAY = 86400


def claims(issued_at: int, ttl: int, grace: int, warn: int, **kw: object) -> Claims:
    return Claims(
        license_id="lic_x",
        product="p",
        plan="q",
        activation_id=kw.pop("activation_id", "act"),  # type: ignore[arg-type]
        fingerprint=FP,
        issued_at=issued_at,
        not_before=issued_at,
        expires_at=issued_at + ttl,
        grace_s=grace,
        warn_s=warn,
        serial=kw.pop("serial", 1),  # type: ignore[arg-type]
        kid="fpk_x",
        **kw,  # type: ignore[arg-type]
    )


times = st.integers(1_600_000_000, 2_200_000_000)
ttls = st.integers(DAY, 400 * DAY)
graces = st.integers(0, 60 * DAY)
tolerances = st.integers(0, 3600)


@given(times, ttls, graces, st.integers(0, 400 * DAY), st.integers(0, 800 * DAY), tolerances)
def test_truthful_clock_follows_the_table(
    t0: int, ttl: int, grace: int, warn: int, elapsed: int, tol: int
) -> None:
    c = claims(t0, ttl, grace, warn)
    now = t0 + elapsed
    result = v.decide(c, State(hwm=t0), now, tolerance_s=tol)
    if now < c.expires_at:
        assert result.name == v.VALID and result.exit_code == 0
        assert bool(result.warning) == (c.expires_at - now <= warn)
    elif now < c.expires_at + grace:
        assert result.name == v.GRACE and result.exit_code == 10 and result.limited
    else:
        assert result.name == v.EXPIRED and result.exit_code == 20


@given(times, ttls, graces, st.integers(1, 400 * DAY), tolerances, st.sampled_from(["strict"]))
def test_clock_behind_the_mark_beyond_tolerance_is_rollback(
    t0: int, ttl: int, grace: int, back: int, tol: int, policy: str
) -> None:
    c = claims(t0, ttl, grace, 0)
    hwm = t0 + ttl // 2
    now = hwm - tol - back
    assert v.decide(c, State(hwm=hwm), now, policy=policy, tolerance_s=tol).name == v.ROLLBACK


@given(times, ttls, st.integers(0, 3600), st.integers(0, 3600))
def test_clock_behind_within_tolerance_is_fine(t0: int, ttl: int, tol: int, back: int) -> None:
    assume(back <= tol)
    c = claims(t0, ttl, 0, 0)
    hwm = t0 + ttl // 2
    assert v.decide(c, State(hwm=hwm), hwm - back, tolerance_s=tol).name == v.VALID


@given(times, ttls, graces, st.integers(0, 2_000 * DAY), st.integers(0, 2_000 * DAY))
def test_floor_policy_never_gains_time_from_a_reset(
    t0: int, ttl: int, grace: int, hwm_after: int, back: int
) -> None:
    """Under floor, a clock set back decides as if it read the mark: never better."""
    c = claims(t0, ttl, grace, 0)
    hwm = t0 + hwm_after
    at_mark = v.decide(c, State(hwm=hwm), hwm, policy="floor", tolerance_s=0)
    set_back = v.decide(c, State(hwm=hwm), max(0, hwm - back), policy="floor", tolerance_s=0)
    assert set_back.name == at_mark.name
    assert set_back.name != v.ROLLBACK


@given(times, ttls, st.integers(301, 100 * DAY))
def test_issued_in_the_future_is_rollback(t0: int, ttl: int, ahead: int) -> None:
    c = claims(t0, ttl, 0, 0)
    assert v.decide(c, State(), t0 - ahead, tolerance_s=300).name == v.ROLLBACK


@given(times, ttls, st.integers(0, 800 * DAY))
def test_revoked_wins_over_everything(t0: int, ttl: int, elapsed: int) -> None:
    c = claims(t0, ttl, 0, 0)
    st_ = State(hwm=t0, revoked="revoked", revoked_at=t0)
    assert v.decide(c, st_, t0 + elapsed).exit_code == 32


@given(times, ttls, st.integers(0, 800 * DAY), st.integers(1, 400 * DAY))
def test_license_term_ends_hard(t0: int, ttl: int, elapsed: int, term: int) -> None:
    c = claims(t0, ttl, 30 * DAY, 0, license_expires_at=t0 + term)
    result = v.decide(c, State(hwm=t0), t0 + elapsed)
    if elapsed >= term:
        assert result.name == v.EXPIRED and result.reason == "license_expired"


@given(times, st.integers(0, 1 << 40), st.integers(0, 10_000_000))
def test_advance_never_lowers_the_mark_and_counts_boots(hwm: int, now: int, boots: int) -> None:
    c = claims(1_600_000_000, DAY, 0, 0)
    st_ = State(hwm=hwm, boot=boots)
    result = v.decide(c, st_, now)
    after = v.advance(st_, now, result)
    assert after.hwm >= hwm and after.boot == boots + 1
    if result.name == v.ROLLBACK:
        assert after.hwm == hwm


def test_downgrade_ordering() -> None:
    a1, a2 = claims(1000, DAY, 0, 0, serial=1), claims(2000, DAY, 0, 0, serial=2)
    st_ = v.absorb(a2, State())
    assert v.compare(a1, st_) == v.OLDER
    assert v.compare(a2, st_) == v.SAME
    assert v.compare(claims(3000, DAY, 0, 0, serial=3), st_) == v.NEWER
    assert v.compare(a1, None) == v.NEWER


def test_a_new_activation_is_newer_if_issued_later_or_bound_to_the_nonce_just_sent() -> None:
    """Activated, returned and activated again within one second: the new activation's
    file carries the same issued-at. Bound to the nonce just sent it is HQ's answer now;
    a copied file of another activation (not bound) must be issued later."""
    st_ = v.absorb(claims(2000, DAY, 0, 0, serial=4), State())
    again = claims(2000, DAY, 0, 0, serial=1, activation_id="act_2")
    assert v.compare(again, st_) == v.OLDER
    assert v.compare(again, st_, bound=True) == v.NEWER
    earlier = claims(1500, DAY, 0, 0, serial=9, activation_id="act_0")
    assert v.compare(earlier, st_) == v.OLDER
    assert v.compare(claims(2001, DAY, 0, 0, activation_id="act_3"), st_) == v.NEWER
    # within one activation the serial decides, bound or not
    assert v.compare(claims(9000, DAY, 0, 0, serial=3), st_, bound=True) == v.OLDER
    # given back: another activation's file of the same second is still older unbound
    # (a copy of one a push issued at that second), newer bound to the nonce just sent
    given = st_.replace(returned_at=2000)
    assert v.compare(again, given) == v.OLDER
    assert v.compare(again, given, bound=True) == v.NEWER


def test_absorb_raises_the_mark_and_lifts_a_revocation_hq_superseded() -> None:
    st_ = State(hwm=5_000_000_000, revoked="revoked", revoked_at=1500)
    after = v.absorb(claims(2000, DAY, 0, 0, serial=2), st_)
    # A file's issued-at never lowers the mark (stockpiled renewals must not wind it back)
    assert after.hwm == 5_000_000_000 and after.revoked == "" and after.lifted_at == 2000
    raised = v.absorb(claims(6_000_000_000, DAY, 0, 0, serial=3), after)
    assert raised.hwm == 6_000_000_000
    still = v.absorb(claims(1000, DAY, 0, 0, serial=2), State(revoked="revoked", revoked_at=1500))
    assert still.revoked == "revoked"


def test_a_return_is_of_one_activation() -> None:
    """Returned, then activated again: the new activation is not returned (its renewals
    install), and the returned one's file is older than it."""
    given = v.absorb(claims(2000, DAY, 0, 0, serial=4), State()).replace(returned_at=2100)
    assert v.absorb(claims(2000, DAY, 0, 0, serial=5), given).returned_at == 2100
    again = v.absorb(claims(2200, DAY, 0, 0, serial=1, activation_id="act_2"), given)
    assert again.returned_at == 0 and again.activation_id == "act_2"
    assert v.compare(claims(2000, DAY, 0, 0, serial=4), again) == v.OLDER


def test_only_a_file_bound_to_a_fresh_nonce_lowers_the_mark() -> None:
    st_ = State(hwm=5_000_000_000)
    assert v.absorb(claims(2000, DAY, 0, 0, serial=2), st_, bound=True).hwm == 2000


@given(st.integers(0, 10**10), st.lists(st.integers(0, 10**10), min_size=1, max_size=8))
def test_unbound_files_never_lower_the_mark(hwm: int, issued: list[int]) -> None:
    state_ = State(hwm=hwm)
    for serial, t in enumerate(issued, start=2):
        state_ = v.absorb(claims(t, DAY, 0, 0, serial=serial), state_)
    assert state_.hwm == max([hwm, *issued])


def test_revocations_at_or_before_a_lift_are_stale() -> None:
    lifted = v.lift(State(revoked="suspended", revoked_at=100, issued_at=50), 200)
    assert lifted.revoked == "" and lifted.lifted_at == 200
    assert v.is_stale_revocation(lifted, 150) and v.is_stale_revocation(lifted, 200)
    assert not v.is_stale_revocation(lifted, 201)


def test_not_yet_valid_is_its_own_reason() -> None:
    t0 = 1_800_000_000
    c = Claims(
        license_id="lic_00000000000000000000",
        product="p",
        plan="p",
        activation_id="act",
        fingerprint="ab" * 32,
        issued_at=t0,
        not_before=t0 + 10 * DAY,
        expires_at=t0 + 40 * DAY,
        grace_s=0,
        warn_s=0,
        serial=1,
        kid="fpk_x",
    )
    result = v.decide(c, State(hwm=t0), t0 + DAY)
    assert result.name == v.ROLLBACK and result.reason == "not_yet_valid"
    assert result.message.startswith("Machine file is valid from 20")
    assert v.decide(c, State(hwm=t0), t0 + 11 * DAY).name == v.VALID


def test_unrecorded_boots_degrade_valid_to_limited_mode() -> None:
    t0 = 1_800_000_000
    ok = v.decide(claims(t0, 365 * DAY, 0, 0), State(hwm=t0), t0)
    assert v.degrade_unrecorded(ok, v.MAX_UNRECORDED_BOOTS - 1) is ok
    limited = v.degrade_unrecorded(ok, v.MAX_UNRECORDED_BOOTS)
    assert limited.name == v.GRACE and limited.reason == "state_unrecorded"
    assert limited.exit_code == 10


def test_messages_read_as_the_brief_says() -> None:
    t0 = 1_800_000_000
    c = claims(t0, 365 * DAY, 30 * DAY, 90 * DAY)
    assert (
        v.decide(c, State(hwm=t0), t0).message == "License valid until 2028-01-15 (365 days left)"
    )
    warned = v.decide(c, State(hwm=t0), t0 + 300 * DAY)
    assert warned.warning == "Offline license expires in 65 days: connect to extend"
    grace = v.decide(c, State(hwm=t0), t0 + 367 * DAY)
    assert grace.message == "License expired 2 days ago: limited mode for 28 more days"
    three = v.decide(claims(t0, 30 * DAY, 0, 10 * DAY), State(hwm=t0), t0 + 27 * DAY)
    assert three.warning == "Offline license expires in 3 days: connect to extend"


def test_a_given_back_activation_stays_given_back_past_the_next_ones() -> None:
    """A return is of one activation and is remembered after the device took others:
    its files are given back whatever they are issued at or bound to; a state from
    before the record (only ``returned_at``) adds its return when the next comes."""
    st_ = v.give_back(v.absorb(claims(1000, DAY, 0, 0), State()), 1100)
    assert st_.returned_ids == ("act",) and st_.returned_at == 1100
    nxt = v.absorb(claims(1200, DAY, 0, 0, activation_id="act_2"), st_, bound=True)
    assert nxt.returned_at == 0 and nxt.returned_ids == ("act",)
    late = claims(9000, DAY, 0, 0, serial=7)
    assert v.given_back(late, nxt) and v.compare(late, nxt) == v.NEWER  # newer, yet refused
    assert not v.given_back(claims(9000, DAY, 0, 0, activation_id="act_2", serial=2), nxt)
    third = v.absorb(claims(1300, DAY, 0, 0, activation_id="act_3"), v.give_back(nxt, 1250))
    assert third.returned_ids == ("act", "act_2") and v.given_back(late, third)
    earlier_agent = v.absorb(claims(1000, DAY, 0, 0), State()).replace(returned_at=1100)
    assert earlier_agent.returned_ids == () and v.given_back(late, earlier_agent)
    after = v.absorb(claims(1200, DAY, 0, 0, activation_id="act_2"), earlier_agent)
    assert after.returned_ids == ("act",) and v.given_back(late, after)
