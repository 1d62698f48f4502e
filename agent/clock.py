"""The device's one reading of the wall clock, and dates written without ``time.gmtime``.

``time.time()`` raises OverflowError once the clock is past 2262-04-11 (CPython keeps
time in signed 64-bit nanoseconds), and ``time.gmtime`` refuses years its C library
cannot hold: a clock set far ahead, or a hostile date in a file, must never end the
gate in a traceback. ``now`` reads CLOCK_REALTIME as seconds (a float, no nanosecond
conversion); ``iso`` and ``date`` compute the civil date with integer arithmetic
(proleptic Gregorian calendar, valid for any integer). Nothing here can move the clock:
there is no override, no flag and no environment variable.
"""

import time

DAY_S = 86400


def now() -> int:
    """Unix seconds, now."""
    return int(time.clock_gettime(time.CLOCK_REALTIME))


def civil(ts: int) -> tuple[int, int, int, int, int, int]:
    """(year, month, day, hour, minute, second) in UTC for Unix seconds ``ts``."""
    days, secs = divmod(ts, DAY_S)
    # Howard Hinnant's civil_from_days: eras of 400 years (146,097 days).
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return year, month, day, secs // 3600, secs // 60 % 60, secs % 60


def date(ts: int) -> str:
    """``YYYY-MM-DD``."""
    y, m, d, _, _, _ = civil(ts)
    return f"{y:04d}-{m:02d}-{d:02d}"


def iso(ts: int | None) -> str | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` (None stays None)."""
    if ts is None:
        return None
    y, m, d, hh, mm, ss = civil(ts)
    return f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}Z"
