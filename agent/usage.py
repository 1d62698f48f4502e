"""What the equipment did, counted on the device: the pure rules (no I/O, no clock).

Counters only ever grow. Two are kept by Fieldpass itself: ``boots`` (the state's boot
counter: one per recorded check) and ``operating_s`` (seconds of operation while the
license is valid or in grace, added up by the daemon and, for a daemon that was stopped
while the system ran, by the gate at the next boot). The others are the application's,
for the names the plan declares (the claims' ``counters``): ``fieldpass usage add``.

A metered entitlement (the claims' ``meters``) is exhausted once its counter has grown
by ``limit`` since ``base``, the value HQ set at the start of the period; HQ sets each
period's start and base on the plan's schedule, signed in the machine file, so a renewal
the device asks for never resets them. A period that ended before HQ's next file keeps
its base: the feature stays exhausted until a file with the next period arrives.
"""

from .state import State
from .wire.fields import MAX_UINT
from .wire.machine_file import Claims

BOOTS = "boots"
OPERATING_S = "operating_s"
BUILTIN = (BOOTS, OPERATING_S)
MAX_ADD = 1 << 32  # one `usage add` at most this much


class UsageError(ValueError):
    """A usage change the rules refuse (an undeclared name, a count out of range)."""


def counters(state: State) -> dict[str, int]:
    """Every counter as reported to HQ: the built-in two and the application's."""
    values = dict(state.usage)
    values[BOOTS] = state.boot
    values.setdefault(OPERATING_S, 0)
    return values


def add(state: State, claims: Claims | None, name: str, count: int) -> State:
    """``name`` grown by ``count``; the name must be one the plan declares."""
    declared = claims.counters if claims is not None else ()
    if name in BUILTIN:
        raise UsageError(f"{name} is counted by Fieldpass itself")
    if name not in declared:
        known = ", ".join(declared) or "none"
        raise UsageError(f"the plan declares no counter {name!r} (it declares: {known})")
    if type(count) is not int or not 1 <= count <= MAX_ADD:
        raise UsageError(f"a count is a whole number from 1 to {MAX_ADD}")
    usage = dict(state.usage)
    usage[name] = min(MAX_UINT, usage.get(name, 0) + count)
    return state.replace(usage=usage)


def operate(state: State, since: int, until: int) -> State:
    """The state after ``until - since`` seconds of operation (nothing if the clock
    went backwards: time is counted only forwards, from the last recorded point)."""
    usage = dict(state.usage)
    if until > since:
        usage[OPERATING_S] = min(MAX_UINT, usage.get(OPERATING_S, 0) + until - since)
    return state.replace(usage=usage, usage_at=max(state.usage_at, until))


def exhausted(claims: Claims | None, state: State, t: int) -> list[str]:
    """The metered features whose limit is reached at ``t`` (already started periods)."""
    if claims is None:
        return []
    values = counters(state)
    out = []
    for meter in claims.meters:
        if t < meter.period_start:
            continue
        if values.get(meter.counter, 0) - meter.base >= meter.limit:
            out.append(meter.feature)
    return sorted(set(out))
