"""The TPM anchor of the device state (agent/tpm.py), for real: swtpm on loopback,
spoken to in process (agent/tpm2.py), with tpm2-tools to play the attacker.

Nothing here is skipped: swtpm, swtpm-tools and tpm2-tools are test dependencies
(.ci/apt-packages.txt, installed by scripts/install-test-deps).
"""

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import tpm
from agent.tpm import Anchor, TpmError, check_binding
from tests.tpm_server import Swtpm

INDEX = 0x01500016


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    with Swtpm(tmp_path / "tpmstate") as server:
        yield server


def tools(server: Swtpm, name: str, *args: str) -> None:
    """tpm2-tools with owner authorization: what root on the device could run."""
    subprocess.run([name, "--tcti", server.tcti, *args], check=True, capture_output=True)


def test_nothing_is_defined_until_provisioned(swtpm: Swtpm) -> None:
    anchor = Anchor(INDEX, swtpm.tcti, timeout_s=5)
    reading = anchor.read()
    assert (reading.counter, reading.unrecorded, reading.secret) == (None, None, None)
    assert not reading.provisioned and not reading.held_state
    after = anchor.provision()
    assert after.provisioned and after.counter is not None and after.secret is not None
    assert after.first == after.counter and not after.held_state
    assert anchor.provision().secret == after.secret  # idempotent: nothing redefined
    anchor.bump()
    anchor.bump_unrecorded()
    moved = anchor.read()
    assert moved.counter == after.counter + 1 and moved.held_state
    assert moved.unrecorded == (after.unrecorded or 0) + 1


def test_the_attributes_are_the_ones_tpm2_tools_names(swtpm: Swtpm) -> None:
    from agent.tpm2 import Tpm

    Anchor(INDEX, swtpm.tcti).provision()
    with Tpm(swtpm.tcti) as client:
        counter = client.nv_read_public(INDEX)
        secret = client.nv_read_public(INDEX + 2)
    assert counter is not None and secret is not None
    assert counter[0] & ~0x20000000 == tpm.COUNTER_ATTRIBUTES and counter[1] == 8
    assert secret[0] & ~0x20000000 == tpm.SECRET_ATTRIBUTES and secret[1] == tpm.SECRET_SIZE
    # and tpm2-tools reads the counter as the same value
    out = subprocess.run(
        ["tpm2_nvread", "--tcti", swtpm.tcti, f"{INDEX:#x}", "-C", f"{INDEX:#x}", "-s", "8"],
        check=True,
        capture_output=True,
    ).stdout
    assert int.from_bytes(out, "big") == Anchor(INDEX, swtpm.tcti).read().counter


def test_an_undefined_counter_comes_back_above_every_value_it_had(swtpm: Swtpm) -> None:
    anchor = Anchor(INDEX, swtpm.tcti)
    first = anchor.provision()
    for _ in range(5):
        anchor.bump()
    held = anchor.read()
    assert held.counter is not None and held.secret is not None
    tools(swtpm, "tpm2_nvundefine", f"{INDEX:#x}", "-C", "o")  # root undefines it
    gone = anchor.read()
    assert gone.counter is None and gone.secret == held.secret
    again = anchor.provision()
    assert again.counter is not None and again.counter > held.counter
    # ...and the secret is new: states sealed with the old one never authenticate
    assert again.secret != held.secret and again.secret != first.secret


def test_a_counter_replaced_by_an_ordinary_index_is_refused(swtpm: Swtpm) -> None:
    anchor = Anchor(INDEX, swtpm.tcti)
    anchor.provision()
    tools(swtpm, "tpm2_nvundefine", f"{INDEX:#x}", "-C", "o")
    # an ordinary 8-byte index whose value root chooses (an old state's mark)
    tools(swtpm, "tpm2_nvdefine", f"{INDEX:#x}", "-C", "o", "-s", "8", "-a",
          "ownerwrite|ownerread|authwrite|authread|no_da")  # fmt: skip
    with pytest.raises(TpmError, match="not an 8-byte counter"):
        anchor.read()
    with pytest.raises(TpmError, match="not an 8-byte counter"):
        anchor.provision()


def test_a_down_or_hung_tpm_is_a_clear_error_within_the_timeout(swtpm: Swtpm) -> None:
    anchor = Anchor(INDEX, swtpm.tcti, timeout_s=1.5)
    anchor.provision()
    swtpm.pause()
    try:
        start = time.monotonic()
        with pytest.raises(TpmError):
            anchor.read()
        assert time.monotonic() - start < 4
    finally:
        swtpm.resume()
    tcti = swtpm.tcti
    swtpm.stop()
    with pytest.raises(TpmError) as caught:
        Anchor(INDEX, tcti, timeout_s=3).read()
    assert "127.0.0.1" in str(caught.value) and "\n" not in str(caught.value)


def test_the_tcti_never_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPM2TOOLS_TCTI", "swtpm:host=127.0.0.1,port=1")
    assert Anchor(INDEX).tcti == "device:/dev/tpmrm0"


def test_index_outside_nv_range_is_refused() -> None:
    with pytest.raises(TpmError, match="outside the NV range"):
        Anchor(0x81000001)
    with pytest.raises(TpmError):
        Anchor(0x01FFFFFE)  # the two indices after it would leave the range


# --- pure logic ---------------------------------------------------------------------


def test_parse_nv_index() -> None:
    assert tpm.parse_nv_index("0x01500016") == INDEX
    assert tpm.parse_nv_index(" 0X01500016 ") == INDEX
    assert tpm.parse_nv_index(str(INDEX)) == INDEX
    for bad in ("", "0x", "tpm", "0x81000001", "0x0200000000", "0x01fffffe"):
        with pytest.raises(TpmError):
            tpm.parse_nv_index(bad)


@pytest.mark.parametrize(
    ("state_tpm", "counter", "verdict"),
    [
        (None, 0, "unbound"),
        (None, 7, "unbound"),
        (7, 7, "ok"),
        (8, 7, "repair"),
        (6, 7, "restored"),
        (0, 7, "restored"),
        (9, 7, "inconsistent"),
        (1 << 63, 1, "inconsistent"),
        (1, 0, "repair"),
    ],
)
def test_check_binding_table(state_tpm: int | None, counter: int, verdict: str) -> None:
    assert check_binding(state_tpm, counter) == verdict


@given(
    st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=-(2**64), max_value=2**64)
)
def test_check_binding_partitions_every_pair(counter: int, delta: int) -> None:
    state_tpm = counter + delta
    verdict = check_binding(state_tpm, counter)
    expected = {0: "ok", 1: "repair"}.get(delta, "restored" if delta < 0 else "inconsistent")
    assert verdict == expected
    # Only the two accepting verdicts let a state through, and never an older one.
    assert (verdict in ("ok", "repair")) == (0 <= delta <= 1)


def test_module_stays_off_heavy_imports() -> None:
    code = "import sys, agent.tpm, agent.tpm2; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout.split()
    for name in ("subprocess", "json", "re", "dataclasses", "typing", "click", "paho", "socket"):
        assert name not in out, name
