"""Reading the laptop's JSON (request bodies, bundles, reports) with a size AND a depth
bound, so that no input reaches ``json`` in a form that makes it recurse without end.

``json.loads`` recurses once per level of nesting: ``[`` x 20,000 fits in a small body
and ends in a RecursionError. ``loads_object`` checks the size, decodes UTF-8 strictly,
measures the nesting with a scan over the bytes (strings skipped) and only then parses.
Every failure is ``JsonError`` with a sentence a person can read; nothing here logs.
"""

import json

_STRUCTURE = b'[]{}"'
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in _STRUCTURE)


class JsonError(ValueError):
    """The bytes are not a JSON object within the bounds."""


def depth(data: bytes, limit: int) -> int:
    """How deep arrays and objects nest in ``data`` (strings skipped), counted up to
    ``limit + 1``: exact for valid JSON, and never less than ``json`` would reach."""
    # Escaped backslashes first (pairs, left to right, as JSON reads them), then escaped
    # quotes: what is left of the quotes delimits strings. Keep only brackets and quotes.
    brackets = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    level = deepest = 0
    quoted = False
    for byte in brackets:
        if byte == 0x22:
            quoted = not quoted
        elif quoted:
            continue
        elif byte in (0x5B, 0x7B):  # [ {
            level += 1
            if level > deepest:
                deepest = level
                if deepest > limit:
                    break
        elif level:
            level -= 1
    return deepest


def loads_object(data: bytes, *, max_bytes: int, max_depth: int) -> dict[str, object]:
    """The JSON object in ``data``; JsonError if it is larger than ``max_bytes``, not
    UTF-8, nested deeper than ``max_depth``, not JSON, or not an object."""
    if len(data) > max_bytes:
        raise JsonError(f"larger than {max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonError("not UTF-8 text") from None
    if depth(data, max_depth) > max_depth:
        raise JsonError(f"nested more than {max_depth} levels deep")
    try:
        doc = json.loads(text)
    except RecursionError:  # unreachable after the scan; never a traceback
        raise JsonError(f"nested more than {max_depth} levels deep") from None
    except ValueError as e:
        raise JsonError(f"not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise JsonError("not a JSON object")
    return doc
