"""The TPM 2.0 NV counter backend, for real: swtpm on loopback, driven by tpm2-tools.

Nothing here is skipped: swtpm and tpm2-tools are test dependencies
(.ci/apt-packages.txt, installed by scripts/install-test-deps).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import tpm
from agent.tpm import NvCounter, TpmError, check_binding
from tests.tpm_server import Swtpm

INDEX = 0x01500016


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    assert shutil.which("tpm2_nvdefine"), "tpm2-tools are not installed"
    with Swtpm(tmp_path) as server:
        yield server


def tool(server: Swtpm, name: str, *args: str) -> None:
    """Run a tpm2-tools command on INDEX with owner authorization (test set-up only)."""
    cmd = [name, "--tcti", server.tcti, f"{INDEX:#x}", "--hierarchy=o", *args]
    subprocess.run(cmd, check=True, capture_output=True)


def test_ensure_read_increment(swtpm: Swtpm) -> None:
    counter = NvCounter(INDEX, tcti=swtpm.tcti, timeout_s=5)
    assert not counter.exists()
    counter.ensure()
    attributes, size = counter.public() or (0, 0)
    assert size == 8
    assert (attributes >> 4) & 0xF == 1, "TPM_NT_COUNTER"
    assert attributes & 0x20000000, "written: incremented once, so it can be read"
    first = counter.read()
    assert first >= 1
    assert counter.increment() == first + 1
    assert counter.increment() == first + 2
    assert counter.read() == first + 2
    counter.bump()
    assert counter.read() == first + 3
    counter.ensure()  # idempotent: no redefinition, no extra increment
    assert counter.read() == first + 3


def test_tcti_from_environment(swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPM2TOOLS_TCTI", swtpm.tcti)
    counter = NvCounter(INDEX)
    counter.ensure()
    assert counter.increment() == counter.read()


def test_monotonic_across_swtpm_restart(swtpm: Swtpm) -> None:
    counter = NvCounter(INDEX, tcti=swtpm.tcti, timeout_s=5)
    counter.ensure()
    for _ in range(3):
        counter.increment()
    before = counter.read()
    swtpm.stop()
    swtpm.start()  # same state dir, new port: a reboot of the device
    counter = NvCounter(INDEX, tcti=swtpm.tcti, timeout_s=5)
    counter.ensure()
    assert counter.read() == before
    assert counter.increment() == before + 1


def test_restored_image_is_detected(swtpm: Swtpm) -> None:
    """The device protocol: write tpm = counter + 1, then increment. An image taken
    at save N and restored after two more saves carries a mark below the counter."""
    counter = NvCounter(INDEX, tcti=swtpm.tcti, timeout_s=5)
    counter.ensure()

    def save() -> int:
        mark = counter.read() + 1  # 1. the state is written with this mark
        assert counter.increment() == mark  # 2. then the counter follows
        return mark

    image = save()  # the customer copies the partition here
    assert check_binding(image, counter.read()) == "ok"
    save()
    save()
    assert check_binding(image, counter.read()) == "restored"


def test_crash_between_write_and_increment_is_repaired(swtpm: Swtpm) -> None:
    counter = NvCounter(INDEX, tcti=swtpm.tcti, timeout_s=5)
    counter.ensure()
    mark = counter.read() + 1  # state written; power lost before the increment
    assert check_binding(mark, counter.read()) == "repair"
    counter.increment()  # the repair the loader does
    assert check_binding(mark, counter.read()) == "ok"


def test_redefined_counter_never_matches_an_old_state(swtpm: Swtpm) -> None:
    """Deleting the index (owner auth is empty on many boards) and defining it again
    does not wind it back: a new counter starts above any value the TPM ever had."""
    counter = NvCounter(INDEX, tcti=swtpm.tcti, timeout_s=5)
    counter.ensure()
    image = counter.read() + 1
    counter.increment()
    tool(swtpm, "tpm2_nvundefine")
    assert not counter.exists()
    counter.ensure()
    assert check_binding(image, counter.read()) not in ("ok", "repair")


def test_foreign_index_is_refused_not_redefined(swtpm: Swtpm) -> None:
    tool(swtpm, "tpm2_nvdefine", "--size=16", "--attributes=ownerwrite|ownerread|authread")
    with pytest.raises(TpmError, match="not an 8-byte counter"):
        NvCounter(INDEX, tcti=swtpm.tcti, timeout_s=5).ensure()


def test_reading_a_never_incremented_counter_fails_clearly(swtpm: Swtpm) -> None:
    tool(swtpm, "tpm2_nvdefine", "--size=8", f"--attributes={tpm.COUNTER_ATTRIBUTES}")
    counter = NvCounter(INDEX, tcti=swtpm.tcti, timeout_s=5)
    with pytest.raises(TpmError, match="tpm2_nvread failed"):
        counter.read()
    counter.ensure()  # increments once
    assert counter.read() >= 1


def test_swtpm_down_gives_a_clear_error_quickly(swtpm: Swtpm) -> None:
    tcti = swtpm.tcti
    swtpm.stop()
    counter = NvCounter(INDEX, tcti=tcti, timeout_s=3)
    start = time.monotonic()
    with pytest.raises(TpmError) as excinfo:
        counter.read()
    assert time.monotonic() - start < 3
    message = str(excinfo.value)
    assert "\n" not in message
    assert tcti in message
    assert "Connection refused" in message or "Could not load tcti" in message


def test_hung_tpm_times_out(swtpm: Swtpm) -> None:
    """A TPM that accepts the connection and never answers (swtpm stopped with SIGSTOP)."""
    counter = NvCounter(INDEX, tcti=swtpm.tcti, timeout_s=1.5)
    counter.ensure()
    assert swtpm.proc is not None
    os.kill(swtpm.proc.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(TpmError, match=r"no answer within 1\.5 s"):
            counter.increment()
        assert time.monotonic() - start < 4
    finally:
        os.kill(swtpm.proc.pid, signal.SIGCONT)


def test_missing_tools_give_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TpmError, match="tpm2_nvread not found: install tpm2-tools"):
        NvCounter(INDEX, tcti="device:/dev/tpmrm0").read()


def test_bad_device_path_names_the_cause() -> None:
    with pytest.raises(TpmError) as excinfo:
        NvCounter(INDEX, tcti="device:/nonexistent/tpmrm0", timeout_s=3).read()
    assert "/nonexistent/tpmrm0" in str(excinfo.value)


def test_index_outside_nv_range_is_refused() -> None:
    with pytest.raises(TpmError, match="outside the NV range"):
        NvCounter(0x81000001)


# --- pure logic ---------------------------------------------------------------------


def test_parse_nv_index() -> None:
    assert tpm.parse_nv_index("0x01500016") == INDEX
    assert tpm.parse_nv_index(" 0X01500016 ") == INDEX
    assert tpm.parse_nv_index(str(INDEX)) == INDEX
    for bad in ("", "0x", "tpm", "0x81000001", "0x0200000000"):
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


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_parse_counter_round_trip(value: int) -> None:
    assert tpm.parse_counter(value.to_bytes(8, "big")) == value


@pytest.mark.parametrize("raw", [b"", b"\x00" * 7, b"\x00" * 9])
def test_parse_counter_wrong_length(raw: bytes) -> None:
    with pytest.raises(TpmError, match="expected 8"):
        tpm.parse_counter(raw)


def test_summarise_stderr_keeps_one_line_with_the_cause() -> None:
    stderr = (
        "WARNING:tcti:src/util/io.c:262:socket_connect() Failed to connect to host "
        "127.0.0.1, port 1: errno 111: Connection refused \n"
        "ERROR:tcti:src/tss2-tcti/tctildr.c:428:Tss2_TctiLdr_Initialize_Ex() Failed \n"
        'ERROR: Could not load tcti, got: "swtpm:host=127.0.0.1,port=1"\n'
    )
    message = tpm.summarise_stderr(stderr)
    assert message.startswith('Could not load tcti, got: "swtpm:host=127.0.0.1,port=1"')
    assert "Connection refused" in message
    assert "\n" not in message


def test_module_stays_off_heavy_imports() -> None:
    code = "import sys, agent.tpm; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout.split()
    for name in ("subprocess", "json", "re", "dataclasses", "typing", "click", "paho"):
        assert name not in out, name
