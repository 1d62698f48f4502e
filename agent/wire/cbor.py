"""A strict, canonical CBOR (RFC 8949) subset: the only CBOR the wire format uses.

Types: unsigned and negative integers (64-bit), byte strings, text strings, arrays,
maps with text keys, false, true and null. Nothing else: no tags, floats, undefined,
indefinite lengths or other simple values.

``dumps`` writes RFC 8949 core deterministic encoding (shortest heads, map keys in
bytewise order of their encodings). ``loads`` accepts exactly that and nothing more:
a non-shortest head, an unsorted or duplicate key, trailing bytes, nesting deeper than
``max_depth`` or input longer than ``max_size`` are all ``FormatError``. One encoding
per value means no malleability.

Why not cbor2? It stays the reference (tests/test_cbor.py proves with hypothesis that
both produce the same bytes and values) but importing it costs the boot gate 14 ms,
more than the gate's whole budget, and it accepts duplicate keys. See
docs/performance.md.
"""

from .errors import FormatError

Value = None | bool | int | bytes | str | list["Value"] | dict[str, "Value"]

DEFAULT_MAX_SIZE = 64 * 1024
DEFAULT_MAX_DEPTH = 8
_U64_MAX = (1 << 64) - 1


def _head(major: int, arg: int) -> bytes:
    mt = major << 5
    if arg < 24:
        return bytes((mt | arg,))
    if arg < 0x100:
        return bytes((mt | 24, arg))
    if arg < 0x10000:
        return bytes((mt | 25,)) + arg.to_bytes(2, "big")
    if arg < 0x100000000:
        return bytes((mt | 26,)) + arg.to_bytes(4, "big")
    return bytes((mt | 27,)) + arg.to_bytes(8, "big")


def _encode(value: object, out: list[bytes]) -> None:
    if value is None:
        out.append(b"\xf6")
    elif value is True:
        out.append(b"\xf5")
    elif value is False:
        out.append(b"\xf4")
    elif isinstance(value, int):
        if 0 <= value <= _U64_MAX:
            out.append(_head(0, value))
        elif -(1 << 64) <= value < 0:
            out.append(_head(1, -1 - value))
        else:
            raise ValueError("integer out of the 64-bit CBOR range")
    elif isinstance(value, bytes):
        out.append(_head(2, len(value)))
        out.append(value)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(_head(3, len(raw)))
        out.append(raw)
    elif isinstance(value, list | tuple):
        out.append(_head(4, len(value)))
        for item in value:
            _encode(item, out)
    elif isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("map keys must be text")
            items.append((dumps(key), item))
        items.sort(key=lambda pair: pair[0])
        out.append(_head(5, len(items)))
        for encoded_key, item in items:
            out.append(encoded_key)
            _encode(item, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} in the wire format")


def dumps(value: object) -> bytes:
    """Canonical encoding of ``value``."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


class _Decoder:
    __slots__ = ("data", "max_depth", "pos")

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise FormatError("the file is damaged or was cut short")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def _argument(self, info: int) -> int:
        if info < 24:
            return info
        if info > 27:
            raise FormatError("the file is damaged (a length HQ never writes)")
        size = 1 << (info - 24)
        arg = int.from_bytes(self._take(size), "big")
        minimum = 24 if size == 1 else 1 << (4 * size)
        if arg < minimum:
            raise FormatError("the file is damaged (not in the one form HQ writes)")
        return arg

    def _length(self, info: int) -> int:
        length = self._argument(info)
        if length > len(self.data) - self.pos:
            raise FormatError("the file is damaged or was cut short")
        return length

    def value(self, depth: int) -> Value:
        initial = self._take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == 0:
            return self._argument(info)
        if major == 1:
            return -1 - self._argument(info)
        if major == 2:
            return self._take(self._length(info))
        if major == 3:
            try:
                return self._take(self._length(info)).decode("utf-8")
            except UnicodeDecodeError as e:
                raise FormatError("the file is damaged (text that is not UTF-8)") from e
        if major in (4, 5):
            if depth >= self.max_depth:
                raise FormatError("the file is damaged (nested too deeply)")
            count = self._length(info)
            if major == 4:
                return [self.value(depth + 1) for _ in range(count)]
            return self._map(count, depth + 1)
        if major == 7 and info in (20, 21, 22):
            return (False, True, None)[info - 20]
        raise FormatError("the file is damaged (a value HQ never writes)")

    def _map(self, count: int, depth: int) -> dict[str, Value]:
        result: dict[str, Value] = {}
        previous = b""
        for _ in range(count):
            start = self.pos
            key = self.value(depth)
            if not isinstance(key, str):
                raise FormatError("the file is damaged (a field name that is not text)")
            encoded_key = self.data[start : self.pos]
            if encoded_key <= previous:
                raise FormatError("the file is damaged (fields repeated or out of order)")
            previous = encoded_key
            result[key] = self.value(depth)
        return result


def loads(
    data: bytes, *, max_size: int = DEFAULT_MAX_SIZE, max_depth: int = DEFAULT_MAX_DEPTH
) -> Value:
    """Decode exactly one canonical CBOR item filling all of ``data``."""
    if len(data) > max_size:
        raise FormatError(f"the file is larger than the {max_size}-byte limit")
    decoder = _Decoder(bytes(data), max_depth)
    value = decoder.value(0)
    if decoder.pos != len(decoder.data):
        raise FormatError("the file is damaged (extra bytes after its end)")
    return value
