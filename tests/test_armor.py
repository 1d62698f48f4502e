"""Armor: emitted strictly, parsed tolerantly, base64 decoded strictly."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.wire import armor
from agent.wire.errors import FormatError

LABEL = armor.MACHINE_FILE


@given(st.binary(max_size=3000))
def test_round_trip_and_strict_shape(data: bytes) -> None:
    text = armor.armor(data, LABEL)
    assert armor.unarmor(text, LABEL) == data
    lines = text.split("\n")
    assert lines[0] == f"-----BEGIN {LABEL}-----"
    assert lines[-2] == f"-----END {LABEL}-----" and lines[-1] == ""
    assert all(len(line) <= 64 for line in lines[1:-2])
    assert "\r" not in text


noise = st.text(
    alphabet=st.characters(blacklist_characters="-\r\n", blacklist_categories=("Cs",)),
    max_size=40,
)


@given(
    st.binary(max_size=800),
    noise,
    noise,
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.integers(0, 3),
    st.sampled_from(["", "  ", "\t", "> ", ">> "]),
)
def test_tolerant_of_line_endings_blank_lines_quoting_and_text_around(
    data: bytes, before: str, after: str, eol: str, blanks: int, prefix: str
) -> None:
    lines = armor.armor(data, LABEL).rstrip("\n").split("\n")
    body = [lines[0]]
    for line in lines[1:-1]:
        body += [prefix + line + "  "] + [prefix] * blanks
    body.append(lines[-1])
    text = before + eol + eol.join(body) + eol + after
    assert armor.unarmor(text, LABEL) == data
    assert armor.unarmor(text.encode(), LABEL) == data


def test_wrong_label_missing_end_and_bad_base64() -> None:
    text = armor.armor(b"hello", LABEL)
    with pytest.raises(FormatError, match="expected"):
        armor.unarmor(text, armor.REQUEST)
    with pytest.raises(FormatError, match="cut short"):
        armor.unarmor(text.rsplit("-----END", 1)[0], LABEL)
    with pytest.raises(FormatError, match="base64"):
        armor.unarmor(text.replace("aGVsbG8=", "aGVsbG8*"), LABEL)
    with pytest.raises(FormatError, match="no '-----BEGIN"):
        armor.unarmor("nothing here", LABEL)
