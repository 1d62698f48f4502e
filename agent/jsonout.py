"""JSON and environment-file writers for the verdict, without ``import json``.

``json`` costs the boot gate 10 ms because it imports ``re``. Output here is plain
RFC 8259 JSON (UTF-8, sorted keys); tests/test_jsonout.py proves with hypothesis that
``json.loads`` reads back exactly what went in.
"""

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

JsonValue = None | bool | int | str | list["JsonValue"] | dict[str, "JsonValue"]


def _string(s: str) -> str:
    out = []
    for c in s:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def dumps(value: object, *, pretty: bool = False) -> str:
    """Compact JSON; with ``pretty`` a top-level object gets one key per line."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    if isinstance(value, dict):
        items = []
        for key in sorted(value):
            if not isinstance(key, str):
                raise TypeError("JSON object keys must be text")
            items.append(f"{_string(key)}: {dumps(value[key])}")
        if pretty and items:
            return "{\n  " + ",\n  ".join(items) + "\n}"
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def env_clean(value: str) -> str:
    """``value`` restricted to what every reader of verdict.env (dash, bash, busybox sh,
    systemd's EnvironmentFile=, Python's ``str.splitlines``) reads the same: printable
    characters only (``str.isprintable``: no control characters, no line or paragraph
    separators such as U+2028, \\x0b, \\x1c-\\x1e or \\x85, no NUL, no lone surrogate),
    and neither a quote nor a backslash. Anything else becomes a space (quotes and
    backslashes a look-alike), so nothing can end a value or start another variable."""
    out = []
    for c in value:
        if c == "'":
            out.append("\u2019")
        elif c == "\\":
            out.append("/")
        elif c.isprintable():
            out.append(c)
        else:
            out.append(" ")
    return "".join(out)


def env_quote(value: str) -> str:
    """Single-quoted for both sh and systemd's EnvironmentFile=, after ``env_clean``."""
    return "'" + env_clean(value) + "'"
