"""The verdict JSON writer produces what json.loads reads back exactly."""

import json

from hypothesis import given
from hypothesis import strategies as st

from agent import jsonout

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(values, st.booleans())
def test_json_round_trip(value: object, pretty: bool) -> None:
    assert json.loads(jsonout.dumps(value, pretty=pretty)) == value


@given(st.text())
def test_env_values_cannot_break_out(text: str) -> None:
    quoted = jsonout.env_quote(text)
    assert quoted.startswith("'") and quoted.endswith("'")
    inner = quoted[1:-1]
    assert "'" not in inner and "\n" not in inner and "\\" not in inner
