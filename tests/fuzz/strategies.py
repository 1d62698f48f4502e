"""Hostile inputs: mutations of valid files, armor around garbage, JSON and TOML that
parsers choke on, answers a broken or malicious server gives."""

import json

from hypothesis import strategies as st

from agent.wire import armor, cbor

LABELS = [armor.MACHINE_FILE, armor.REVOCATION, armor.REQUEST, "FIELDPASS SOMETHING ELSE"]


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with a few bytes flipped, cut, inserted or duplicated."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "dup", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "dup":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
        else:
            del data[at:]
    return bytes(data)


def cbor_values(max_leaves: int = 20) -> st.SearchStrategy[object]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(1 << 64), (1 << 64) - 1)
        | st.binary(max_size=40)
        | st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(["v", "alg", "kid", "enc", "sig", "msg", "type", "body", "mac"])
                | st.text(max_size=6),
                inner,
                max_size=6,
            )
        ),
        max_leaves=max_leaves,
    )


def well_formed_cbor() -> st.SearchStrategy[bytes]:
    """Canonical CBOR the decoder accepts, shaped like our envelopes but meaningless."""
    return cbor_values().map(cbor.dumps)


def armored(inner: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Armor around ``inner``, strict or tolerantly mangled (CRLF, quoting, cuts)."""

    def wrap(data: bytes, label: str, style: str) -> bytes:
        text = armor.armor(data, label)
        if style == "crlf":
            text = text.replace("\n", "\r\n")
        elif style == "quoted":
            text = "".join("> " + line + "\n" for line in text.splitlines())
        elif style == "no_end":
            text = text.rsplit("-----END", 1)[0]
        elif style == "bad_b64":
            text = text.replace("A", "*", 1)
        return text.encode()

    return st.builds(
        wrap,
        inner,
        st.sampled_from(LABELS),
        st.sampled_from(["", "crlf", "quoted", "no_end", "bad_b64"]),
    )


def hostile_file(valid: bytes) -> st.SearchStrategy[bytes]:
    return (
        st.binary(max_size=2048)
        | mutated(valid)
        | well_formed_cbor()
        | armored(st.binary(max_size=300) | mutated(valid) | well_formed_cbor())
        | st.sampled_from([b"", b"\0" * 20000, valid[: len(valid) // 2], valid + b"\0"])
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
ANSWER_KEYS = ["machine_file", "revocation", "signed_time", "status", "error", "code", "message"]


@st.composite
def json_answer(draw: st.DrawFn) -> bytes:
    """An object with the keys the device looks for, holding whatever."""
    doc = {
        key: draw(
            json_values
            | st.text(max_size=200)
            | armored(st.binary(max_size=200)).map(lambda b: b.decode())
            | st.builds(lambda c, m: {"code": c, "message": m}, json_values, json_values)
        )
        for key in draw(st.lists(st.sampled_from(ANSWER_KEYS), max_size=4, unique=True))
    }
    return json.dumps(doc).encode()


def answer_body() -> st.SearchStrategy[bytes]:
    depth = st.integers(17, 200_000)
    return (
        json_answer()
        | json_values.map(lambda v: json.dumps(v).encode())
        | st.binary(max_size=500)
        | depth.map(lambda n: b"[" * n)
        | depth.map(lambda n: b'{"error": ' * min(n, 60_000))
        | depth.map(lambda n: b'{"revocation": ' + b"[" * n)
        | st.sampled_from([b"", b"null", b"[]", b'"x"', b"1e999999", b"1" * 5000, b"\xff\xfe{}"])
        | st.just(b" " * (256 * 1024 + 1))
    )


STATUSES = st.sampled_from([200, 201, 400, 401, 403, 404, 409, 413, 429, 500, 502, 503])
