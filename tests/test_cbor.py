"""The strict CBOR subset agrees with cbor2 (the reference) and refuses what it must."""

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.wire import cbor
from agent.wire.errors import FormatError

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1)
    | st.binary(max_size=300)
    | st.text(max_size=300)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=30), children, max_size=5)
    ),
    max_leaves=30,
)


def depth(v: object) -> int:
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    return 0


@given(values)
def test_same_bytes_as_cbor2_canonical_and_round_trip(value: object) -> None:
    encoded = cbor.dumps(value)
    assert encoded == cbor2.dumps(value, canonical=True)
    assert cbor.loads(encoded, max_size=1 << 20, max_depth=64) == value
    assert cbor2.loads(encoded) == value


@given(st.binary(max_size=200))
def test_anything_we_accept_cbor2_reads_the_same(data: bytes) -> None:
    try:
        value = cbor.loads(data)
    except FormatError:
        return
    assert cbor2.loads(data) == value
    assert cbor.dumps(value) == data  # accepted means canonical: one encoding per value


@given(values, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_refused(value: object, tail: bytes) -> None:
    with pytest.raises(FormatError):
        cbor.loads(cbor.dumps(value) + tail, max_size=1 << 20, max_depth=64)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x18\x01", "non-canonical"),
        (b"\xa2\x61a\x01\x61a\x02", "duplicate"),
        (b"\xa2\x61b\x01\x61a\x02", "order"),
        (b"\xa1\x01\x02", "key is not text"),
        (b"\xc0\x01", "tag"),
        (b"\xf9\x00\x00", "float"),
        (b"\xf7", "undefined"),
        (b"\x9f\xff", "indefinite"),
        (b"\x5a\xff\xff\xff\xff", "length exceeds"),
        (b"\x62\xff\xfe", "invalid utf-8"),
        (b"", "truncated"),
    ],
)
def test_strict_refusals(data: bytes, why: str) -> None:
    with pytest.raises(FormatError):
        cbor.loads(data)


def test_depth_bomb_refused() -> None:
    bomb = b"\x81" * 10_000 + b"\x00"
    with pytest.raises(FormatError, match="deeply"):
        cbor.loads(bomb)


def test_size_cap_checked_before_parsing() -> None:
    with pytest.raises(FormatError, match="limit"):
        cbor.loads(b"\x00" * 100, max_size=10)


def test_huge_declared_count_is_not_allocated() -> None:
    # an array that claims 2**32 items in 9 bytes must fail at once, not allocate
    with pytest.raises(FormatError):
        cbor.loads(b"\x9b" + (1 << 32).to_bytes(8, "big"))


@given(values)
def test_depth_limit_is_exact(value: object) -> None:
    encoded = cbor.dumps(value)
    d = depth(value)
    assert cbor.loads(encoded, max_size=1 << 20, max_depth=d) == value
    if d > 0:
        with pytest.raises(FormatError):
            cbor.loads(encoded, max_size=1 << 20, max_depth=d - 1)
