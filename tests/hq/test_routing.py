"""How the API reads JSON (provisioning/server/routing.py): a number with no fraction is
an integer whatever its spelling, every other number stays a float (which the strict
models refuse where an integer belongs), and what Python's ``json`` accepts beyond JSON
(NaN, Infinity, a key twice) is malformed JSON. The same over real HTTP is in
tests/hq/test_http_bounds.py."""

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioning.server.routing import loads


@given(st.integers(min_value=-(10**18), max_value=10**18), st.integers(0, 5), st.integers(0, 3))
def test_an_integral_number_is_an_int_in_any_spelling(n: int, zeros: int, shift: int) -> None:
    spellings = [str(n), f"{n}.{'0' * (zeros + 1)}", f"{n}e0", f"{n}E+0"]
    if n % 10**shift == 0 and shift:
        spellings.append(f"{n // 10**shift}e{shift}")
    for text in spellings:
        value = loads(text.encode())
        assert type(value) is int and value == n, text


@given(st.decimals(allow_nan=False, allow_infinity=False, places=3))
def test_a_number_with_a_fraction_stays_a_float(d: Decimal) -> None:
    if d == d.to_integral_value():
        return
    value = loads(str(d).encode())
    assert type(value) is float and value == float(d)


def test_large_integral_floats_are_not_expanded() -> None:
    assert loads(b"1e400") == float("inf")  # a float: refused where an integer belongs
    assert type(loads(b"1e19")) is float
    assert loads(b"9007199254740993.0") == 9007199254740993  # exact, not via a float


@pytest.mark.parametrize(
    "text", [b"NaN", b"Infinity", b"-Infinity", b'{"a": NaN}', b'{"a": 1, "a": 2}', b"[{}, {"]
)
def test_what_is_not_json_is_refused(text: bytes) -> None:
    with pytest.raises(json.JSONDecodeError):
        loads(text)


JSON_WITHOUT_FLOATS = st.recursive(
    st.none() | st.booleans() | st.text() | st.integers(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
)


@given(JSON_WITHOUT_FLOATS)
def test_json_without_floats_reads_as_python_reads_it(doc: object) -> None:
    assert loads(json.dumps(doc).encode()) == doc
