"""The trusted-state core: pure functions from (claims, state, now) to a verdict.

No I/O and no clock here: ``now`` is a parameter, read once by the caller (gate.py).
These are the rules the exit-code table of the README documents, and the ones the
hypothesis tests in tests/test_verdict.py check over arbitrary times.
"""

import time

from .state import State, remember_return
from .wire.machine_file import Claims

VALID, GRACE, EXPIRED = "valid", "grace", "expired"
NOT_ACTIVATED, INVALID, REVOKED, ROLLBACK = "not_activated", "invalid", "revoked", "rollback"
EXIT_CODES = {
    VALID: 0,
    GRACE: 10,
    EXPIRED: 20,
    NOT_ACTIVATED: 30,
    INVALID: 31,
    REVOKED: 32,
    ROLLBACK: 40,
}
DAY_S = 86400


class Verdict:
    """What the gate decided. ``effective_now`` is the time the rules were applied at
    (the clock, or the high-water mark under the floor policy)."""

    __slots__ = ("claims", "effective_now", "message", "name", "reason", "warning")

    def __init__(
        self,
        name: str,
        message: str,
        *,
        reason: str = "",
        warning: str = "",
        claims: Claims | None = None,
        effective_now: int | None = None,
    ) -> None:
        self.name = name
        self.message = message
        self.reason = reason or name
        self.warning = warning
        self.claims = claims
        self.effective_now = effective_now

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.name]

    @property
    def limited(self) -> bool:
        return self.name == GRACE

    def __repr__(self) -> str:
        return f"Verdict({self.name!r}, {self.message!r})"


def date(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _days(n: int) -> str:
    return "1 day" if n == 1 else f"{n} days"


def days_ceil(seconds: int) -> int:
    return -(-seconds // DAY_S)


def decide(
    claims: Claims,
    state: State,
    now: int,
    *,
    policy: str = "strict",
    tolerance_s: int = 300,
) -> Verdict:
    """The verdict for a verified machine file on this device at ``now``."""
    if state.revoked:
        return Verdict(
            REVOKED,
            f"License {state.revoked} by HQ: the equipment may not run; contact your vendor",
            reason=state.revoked,
            claims=claims,
        )
    t = now
    floor = max(state.hwm, claims.issued_at)
    if now + tolerance_s < floor:
        if policy == "strict":
            behind = floor - now
            return Verdict(
                ROLLBACK,
                f"System clock is {_days(days_ceil(behind))} behind the last trusted time "
                f"({date(floor)}): set the clock right or connect to HQ",
                claims=claims,
            )
        t = floor  # the floor policy: time never runs backwards past the mark
    if t + tolerance_s < claims.not_before:
        return Verdict(
            ROLLBACK,
            f"Machine file is valid from {date(claims.not_before)}: check the clock",
            reason="not_yet_valid",
            claims=claims,
        )
    return decide_at(claims, t)


def decide_at(claims: Claims, t: int) -> Verdict:
    """The expiry rules alone, at a time already judged trustworthy."""
    if claims.license_expires_at is not None and t >= claims.license_expires_at:
        return Verdict(
            EXPIRED,
            f"License term ended on {date(claims.license_expires_at)}: renew the license",
            reason="license_expired",
            claims=claims,
            effective_now=t,
        )
    if t < claims.expires_at:
        left = claims.expires_at - t
        warning = ""
        if left <= claims.warn_s:
            warning = f"Offline license expires in {_days(days_ceil(left))}: connect to extend"
        return Verdict(
            VALID,
            f"License valid until {date(claims.expires_at)} ({_days(days_ceil(left))} left)",
            warning=warning,
            claims=claims,
            effective_now=t,
        )
    ago = (t - claims.expires_at) // DAY_S
    ago_text = "today" if ago == 0 else f"{_days(ago)} ago"
    if t < claims.grace_ends_at:
        more = days_ceil(claims.grace_ends_at - t)
        return Verdict(
            GRACE,
            f"License expired {ago_text}: limited mode for {more} more "
            + ("day" if more == 1 else "days"),
            warning="Offline license expired: connect to HQ to restore all features",
            claims=claims,
            effective_now=t,
        )
    return Verdict(
        EXPIRED,
        f"License expired {ago_text}; its grace period ended on {date(claims.grace_ends_at)}: "
        "connect to renew",
        claims=claims,
        effective_now=t,
    )


OLDER, SAME, NEWER = "older", "same", "newer"


def compare(claims: Claims, state: State | None, *, bound: bool = False) -> str:
    """Is this machine file older than, the same as, or newer than the newest accepted?

    Within one activation the signed serial decides; a different activation (the device
    was activated again) is newer only if HQ issued it later, or if it is ``bound``:
    HQ's answer now (Device.install decides: to the nonce just sent, or with a TPM to
    the pending request at the counter as it is now), even issued in the same second as
    the last file (activated, returned and activated again within it) or by an HQ host
    whose clock lags another's. A copied older file cannot name that nonce. Not bound,
    a file of another activation issued in the same second is older, also after a
    return: a copy of one issued at that second (a push renews every device at one
    ``now``) must not take the returned one's place.
    """
    if state is None or not state.activation_id:
        return NEWER
    if claims.activation_id == state.activation_id:
        if claims.serial == state.serial:
            return SAME
        return NEWER if claims.serial > state.serial else OLDER
    return NEWER if bound or claims.issued_at > state.issued_at else OLDER


def absorb(claims: Claims, state: State, *, bound: bool = False) -> State:
    """The state after accepting a newer machine file.

    The file's issued-at is HQ's signed time: the high-water mark rises to it, never
    falls. Only a file bound to a nonce this device just sent (``bound``) is HQ's word on
    the time *now*, and may lower the mark (a clock once set far ahead must not lock the
    device out forever). A file HQ issued after a recorded revocation lifts it, and the
    lift's time is kept: revocations issued at or before it are ignored from then on.
    A return is of one activation: the next one (the device activated again) is not
    returned, and the returned one stays in the record of returned activations (a
    state written before the record existed has it added now). Never call it with a
    file of a returned activation (``given_back``): its callers refuse those first.
    """
    changes: dict[str, object] = {
        "activation_id": claims.activation_id,
        "serial": claims.serial,
        "issued_at": claims.issued_at,
        "hwm": claims.issued_at if bound else max(state.hwm, claims.issued_at),
    }
    if claims.activation_id != state.activation_id:
        changes["returned_at"] = 0
        if state.returned_at:
            changes["returned_ids"] = remember_return(state.returned_ids, state.activation_id)
    if state.revoked and claims.issued_at > state.revoked_at:
        changes.update(revoked="", revoked_at=0, lifted_at=max(state.lifted_at, claims.issued_at))
    return state.replace(**changes)


def given_back(claims: Claims, state: State) -> bool:
    """The file is of an activation this device gave back: one in the record of returned
    activations, or the current one once returned (a state an agent before the record
    wrote). No file of it ever installs or runs again, whatever it is bound to or when
    it was issued: HQ gives an activation again under a new id only, never the same."""
    if claims.activation_id in state.returned_ids:
        return True
    return bool(state.returned_at) and claims.activation_id == state.activation_id


def give_back(state: State, now: int) -> State:
    """The state after ``fieldpass return`` of its current activation at ``now``."""
    return state.replace(
        returned_at=now, returned_ids=remember_return(state.returned_ids, state.activation_id)
    )


def lift(state: State, t: int) -> State:
    """HQ said "active" at ``t`` (a signed status): lift a revocation, remember when."""
    return state.replace(revoked="", revoked_at=0, lifted_at=max(state.lifted_at, t))


def is_stale_revocation(state: State, issued_at: int) -> bool:
    """A revocation issued before the newest machine file, or at or before the last
    lift, says nothing new: HQ has spoken since."""
    return issued_at < state.issued_at or issued_at <= state.lifted_at


MAX_UNRECORDED_BOOTS = 5


def degrade_unrecorded(result: Verdict, unrecorded_boots: int) -> Verdict:
    """After MAX_UNRECORDED_BOOTS boots in a row whose check could not be recorded (a
    read-only or full data partition freezes the clock mark), a valid license runs in
    limited mode until a boot is recorded again."""
    if result.name != VALID or unrecorded_boots < MAX_UNRECORDED_BOOTS:
        return result
    return Verdict(
        GRACE,
        f"{unrecorded_boots} boots in a row could not be recorded on the data partition: "
        "limited mode until it is writable again",
        reason="state_unrecorded",
        warning="The data partition is read-only or full: free it or repair it",
        claims=result.claims,
        effective_now=result.effective_now,
    )


def advance(state: State, now: int, verdict: Verdict) -> State:
    """The state after a check: one more boot, and the mark raised to a clock that was
    accepted (never lowered, never raised by a clock judged rolled back)."""
    hwm = state.hwm
    if verdict.name != ROLLBACK:
        hwm = max(hwm, now)
    return state.replace(boot=state.boot + 1, hwm=hwm, last_verdict=verdict.name)
