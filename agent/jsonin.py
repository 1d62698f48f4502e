"""Reading JSON from peers (HQ's answers, a laptop, MQTT messages, the daemon's resume
file) with a size AND a depth bound.

``json.loads`` recurses once per level of nesting: ``[`` x 120,000, well under any size
cap, ends in a RecursionError. ``loads`` first checks the size, decodes UTF-8 strictly,
then measures the nesting with a cheap scan over the bytes (strings skipped), and only
then hands the text to ``json``. Every failure is one error type, ``JsonError``, whose
message a person can read. HQ may use it too; it must never import anything from HQ.
Not for the boot gate's path (``json`` costs it 10 ms): ``check --online`` only.
"""

import json

DEFAULT_MAX_DEPTH = 16
_KEEP = b'[]{}"'
_DROP = bytes(b for b in range(256) if b not in _KEEP)


class JsonError(ValueError):
    """The bytes are not a JSON document within the bounds."""


def nesting(data: bytes, stop_above: int | None = None) -> int:
    """How deep arrays and objects nest in ``data``, strings skipped (exact for valid
    JSON; for invalid JSON, never less than ``json`` would reach before it stops reading
    it). With ``stop_above``, the scan ends as soon as the depth passes it."""
    # An escaped backslash or quote never opens or closes a string: remove both (pairs
    # of backslashes first, left to right, as JSON reads them), then keep only the
    # brackets and the quotes that delimit strings.
    structure = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DROP)
    depth = deepest = 0
    in_string = False
    for byte in structure:
        if byte == 0x22:  # "
            in_string = not in_string
        elif in_string:
            continue
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and depth > stop_above:
                    break
        elif depth:
            depth -= 1
    return deepest


def loads(data: bytes | str, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> object:
    """The JSON value in ``data``; JsonError if it is larger than ``max_bytes``, not
    UTF-8, nested deeper than ``max_depth`` or not JSON."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise JsonError(f"larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonError("not UTF-8 text") from None
    if nesting(raw, max_depth) > max_depth:
        raise JsonError(f"nested more than {max_depth} deep")
    try:
        return json.loads(text)
    except RecursionError:  # the scan makes this unreachable; never a traceback
        raise JsonError("nested too deeply") from None
    except ValueError:
        raise JsonError("not JSON") from None


def loads_object(
    data: bytes | str, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH
) -> dict[str, object]:
    """Like ``loads``, for documents that must be a JSON object."""
    doc = loads(data, max_bytes=max_bytes, max_depth=max_depth)
    if not isinstance(doc, dict):
        raise JsonError("not a JSON object")
    return doc
