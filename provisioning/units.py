"""Parsing of human durations (``30d``, ``12h``, ``90m``, ``3600s``) and dates.

Pure functions: text in, seconds out, ``ValueError`` with a readable message otherwise.
"""

import datetime as dt
import re

_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_DURATION_S = 100 * 365 * 86400


def parse_duration(text: str, *, allow_zero: bool = False) -> int:
    """Seconds in ``text``: a number with an optional unit s, m, h, d or w."""
    match = _DURATION.match(text.lower())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m or 3600s")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds < (0 if allow_zero else 1) or seconds > MAX_DURATION_S:
        least = "0s" if allow_zero else "1s"
        raise ValueError(f"{text!r}: a duration is at least {least} and at most 100 years")
    return seconds


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_date(text: str) -> int:
    """Unix seconds of ``YYYY-MM-DD`` (00:00:00 UTC that day) or an ISO 8601 UTC time."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        else:
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
    except ValueError as e:
        raise ValueError(f"{text!r} is not a date like 2027-12-31") from e
    return int(moment.timestamp())


def format_time(unix_s: int | None) -> str:
    if unix_s is None:
        return "-"
    return dt.datetime.fromtimestamp(unix_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
