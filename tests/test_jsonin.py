"""The bounded JSON reader: json's own answers within the bounds, one error type for
everything else, and no recursion however deep the input (agent/jsonin.py)."""

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent import jsonin

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n\u2028'),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), children, max_size=3)
    ),
    max_leaves=15,
)


def depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(values, st.booleans())
def test_nesting_is_exact_on_json(value: object, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")
    assert jsonin.nesting(raw) == depth(value)
    assert jsonin.loads(raw, max_bytes=1 << 20, max_depth=depth(value)) == value
    if depth(value):
        with pytest.raises(jsonin.JsonError, match="nested more than"):
            jsonin.loads(raw, max_bytes=1 << 20, max_depth=depth(value) - 1)


@given(st.binary(max_size=300) | st.text(alphabet='[]{}"\\,:1a ', max_size=300).map(str.encode))
@example(b'["\\\\"[[[[')
@example(b'"\\"[[[[')
@example(b"]]]][[[[[[[[[[[[[[[[[[[[[[1")
def test_any_bytes_give_jsons_answer_or_json_error(data: bytes) -> None:
    try:
        reference: object = json.loads(data)
    except (ValueError, RecursionError):
        reference = "error"
    try:
        ours: object = jsonin.loads(data, max_bytes=1 << 20, max_depth=64)
    except jsonin.JsonError:
        ours = "error"
    if ours == "error" and reference != "error":
        assert depth(reference) > 64 or not _is_utf8(data)
    else:
        assert ours == reference


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("bomb", [b"[" * 120_000, b'{"a":' * 50_000, b"[" * 250_000 + b"]"])
def test_depth_bombs_are_refused_before_json_sees_them(bomb: bytes) -> None:
    with pytest.raises(jsonin.JsonError, match="nested more than 16 deep"):
        jsonin.loads(bomb, max_bytes=256 * 1024)


def test_size_is_checked_first_and_errors_are_one_type() -> None:
    with pytest.raises(jsonin.JsonError, match="larger than 10 bytes"):
        jsonin.loads(b"[" * 11, max_bytes=10)
    for bad in (b"\xff", b"{", b"1" * 5000, b'{"a": NaN', "[\udcff]"):
        with pytest.raises(jsonin.JsonError):
            jsonin.loads(bad, max_bytes=10_000)
    with pytest.raises(jsonin.JsonError, match="not a JSON object"):
        jsonin.loads_object(b"[]", max_bytes=10)
    assert issubclass(jsonin.JsonError, ValueError)
