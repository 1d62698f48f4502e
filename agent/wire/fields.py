"""Field checks shared by every decoder of the wire format and the device state.

One place for the rules docs/wire-format.md states for every decoded field: a boolean is
never an integer (Python's ``True == 1`` must not let ``{"v": true}`` pass for version 1),
times are Unix seconds that every date conversion on the device can print (up to the
end of year 9999), other counts fit in 63 bits, texts are short. Pure functions; they
raise ``FormatError`` with a sentence that names the field, never its value.
"""

from .errors import FormatError

MAX_TIME_S = 253_402_300_799  # 9999-12-31T23:59:59Z: time.gmtime's upper bound everywhere
MAX_UINT = (1 << 63) - 1
MAX_TEXT = 200


def is_uint(value: object, maximum: int = MAX_UINT) -> bool:
    """A non-negative integer no larger than ``maximum``; never a bool."""
    return type(value) is int and 0 <= value <= maximum


def is_version(value: object, version: int) -> bool:
    """``value`` is exactly the integer ``version`` (``True`` is not 1 here)."""
    return type(value) is int and value == version


def uint(value: object, what: str, maximum: int = MAX_UINT) -> int:
    if not is_uint(value, maximum):
        raise FormatError(f"{what} is not a non-negative integer in range")
    assert isinstance(value, int)
    return value


def time_s(value: object, what: str) -> int:
    """A Unix time in seconds, 1970 to 9999."""
    return uint(value, what, MAX_TIME_S)


def opt_time_s(value: object, what: str) -> int | None:
    return None if value is None else time_s(value, what)


def text(value: object, what: str, maximum: int = MAX_TEXT, *, empty: bool = False) -> str:
    if type(value) is not str or len(value) > maximum or (not empty and not value):
        limit = f"at most {maximum} characters"
        raise FormatError(f"{what} must be a {'' if empty else 'non-empty '}text of {limit}")
    assert isinstance(value, str)
    return value


def opt_text(value: object, what: str, maximum: int = MAX_TEXT) -> str | None:
    return None if value is None else text(value, what, maximum)


def flag(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise FormatError(f"{what} must be true or false")
    assert isinstance(value, bool)
    return value


def blob(value: object, what: str, size: int) -> bytes:
    if type(value) is not bytes or len(value) != size:
        raise FormatError(f"{what} must be {size} bytes")
    assert isinstance(value, bytes)
    return value


def exact_keys(doc: object, keys: frozenset[str], what: str) -> dict[str, object]:
    """``doc`` as a map with exactly ``keys`` (text keys only)."""
    if not isinstance(doc, dict) or set(doc) != keys:
        raise FormatError(f"{what} has missing or unknown fields")
    return doc


_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_NAME_REST = _NAME_FIRST | frozenset("._-")
MAX_NAME = 64


def is_name(value: object) -> bool:
    """HQ's name rule (plans, entitlements, counters, sites): a letter or digit, then
    letters, digits, ``.``, ``_`` or ``-``, at most 64 characters in all."""
    return (
        type(value) is str
        and 0 < len(value) <= MAX_NAME
        and value[0] in _NAME_FIRST
        and _NAME_REST.issuperset(value)
    )


def name(value: object, what: str) -> str:
    if not is_name(value):
        raise FormatError(f"{what} must be a name of letters, digits, '.', '_' or '-'")
    assert isinstance(value, str)
    return value
