"""Read agent.toml fast: a parser for the small TOML subset configs actually use, with
``tomllib`` as the fallback for everything else.

Why: ``import tomllib`` costs the boot gate 23 ms (it pulls in ``re``, ``datetime`` and
``typing``), more than the gate's whole budget. The fast path understands comments,
``[table]`` headers, bare keys, basic and literal strings without escapes, decimal
integers, booleans and one-line arrays of those. The moment it meets anything else
(escapes, floats, dates, dotted keys, inline tables, multi-line values, a duplicate) it
hands the whole text to ``tomllib``, which decides. ``tests/test_tomlsubset.py`` proves
with hypothesis that whenever the fast path returns, ``tomllib`` returns the same.

``tomllib`` recurses once per level of nested arrays and inline tables, so deep nesting
ends in a RecursionError: text nested deeper than ``MAX_DEPTH`` is refused (ValueError)
by a cheap scan before it is handed over. It must never reach tomllib unscanned.
"""

TomlValue = str | int | bool | list["TomlValue"]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_DIGITS = frozenset("0123456789")
_WS = " \t"


MAX_DEPTH = 16  # arrays and inline tables inside each other; agent.toml needs 1
_TOO_MANY_DIGITS = "a number with too many digits"


class _Unsupported(Exception):
    pass


def loads(text: str) -> dict[str, object]:
    """The TOML document; ValueError (tomllib's TOMLDecodeError is one) if it is not."""
    try:
        return _fast(text)
    except _Unsupported:
        pass
    if nesting(text) > MAX_DEPTH:
        raise ValueError(f"arrays or tables nested more than {MAX_DEPTH} deep")
    import tomllib

    try:
        return tomllib.loads(text)
    except RecursionError:  # the scan above makes this unreachable; never a traceback
        raise ValueError("nested too deeply") from None
    except tomllib.TOMLDecodeError:
        raise
    except ValueError:  # int() refuses thousands of digits, in its own words
        raise ValueError(_TOO_MANY_DIGITS) from None


def nesting(text: str) -> int:
    """How deep ``[``/``{`` nest outside strings and comments (an upper bound where the
    text is not valid TOML): a lexer just good enough to skip strings and comments."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(0, depth - 1)
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "\"'":
            i = _skip_string(text, i)
            continue
        i += 1
    return deepest


def _skip_string(text: str, i: int) -> int:
    """The index just after the string that starts at ``i`` (the end, if unterminated)."""
    quote = text[i]
    if text.startswith(quote * 3, i):
        close, i = quote * 3, i + 3
    else:
        close, i = quote, i + 1
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
            continue
        if text.startswith(close, i):
            return i + len(close)
        if len(close) == 1 and text[i] == "\n":
            return i  # a one-line string cannot span lines
        i += 1
    return i


def _is_bare(key: str) -> bool:
    return bool(key) and all(c in _BARE for c in key)


def _plain_char(c: str) -> bool:
    o = ord(c)
    return c == "\t" or (o >= 0x20 and o != 0x7F)


def _string(s: str, i: int) -> tuple[str, int]:
    quote = s[i]
    end = s.find(quote, i + 1)
    if end < 0:
        raise _Unsupported
    body = s[i + 1 : end]
    if (quote == '"' and "\\" in body) or not all(_plain_char(c) for c in body):
        raise _Unsupported
    if s.startswith(quote * 3, i):
        raise _Unsupported  # multi-line strings: leave them to tomllib
    return body, end + 1


def _scalar(s: str, i: int) -> tuple[TomlValue, int]:
    if i >= len(s):
        raise _Unsupported
    if s[i] in "\"'":
        return _string(s, i)
    j = i
    while j < len(s) and s[j] not in _WS + ",]#":
        j += 1
    word = s[i:j]
    if word == "true":
        return True, j
    if word == "false":
        return False, j
    digits = word[1:] if word[:1] in "+-" else word
    if digits and all(c in _DIGITS for c in digits) and (digits == "0" or digits[0] != "0"):
        if len(digits) > 100:
            raise ValueError(_TOO_MANY_DIGITS)
        return int(word), j
    raise _Unsupported


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def _value(s: str, i: int) -> tuple[TomlValue, int]:
    if i < len(s) and s[i] == "[":
        items: list[TomlValue] = []
        i = _skip_ws(s, i + 1)
        while True:
            if i < len(s) and s[i] == "]":
                return items, i + 1
            item, i = _scalar(s, i)
            if items and type(item) is not type(items[0]):
                raise _Unsupported
            items.append(item)
            i = _skip_ws(s, i)
            if i < len(s) and s[i] == ",":
                i = _skip_ws(s, i + 1)
            elif not (i < len(s) and s[i] == "]"):
                raise _Unsupported
    return _scalar(s, i)


def _fast(text: str) -> dict[str, object]:
    root: dict[str, object] = {}
    table = root
    raws = text.split("\n")
    if raws[-1].endswith("\r"):  # a CR is a line end only before LF
        raise _Unsupported
    for raw in raws:
        line = raw[:-1] if raw.endswith("\r") else raw
        line = line.strip(_WS)
        if not line:
            continue
        if line[0] == "#":
            if not all(_plain_char(c) for c in line):
                raise _Unsupported
            continue
        if line[0] == "[":
            close = line.find("]")
            name = line[1:close].strip(_WS) if close > 0 else ""
            rest = line[close + 1 :].strip(_WS) if close > 0 else "x"
            if not _is_bare(name) or name in root or (rest and rest[0] != "#"):
                raise _Unsupported
            if not all(_plain_char(c) for c in rest):
                raise _Unsupported
            table = {}
            root[name] = table
            continue
        eq = line.find("=")
        key = line[:eq].strip(_WS) if eq > 0 else ""
        if not _is_bare(key) or key in table:
            raise _Unsupported
        value, end = _value(line, _skip_ws(line, eq + 1))
        rest = line[end:].strip(_WS)
        if rest and (rest[0] != "#" or not all(_plain_char(c) for c in rest)):
            raise _Unsupported
        table[key] = value
    return root
