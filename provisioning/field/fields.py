"""The checks every field of a field bundle and a field report passes before anything
uses it: its type, its range or pattern, and no control character in any text (the audit
log keeps one line per event). A file that fails one is refused whole, with a sentence
naming the file, the entry and the field (``MalformedInput``, exit 65).

``Entry`` reads one JSON object of such a file; ``read_document`` reads the file itself
with a size and a depth bound. Nothing here reads the clock or writes anything.
"""

import re
from pathlib import Path

from agent.jsonin import JsonError, loads_object

from ..errors import CannotRead, MalformedInput

ACTIVATION_ID = re.compile(r"act_[0-9a-f]{20}")
LICENSE_ID = re.compile(r"lic_[0-9a-f]{20}")
BUNDLE_ID = re.compile(r"fb_[0-9a-f]{20}")
FINGERPRINT = re.compile(r"[0-9a-f]{64}")
EARLIEST_TIME = 1_577_836_800  # 2020-01-01: no bundle or report is older than Fieldpass
LATEST_TIME = 4_102_444_800  # 2100-01-01
MAX_TEXT_CHARS = 200
# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def read_document(path: Path, what: str, max_bytes: int, max_depth: int) -> dict[str, object]:
    """The JSON object in the file at ``path`` (a ``what``: "field bundle", ...), read
    with at most ``max_bytes`` and nested at most ``max_depth`` deep."""
    try:
        with path.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise CannotRead(f"cannot read the {what} {path}: {e.strerror or e}") from None
    if len(raw) > max_bytes:
        raise MalformedInput(f"{path}: not a {what} (larger than {max_bytes >> 20} MiB)")
    try:
        return loads_object(raw, max_bytes=max_bytes, max_depth=max_depth)
    except JsonError as e:
        raise MalformedInput(f"{path}: not a {what} ({e})") from None


def printable(text: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``text`` as a bundle or report may hold it: control characters replaced by
    ``?``, at most ``max_chars``, never empty (``unknown``). For what the laptop writes
    from what others told it (a device's agent version, the operator's login name)."""
    cleaned = _CONTROL.sub("?", text)[:max_chars]
    return cleaned or "unknown"


class Entry:
    """One JSON object of a bundle or report, read field by field: each method returns
    the checked value or raises ``MalformedInput`` naming ``where`` and the field."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise MalformedInput(f"{where} must be a JSON object, not {_kind(value)}")
        self.doc: dict[str, object] = value
        self.where = where

    def _bad(self, name: str, must: str) -> MalformedInput:
        return MalformedInput(f"{self.where}: {name} must be {must}")

    def has(self, name: str) -> bool:
        return self.doc.get(name) is not None

    def text(
        self, name: str, pattern: re.Pattern[str] | None = None, max_chars: int = MAX_TEXT_CHARS
    ) -> str:
        value = self.doc.get(name)
        if not isinstance(value, str) or not 0 < len(value) <= max_chars:
            raise self._bad(name, f"a text of 1 to {max_chars} characters")
        if _CONTROL.search(value):
            raise self._bad(name, "a text without control characters (no newline)")
        if pattern is not None and not pattern.fullmatch(value):
            raise self._bad(name, f"like {_example(pattern)}")
        return value

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        value = self.doc.get(name)
        if value not in allowed:
            raise self._bad(name, "one of " + ", ".join(allowed))
        assert isinstance(value, str)
        return value

    def integer(self, name: str, least: int, most: int) -> int:
        value = self.doc.get(name)
        if type(value) is not int or not least <= value <= most:
            raise self._bad(name, f"a whole number from {least} to {most}")
        return value

    def time(self, name: str, earliest: int = EARLIEST_TIME, latest: int = LATEST_TIME) -> int:
        value = self.doc.get(name)
        if type(value) is not int or not earliest <= value <= latest:
            raise self._bad(
                name, f"a time in Unix seconds from {earliest} to {latest}, not {_short(value)}"
            )
        return value

    def items(self, name: str, optional: bool = False) -> list[object]:
        value = self.doc.get(name)
        if value is None and optional:
            return []
        if not isinstance(value, list):
            raise self._bad(name, f"a list, not {_kind(value)}")
        return value


def _kind(value: object) -> str:
    if value is None:
        return "missing"
    return {dict: "an object", list: "a list", str: "a text", bool: "true/false"}.get(
        type(value), "a number"
    )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _example(pattern: re.Pattern[str]) -> str:
    return {
        ACTIVATION_ID.pattern: "act_ and 20 hex digits",
        LICENSE_ID.pattern: "lic_ and 20 hex digits",
        BUNDLE_ID.pattern: "fb_ and 20 hex digits",
        FINGERPRINT.pattern: "64 lowercase hex digits",
    }.get(pattern.pattern, pattern.pattern)
