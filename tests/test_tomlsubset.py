"""The fast config parser never disagrees with tomllib (the reference)."""

import tomllib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent import tomlsubset

bare = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC_-0123456789", min_size=1, max_size=12)
plain = st.text(
    alphabet=st.characters(blacklist_characters="\"'\\\n\r", blacklist_categories=("Cs",)),
    max_size=20,
)
scalar = (
    plain.map(lambda s: f'"{s}"')
    | plain.map(lambda s: f"'{s}'")
    | st.integers(-(1 << 63), (1 << 63) - 1).map(str)
    | st.sampled_from(["true", "false"])
)
value = scalar | st.lists(scalar, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]")
line = (
    st.tuples(bare, value, st.sampled_from(["", " # note", "\t#x"])).map(
        lambda t: f"{t[0]} = {t[1]}{t[2]}"
    )
    | bare.map(lambda k: f"[{k}]")
    | st.sampled_from(["", "# comment", "   ", "\t# x"])
)
document = st.lists(line, max_size=12).map("\n".join)


def reference(text: str) -> object:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return "error"


def ours(text: str) -> object:
    try:
        return tomlsubset.loads(text)
    except tomllib.TOMLDecodeError:
        return "error"


@given(document)
def test_agrees_with_tomllib_on_config_shaped_text(text: str) -> None:
    assert ours(text) == reference(text)


@given(st.text(max_size=200))
@example("\r")  # a CR not before LF: an error in TOML (found by this test in CI)
@example("a = 1\r")
@example("a = 1\r\r\nb = 2")
def test_agrees_with_tomllib_on_any_text(text: str) -> None:
    assert ours(text) == reference(text)


@given(document)
def test_fast_path_handles_the_subset_without_tomllib(text: str) -> None:
    try:
        fast = tomlsubset._fast(text)
    except tomlsubset._Unsupported:
        return  # duplicates and mixed arrays go to tomllib; the test above covers them
    assert fast == tomllib.loads(text)


def test_typical_agent_toml_takes_the_fast_path() -> None:
    text = (
        '# Fieldpass\nstate_dir = "/data/fieldpass"\n\n[clock]\npolicy = "floor"\n'
        "tolerance_s = 600 # ten minutes\r\n[identity]\nallow_override = false\n"
    )
    assert tomlsubset._fast(text) == tomllib.loads(text)


@pytest.mark.parametrize("text", ['a = "\\u00e9"', "a = 1.5", "a.b = 1", "a = {x = 1}"])
def test_everything_else_falls_back_to_tomllib(text: str) -> None:
    with pytest.raises(tomlsubset._Unsupported):
        tomlsubset._fast(text)
    assert tomlsubset.loads(text) == tomllib.loads(text)


nested_toml = st.recursive(
    scalar,
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")
        | st.lists(st.tuples(bare, inner), max_size=2).map(
            lambda kv: "{" + ", ".join(f"{k} = {v}" for k, v in kv) + "}"
        )
    ),
    max_leaves=12,
)


def toml_depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((toml_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((toml_depth(v) for v in value.values()), default=0)
    return 0


@given(nested_toml, st.sampled_from(["", " # [[[ {{", "\n# ]]]"]))
def test_the_nesting_scan_matches_what_tomllib_builds(text: str, tail: str) -> None:
    """Exact on valid TOML: strings and comments holding brackets do not count."""
    doc = f"a = {text}{tail}\n"
    try:
        parsed = tomllib.loads(doc)
    except tomllib.TOMLDecodeError:
        return  # a duplicate key in an inline table: not this test's subject
    assert tomlsubset.nesting(doc) == toml_depth(parsed["a"])


@pytest.mark.parametrize("depth", [2000, 100_000])
def test_deep_nesting_is_a_value_error_never_a_recursion_error(depth: int) -> None:
    for text in (f"a = {'[' * depth}", f"a = {'[' * depth}{']' * depth}", "a = " + "{b=" * depth):
        with pytest.raises(ValueError, match="nested more than"):
            tomlsubset.loads(text)


def test_nesting_up_to_the_limit_reaches_tomllib() -> None:
    depth = tomlsubset.MAX_DEPTH
    text = f"a = {'[' * depth}1{']' * depth}\n"
    assert toml_depth(tomlsubset.loads(text)["a"]) == depth
