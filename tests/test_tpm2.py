"""The in-process TPM 2.0 client (agent/tpm2.py), for real: swtpm on loopback, and every
result compared with what the real tpm2-tools see on the same TPM.

Nothing here is skipped: swtpm and tpm2-tools are test dependencies (.ci/apt-packages.txt).
This machine has no TPM (no /dev/tpm*, and its kernel has neither TPM drivers nor CUSE,
so no character device that speaks TPM can be made): the device TCTI's code path is
driven over a SOCK_SEQPACKET socketpair whose far end relays to swtpm (one message per
command and per response, as /dev/tpmrm0 reads and writes), and over /dev/null and
/dev/zero, real character devices that do not speak TPM. Real /dev/tpmrm0 hardware is
absent here.

swtpm serves one data connection at a time, so a ``Tpm`` is closed before tpm2-tools run.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import tpm, tpm2
from agent.tpm2 import NvMissing, NvUninitialized, Tpm, TpmError
from tests import tpm_tools
from tests.tpm_server import Swtpm, free_port_pair
from tests.tpm_tools import NvCounter, parse_nv_list

INDEX = 0x01500016
OTHER = 0x01500017
# The ordinary index the brief names: authread|authwrite|no_da|ownerread|ownerwrite.
ORDINARY = "authread|authwrite|no_da|ownerread|ownerwrite"
ORDINARY_BITS = (
    tpm2.TPMA_NV_AUTHREAD
    | tpm2.TPMA_NV_AUTHWRITE
    | tpm2.TPMA_NV_NO_DA
    | tpm2.TPMA_NV_OWNERREAD
    | tpm2.TPMA_NV_OWNERWRITE
)


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    with Swtpm(tmp_path) as server:
        yield server


def tools(server: Swtpm, name: str, *args: str) -> bytes:
    """Run one tpm2-tools command against ``server`` (its stdout)."""
    result = subprocess.run(
        [name, "--tcti", server.tcti, *args], capture_output=True, check=False, timeout=20
    )
    assert result.returncode == 0, f"{name} {args}: {result.stderr.decode()}"
    return result.stdout


def tools_public(server: Swtpm) -> dict[int, tuple[int, int]]:
    return parse_nv_list(tools(server, "tpm2_nvreadpublic").decode())


def tools_read(server: Swtpm, index: int, size: int, offset: int = 0, auth: str = "") -> bytes:
    auth_args = ["-P", auth] if auth else []
    return tools(
        server,
        "tpm2_nvread",
        f"{index:#x}",
        "-C",
        f"{index:#x}",
        "-s",
        str(size),
        "--offset",
        str(offset),
        *auth_args,
    )


def client(server: Swtpm) -> Tpm:
    return Tpm(server.tcti, timeout_s=5)


# --- the client and tpm2-tools agree ----------------------------------------------------


def test_counter_defined_by_tools_is_read_and_incremented_by_the_client(swtpm: Swtpm) -> None:
    tools(
        swtpm,
        "tpm2_nvdefine",
        f"{INDEX:#x}",
        "-C",
        "o",
        "-s",
        "8",
        "-a",
        tpm.COUNTER_ATTRIBUTES_TEXT,
    )
    with client(swtpm) as t:
        public = t.nv_read_public(INDEX)
        assert public is not None
        with pytest.raises(NvUninitialized, match="TPM_RC_NV_UNINITIALIZED"):
            t.nv_read_counter(INDEX)
    assert tools_public(swtpm)[INDEX] == public
    attributes, size = public
    assert size == 8
    assert attributes == tpm2.COUNTER_ATTRIBUTES, f"{attributes:#x}"

    tools(swtpm, "tpm2_nvincrement", f"{INDEX:#x}", "-C", f"{INDEX:#x}")
    first = int.from_bytes(tools_read(swtpm, INDEX, 8), "big")
    with client(swtpm) as t:
        assert t.nv_read_counter(INDEX) == first
        for _ in range(3):
            t.nv_increment(INDEX)
        assert t.nv_read_counter(INDEX) == first + 3
        written = t.nv_read_public(INDEX)
    assert written == tools_public(swtpm)[INDEX]
    assert written is not None and written[0] == attributes | tpm2.TPMA_NV_WRITTEN
    assert int.from_bytes(tools_read(swtpm, INDEX, 8), "big") == first + 3
    assert NvCounter(INDEX, tcti=swtpm.tcti).read() == first + 3


def test_counter_defined_by_the_client_is_what_tpm2_tools_define(swtpm: Swtpm) -> None:
    with client(swtpm) as t:
        t.nv_define(INDEX, 8, tpm2.COUNTER_ATTRIBUTES)
    tools(
        swtpm,
        "tpm2_nvdefine",
        f"{OTHER:#x}",
        "-C",
        "o",
        "-s",
        "8",
        "-a",
        tpm.COUNTER_ATTRIBUTES_TEXT,
    )
    listed = tools_public(swtpm)
    assert listed[INDEX] == listed[OTHER] == (tpm2.COUNTER_ATTRIBUTES, 8)

    counter = NvCounter(INDEX, tcti=swtpm.tcti)
    with pytest.raises(tpm_tools.TpmError, match="tpm2_nvread failed"):
        counter.read()  # never incremented: tpm2-tools cannot read it either
    with client(swtpm) as t:
        t.nv_increment(INDEX)
        value = t.nv_read_counter(INDEX)
    assert counter.read() == value
    counter.bump()
    with client(swtpm) as t:
        assert t.nv_read_counter(INDEX) == value + 1
    counter.ensure()  # agent/tpm.py accepts the client's index as its own counter
    assert counter.read() == value + 1


def test_ordinary_index_both_directions(swtpm: Swtpm) -> None:
    """A 32-byte index with an index password: defined, written and read by either side."""
    data_a, data_b = os.urandom(32), os.urandom(32)
    tools(
        swtpm, "tpm2_nvdefine", f"{INDEX:#x}", "-C", "o", "-s", "32", "-a", ORDINARY, "-p", "pw-a"
    )
    with client(swtpm) as t:
        assert t.nv_read_public(INDEX) == (ORDINARY_BITS, 32)
        with pytest.raises(NvUninitialized):
            t.nv_read(INDEX, 32, auth=b"pw-a")
        t.nv_write(INDEX, data_a, auth=b"pw-a")
        t.nv_define(OTHER, 32, ORDINARY_BITS, auth=b"pw-b")
    assert tools_read(swtpm, INDEX, 32, auth="pw-a") == data_a
    assert tools_public(swtpm)[INDEX] == (ORDINARY_BITS | tpm2.TPMA_NV_WRITTEN, 32)
    assert tools_public(swtpm)[OTHER] == (ORDINARY_BITS, 32)

    _tools_write(swtpm, OTHER, data_b, "pw-b")
    _tools_write(swtpm, INDEX, data_b[:8], "pw-a", offset=24)
    with client(swtpm) as t:
        assert t.nv_read(OTHER, 32, auth=b"pw-b") == data_b
        assert t.nv_read(INDEX, 32, auth=b"pw-a") == data_a[:24] + data_b[:8]
        assert t.nv_read(INDEX, 8, 24, auth=b"pw-a") == data_b[:8]
        assert t.nv_read_public(OTHER) == (ORDINARY_BITS | tpm2.TPMA_NV_WRITTEN, 32)


def _tools_write(server: Swtpm, index: int, data: bytes, auth: str, offset: int = 0) -> None:
    result = subprocess.run(
        [
            *("tpm2_nvwrite", "--tcti", server.tcti, f"{index:#x}", "-C", f"{index:#x}"),
            *("-P", auth, "--offset", str(offset), "-i", "-"),
        ],
        input=data,
        capture_output=True,
        check=False,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr.decode()


@pytest.fixture(scope="module")
def shared_swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    with Swtpm(tmp_path_factory.mktemp("tpmstate")) as server:
        yield server


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=1, max_size=32), offset=st.integers(0, 31))
def test_what_the_client_writes_tpm2_tools_read(
    shared_swtpm: Swtpm, data: bytes, offset: int
) -> None:
    data = data[: 32 - offset]
    with client(shared_swtpm) as t:
        if t.nv_read_public(INDEX) is not None:
            t.nv_undefine(INDEX)
        t.nv_define(INDEX, 32, ORDINARY_BITS)
        t.nv_write(INDEX, bytes(32))
        t.nv_write(INDEX, data, offset)
    assert tools_read(shared_swtpm, INDEX, len(data), offset) == data
    whole = bytes(offset) + data + bytes(32 - offset - len(data))
    assert tools_read(shared_swtpm, INDEX, 32) == whole


def test_undefine_both_directions(swtpm: Swtpm) -> None:
    tools(
        swtpm,
        "tpm2_nvdefine",
        f"{INDEX:#x}",
        "-C",
        "o",
        "-s",
        "8",
        "-a",
        tpm.COUNTER_ATTRIBUTES_TEXT,
    )
    with client(swtpm) as t:
        t.nv_define(OTHER, 32, ORDINARY_BITS)
        t.nv_undefine(INDEX)
        assert t.nv_read_public(INDEX) is None
    assert set(tools_public(swtpm)) == {OTHER}
    tools(swtpm, "tpm2_nvundefine", f"{OTHER:#x}", "-C", "o")
    with client(swtpm) as t:
        assert t.nv_read_public(OTHER) is None
    assert tools_public(swtpm) == {}


# --- absent, uninitialized, refused ---------------------------------------------------


def test_an_absent_index_is_nv_missing_for_every_command(swtpm: Swtpm) -> None:
    with client(swtpm) as t:
        assert t.nv_read_public(INDEX) is None
        for call in (
            lambda: t.nv_read(INDEX, 8),
            lambda: t.nv_read_counter(INDEX),
            lambda: t.nv_write(INDEX, b"x"),
            lambda: t.nv_increment(INDEX),
            lambda: t.nv_undefine(INDEX),
        ):
            with pytest.raises(NvMissing, match=r"0x01500016 at swtpm:.*TPM_RC_HANDLE") as info:
                call()
            assert tpm2.rc_base(info.value.rc or 0) == tpm2.RC_HANDLE
        t.nv_read_public(INDEX)  # the connection is still good after TPM errors


def test_never_written_indexes_are_nv_uninitialized(swtpm: Swtpm) -> None:
    with client(swtpm) as t:
        t.nv_define(INDEX, 8, tpm2.COUNTER_ATTRIBUTES)
        t.nv_define(OTHER, 32, ORDINARY_BITS)
        for index, size in ((INDEX, 8), (OTHER, 32)):
            with pytest.raises(NvUninitialized) as info:
                t.nv_read(index, size)
            assert info.value.rc == tpm2.RC_NV_UNINITIALIZED
        t.nv_increment(INDEX)
        assert t.nv_read_counter(INDEX) >= 1


def test_refusals_are_named(swtpm: Swtpm) -> None:
    with client(swtpm) as t:
        t.nv_define(INDEX, 32, ORDINARY_BITS, auth=b"secret-pw")
        t.nv_write(INDEX, bytes(32), auth=b"secret-pw")
        cases: list[tuple[Callable[[], object], str]] = [
            (lambda: t.nv_define(INDEX, 32, ORDINARY_BITS), "TPM_RC_NV_DEFINED"),
            (lambda: t.nv_read(INDEX, 16, 20, auth=b"secret-pw"), "TPM_RC_NV_RANGE"),
            (lambda: t.nv_read(INDEX, 8, auth=b"wrong-pw"), "TPM_RC_BAD_AUTH"),
            (lambda: t.nv_increment(INDEX, auth=b"secret-pw"), "TPM_RC_ATTRIBUTES"),
            (lambda: t.nv_define(OTHER, 8, tpm2.COUNTER_ATTRIBUTES, owner_auth=b"x"), "BAD_AUTH"),
        ]
        for call, name in cases:
            with pytest.raises(TpmError, match=name) as info:
                call()
            message = str(info.value)
            assert "\n" not in message and "secret-pw" not in message and "wrong-pw" not in message
            assert info.value.rc is not None
        # an owner-only index read with its own (empty) password: no authread, so its
        # password is not an authorization (the spec: TPM_RC_AUTH_UNAVAILABLE)
        t.nv_define(OTHER, 8, tpm2.TPMA_NV_OWNERREAD | tpm2.TPMA_NV_OWNERWRITE)
        with pytest.raises(TpmError, match="TPM_RC_AUTH_UNAVAILABLE"):
            t.nv_read(OTHER, 8)


def test_a_write_locked_index_is_nv_locked(swtpm: Swtpm) -> None:
    bits = ORDINARY_BITS | 0x00004000  # TPMA_NV_WRITE_STCLEAR: tpm2_nvwritelock may lock it
    with client(swtpm) as t:
        t.nv_define(INDEX, 8, bits)
        t.nv_write(INDEX, b"12345678")
    tools(swtpm, "tpm2_nvwritelock", f"{INDEX:#x}", "-C", f"{INDEX:#x}")
    with client(swtpm) as t, pytest.raises(TpmError, match="TPM_RC_NV_LOCKED") as info:
        t.nv_write(INDEX, b"87654321")
    assert tpm2.rc_base(info.value.rc or 0) == tpm2.RC_NV_LOCKED


# --- counters defined again: where they start (the lead's lost-state design) -----------


def test_where_a_counter_defined_again_starts(swtpm: Swtpm) -> None:
    """Measured on swtpm 0.7.1 / libtpms 0.9.2 (the TPM 2.0 reference code), and pinned:

    - after ``tpm2_nvundefine``, the same index defined again reads NV_UNINITIALIZED until
      its first increment, which gives (highest value any deleted counter had) + 1: above
      every value it had before;
    - after ``tpm2_clear`` (swtpm's lockout auth is empty), which deletes every owner
      index, a counter defined again starts the same way: above every earlier value;
    - but a counter defined beside a LIVE counter does not start above that one: the TPM
      remembers the highest value of deleted counters only. Only "the same index, again"
      is guaranteed to start above its own past.
    """
    with client(swtpm) as t:
        t.nv_define(INDEX, 8, tpm2.COUNTER_ATTRIBUTES)
        t.nv_increment(INDEX)
        for _ in range(5):
            t.nv_increment(INDEX)
        before = t.nv_read_counter(INDEX)
        t.nv_define(OTHER, 8, tpm2.COUNTER_ATTRIBUTES)
        t.nv_increment(OTHER)
        beside = t.nv_read_counter(OTHER)
        assert beside < before, "a new counter does not start above a live one"
        t.nv_undefine(OTHER)
    tools(swtpm, "tpm2_nvundefine", f"{INDEX:#x}", "-C", "o")
    with client(swtpm) as t:
        t.nv_define(INDEX, 8, tpm2.COUNTER_ATTRIBUTES)
        with pytest.raises(NvUninitialized):
            t.nv_read_counter(INDEX)
        t.nv_increment(INDEX)
        again = t.nv_read_counter(INDEX)
        assert again == before + 1
        for _ in range(3):
            t.nv_increment(INDEX)
        before_clear = t.nv_read_counter(INDEX)
    tools(swtpm, "tpm2_clear", "-c", "l")
    with client(swtpm) as t:
        assert t.nv_read_public(INDEX) is None, "tpm2_clear deleted the owner's index"
        t.nv_define(INDEX, 8, tpm2.COUNTER_ATTRIBUTES)
        t.nv_increment(INDEX)
        assert t.nv_read_counter(INDEX) == before_clear + 1
    # a swtpm restart on the same state keeps the highest value too
    swtpm.stop()
    swtpm.start()
    with client(swtpm) as t:
        t.nv_undefine(INDEX)
        t.nv_define(INDEX, 8, tpm2.COUNTER_ATTRIBUTES)
        t.nv_increment(INDEX)
        assert t.nv_read_counter(INDEX) == before_clear + 2


# --- the connection ---------------------------------------------------------------------


def test_one_connection_serves_every_command(swtpm: Swtpm) -> None:
    with client(swtpm) as t:
        t.nv_define(INDEX, 8, tpm2.COUNTER_ATTRIBUTES)
        t.nv_increment(INDEX)
        fd = t._fd
        for _ in range(20):
            t.nv_read_counter(INDEX)
            t.nv_increment(INDEX)
        assert t._fd == fd
        final = t.nv_read_counter(INDEX)
    with pytest.raises(TpmError, match="connection is closed"):
        t.nv_read_counter(INDEX)
    assert int.from_bytes(tools_read(swtpm, INDEX, 8), "big") == final


def test_a_host_name_is_resolved(swtpm: Swtpm) -> None:
    """``localhost`` goes through getaddrinfo (::1 is refused, 127.0.0.1 answers);
    a numeric address does not."""
    with Tpm(f"swtpm:host=localhost,port={swtpm.port}", timeout_s=5) as t:
        assert t.nv_read_public(INDEX) is None


def test_swtpm_in_disconnect_mode_is_a_clear_error(tmp_path: Path) -> None:
    """swtpm --server ...,disconnect closes after every answer. The client keeps one
    connection and never resends a command on a new one (it cannot know whether the
    old one ran it), so the second command fails, clearly."""
    with Swtpm(tmp_path, server_options=",disconnect") as server, client(server) as t:
        assert t.nv_read_public(INDEX) is None
        with pytest.raises(TpmError, match=r"closed the connection|reset by peer|Broken pipe"):
            t.nv_read_public(INDEX)


def test_mssim_framing_against_swtpm(swtpm: Swtpm) -> None:
    """The TCG simulator framing on swtpm's server port (which accepts it), and what
    tpm2-tools' own mssim TCTI does there: it fails, because it sends the simulator's
    platform commands to port+1, where swtpm speaks its own control protocol."""
    tcti = f"mssim:host=127.0.0.1,port={swtpm.port}"
    with Tpm(tcti, timeout_s=5) as t:
        t.nv_define(INDEX, 8, tpm2.COUNTER_ATTRIBUTES)
        t.nv_increment(INDEX)
        t.nv_increment(INDEX)
        value = t.nv_read_counter(INDEX)
        assert t.nv_read_public(INDEX) == (tpm2.COUNTER_ATTRIBUTES | tpm2.TPMA_NV_WRITTEN, 8)
    assert int.from_bytes(tools_read(swtpm, INDEX, 8), "big") == value
    failed = subprocess.run(
        ["tpm2_nvreadpublic", "--tcti", tcti], capture_output=True, timeout=20, check=False
    )
    assert failed.returncode != 0 and b"MS_SIM_NV_ON" in failed.stderr


def test_tcti_never_comes_from_the_environment(swtpm: Swtpm) -> None:
    env = dict(os.environ, TPM2TOOLS_TCTI=swtpm.tcti, PATH="/nonexistent")
    code = (
        "from agent.tpm2 import Tpm, TpmError\n"
        "try:\n    Tpm('', timeout_s=2)\nexcept TpmError as e:\n    print(e)\n"
        "else:\n    print('connected')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out.startswith("cannot open the TPM at device:/dev/tpmrm0: "), out
    assert "No such file or directory" in out and "swtpm" not in out


@pytest.mark.parametrize(
    "tcti",
    ["abrmd", "libtpms:", "swtpm:host=127.0.0.1,port=0", "swtpm:port=x", "mssim:path=/tmp/s"],
)
def test_unsupported_tctis_are_refused_clearly(tcti: str) -> None:
    with pytest.raises(TpmError) as info:
        Tpm(tcti)
    assert "\n" not in str(info.value) and repr(tcti) in str(info.value)


def test_swtpm_down_fails_at_once_naming_the_tcti(swtpm: Swtpm) -> None:
    tcti = swtpm.tcti
    swtpm.stop()
    start = time.monotonic()
    with pytest.raises(TpmError) as info:
        Tpm(tcti, timeout_s=5)
    assert time.monotonic() - start < 1, "a refused connection is not waited for"
    assert str(info.value) == f"cannot open the TPM at {tcti}: Connection refused"


def test_swtpm_without_its_control_port_is_named() -> None:
    """The data port listens, port+1 does not: the error says which port."""
    port = free_port_pair()
    data = socket.create_server(("127.0.0.1", port))
    try:
        with pytest.raises(TpmError) as info:
            Tpm(f"swtpm:host=127.0.0.1,port={port}", timeout_s=2)
    finally:
        data.close()
    assert str(info.value).startswith(f"cannot open the TPM at swtpm:host=127.0.0.1,port={port}: ")
    assert f"swtpm's control port {port + 1}: Connection refused" in str(info.value)


def test_swtpm_stopped_mid_session_times_out(swtpm: Swtpm) -> None:
    t = Tpm(swtpm.tcti, timeout_s=1.0)
    t.nv_define(INDEX, 8, tpm2.COUNTER_ATTRIBUTES)
    t.nv_increment(INDEX)
    swtpm.pause()
    try:
        start = time.monotonic()
        with pytest.raises(TpmError, match=r"TPM2_NV_Increment 0x01500016 .*no answer within 1 s"):
            t.nv_increment(INDEX)
        assert time.monotonic() - start < 2.5
        with pytest.raises(TpmError, match=r"closed after an earlier error \(no answer"):
            t.nv_read_counter(INDEX)
    finally:
        swtpm.resume()
        t.close()


def test_swtpm_stopped_before_connecting_times_out(swtpm: Swtpm) -> None:
    """The kernel still accepts the TCP connection of a stopped swtpm: the locality
    exchange on the control port is what hangs, and it is bounded too."""
    swtpm.pause()
    try:
        start = time.monotonic()
        with pytest.raises(TpmError, match=r"no answer within 1 s"):
            Tpm(swtpm.tcti, timeout_s=1.0)
        assert time.monotonic() - start < 2.5
    finally:
        swtpm.resume()


def test_bad_arguments_are_value_errors() -> None:
    t = Tpm.from_fd(os.open("/dev/null", os.O_RDWR), "/dev/null")
    with t:
        for call in (
            lambda: t.nv_read(0x81000001, 8),
            lambda: t.nv_read(INDEX, tpm2.MAX_NV_CHUNK + 1),
            lambda: t.nv_write(INDEX, b"x", offset=-1),
            lambda: t.nv_read(INDEX, 8, auth=bytes(65)),
            lambda: t.nv_define(INDEX, 1 << 16, 0),
        ):
            with pytest.raises(ValueError):
                call()
    with pytest.raises(ValueError):
        Tpm("device:/dev/null", timeout_s=0)


# --- the device TCTI's code path --------------------------------------------------------


class DeviceStandIn:
    """The far end of a SOCK_SEQPACKET socketpair, relaying each command (one message)
    to swtpm's server port and each response back as one message: what /dev/tpmrm0
    does with one write and one read. Stand-in for hardware this machine lacks."""

    def __init__(self, server: Swtpm) -> None:
        self.near, self.far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.upstream = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.thread = threading.Thread(target=self._relay, daemon=True)
        self.thread.start()

    def _relay(self) -> None:
        while command := self.far.recv(8192):
            self.upstream.sendall(command)
            answer = self.upstream.recv(8192)
            size = int.from_bytes(answer[2:6], "big")
            while len(answer) < size:
                answer += self.upstream.recv(8192)
            self.far.send(answer)

    def close(self) -> None:
        self.far.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        self.far.close()
        self.upstream.close()


def test_device_code_path_against_swtpm(swtpm: Swtpm) -> None:
    device = DeviceStandIn(swtpm)
    try:
        with Tpm.from_fd(device.near.detach(), "device:stand-in", timeout_s=5) as t:
            t.nv_define(INDEX, 8, tpm2.COUNTER_ATTRIBUTES)
            assert t.nv_read_public(INDEX) == (tpm2.COUNTER_ATTRIBUTES, 8)
            with pytest.raises(NvUninitialized):
                t.nv_read_counter(INDEX)
            t.nv_increment(INDEX)
            t.nv_increment(INDEX)
            value = t.nv_read_counter(INDEX)
            with pytest.raises(NvMissing):
                t.nv_read(OTHER, 8)
    finally:
        device.close()
    assert int.from_bytes(tools_read(swtpm, INDEX, 8), "big") == value


def test_device_path_that_is_missing_names_it() -> None:
    with pytest.raises(TpmError) as info:
        Tpm("device:/nonexistent/tpmrm0")
    assert str(info.value) == (
        "cannot open the TPM at device:/nonexistent/tpmrm0: No such file or directory"
    )


@pytest.mark.parametrize(
    ("path", "why"),
    [("/dev/null", "closed the connection"), ("/dev/zero", "bytes arrived before the command")],
)
def test_character_devices_that_are_not_a_tpm(path: str, why: str) -> None:
    with Tpm(f"device:{path}", timeout_s=2) as t, pytest.raises(TpmError, match=why):
        t.nv_read_public(INDEX)


def test_a_device_that_never_answers_times_out() -> None:
    near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with Tpm.from_fd(near.detach(), "device:silent", timeout_s=0.5) as t:
        start = time.monotonic()
        with pytest.raises(TpmError, match=r"no answer within 0\.5 s"):
            t.nv_increment(INDEX)
        assert time.monotonic() - start < 2
    far.close()


# --- hostile answers ---------------------------------------------------------------------


class FakeTpm:
    """A TCP server on 127.0.0.1 that answers a command with ``answer``, then closes
    (``mode="close"``), stays silent until the client leaves (``"hang"``), or answers
    every further command the same way (``"repeat"``). Its port+1 answers swtpm's
    CMD_SET_LOCALITY with success, so ``swtpm:`` connects as well as ``mssim:``."""

    def __init__(self) -> None:
        self.port = free_port_pair()
        self.answer = b""
        self.mode = "close"
        self.commands: list[bytes] = []
        self.listeners = [
            socket.create_server(("127.0.0.1", p)) for p in (self.port, self.port + 1)
        ]
        for listener, serve in zip(
            self.listeners, (self._serve_data, self._serve_ctrl), strict=True
        ):
            threading.Thread(target=self._accept, args=(listener, serve), daemon=True).start()

    def _accept(self, listener: socket.socket, serve: Callable[[socket.socket], None]) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    serve(conn)
                except OSError:
                    pass

    def _serve_ctrl(self, conn: socket.socket) -> None:
        conn.recv(64)
        conn.sendall(bytes(4))

    def _serve_data(self, conn: socket.socket) -> None:
        while command := conn.recv(8192):
            self.commands.append(command)
            conn.sendall(self.answer)
            if self.mode == "close":
                return
            if self.mode == "hang":
                while conn.recv(8192):
                    pass
                return

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeTpm]:
    server = FakeTpm()
    yield server
    server.close()


def header(tag: int, size: int, rc: int) -> bytes:
    return tag.to_bytes(2, "big") + size.to_bytes(4, "big") + rc.to_bytes(4, "big")


@pytest.mark.parametrize("kind", ["swtpm", "mssim"])
@pytest.mark.parametrize(
    ("answer", "hang", "why"),
    [
        (b"", False, "closed the connection"),
        (b"\x80\x01\x00\x00", False, "closed the connection"),  # truncated header
        (b"\x80\x01\x00\x00", True, "no answer within"),  # truncated, then silence
        (header(0x8001, 9, 0), False, "size field 9"),
        (header(0x8001, 0xFFFFFFFF, 0), False, "size field 4294967295"),
        (header(0x8001, 4097, 0), True, "size field 4097"),
        (header(0x8001, 64, 0) + bytes(20), True, "no answer within"),  # short, then silence
        (header(0x8001, 12, 0) + bytes(4), False, "malformed response"),  # longer than it says
        (header(0x8002, 10, 0), False, "tag 0x8002"),
        (header(0x8001, 12, 0x18B) + bytes(2), False, "malformed error response"),
        (header(0x8001, 10, 0), False, "malformed response"),  # success with nothing in it
    ],
)
def test_broken_answers_are_tpm_errors(
    fake: FakeTpm, kind: str, answer: bytes, hang: bool, why: str
) -> None:
    if kind == "mssim" and answer:  # framed with the length the header claims
        claimed = int.from_bytes(answer[2:6], "big") if len(answer) >= 6 else len(answer)
        answer = claimed.to_bytes(4, "big") + answer + bytes(4)
    fake.answer, fake.mode = answer, ("hang" if hang else "close")
    start = time.monotonic()
    tcti = f"{kind}:host=127.0.0.1,port={fake.port}"
    with pytest.raises(TpmError, match=why) as info, Tpm(tcti, timeout_s=0.5) as t:
        t.nv_read_public(INDEX)
    assert "\n" not in str(info.value)
    assert time.monotonic() - start < 2.5


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["swtpm", "mssim"]),
    answer=st.one_of(
        st.binary(max_size=64),
        st.builds(
            lambda tag, size, rc, body: header(tag, size, rc) + body,
            st.sampled_from([0x8001, 0x8002, 0x00C4]),
            st.integers(0, 80),
            st.sampled_from([0, 0x18B, 0x14A, 0x922, 0x908]),
            st.binary(max_size=70),
        ),
    ),
    call=st.sampled_from(["read_public", "read", "counter", "write", "increment", "define"]),
)
def test_any_answer_is_a_result_or_a_tpm_error(
    fake: FakeTpm, kind: str, answer: bytes, call: str
) -> None:
    fake.answer, fake.mode = answer, "close"
    start = time.monotonic()
    try:
        with Tpm(f"{kind}:host=127.0.0.1,port={fake.port}", timeout_s=0.5) as t:
            if call == "read_public":
                result: object = t.nv_read_public(INDEX)
                assert result is None or isinstance(result, tuple)
            elif call == "read":
                assert len(t.nv_read(INDEX, 4)) == 4
            elif call == "counter":
                assert 0 <= t.nv_read_counter(INDEX) < 1 << 64
            elif call == "write":
                t.nv_write(INDEX, b"abcd")
            elif call == "increment":
                t.nv_increment(INDEX)
            else:
                t.nv_define(INDEX, 8, tpm2.COUNTER_ATTRIBUTES)
    except TpmError as exc:
        assert "\n" not in str(exc)
    assert time.monotonic() - start < 2.5


@given(st.binary(max_size=80))
def test_response_parser_only_raises_tpm_error(raw: bytes) -> None:
    for sessions in (False, True):
        try:
            rc, reader = tpm2.parse_response(raw, sessions)
        except TpmError:
            continue
        assert len(raw) >= 10 and int.from_bytes(raw[2:6], "big") == len(raw)
        assert 0 <= reader.pos <= reader.end <= len(raw)
        assert rc == int.from_bytes(raw[6:10], "big")


# --- pure pieces -------------------------------------------------------------------------


def test_command_bytes_match_the_spec() -> None:
    """TPM2_NV_Read with a password session, byte for byte (Part 3, NV_Read)."""
    fields = [
        "8002",  # TPM_ST_SESSIONS
        "00000025",  # commandSize 37
        "0000014e",  # TPM_CC_NV_Read
        "01500016",  # authHandle: the index itself
        "01500016",  # nvIndex
        "0000000b",  # authorizationSize 11
        "40000009",  # TPM_RS_PW
        "0000",  # nonceCaller: empty
        "01",  # sessionAttributes: continueSession
        "00027077",  # hmac: the password "pw"
        "0008",  # size
        "0000",  # offset
    ]
    command = tpm2.build_command(0x14E, (INDEX, INDEX), b"pw", (8).to_bytes(2, "big") + bytes(2))
    assert command.hex() == "".join(fields)


@pytest.mark.parametrize(
    ("rc", "name"),
    [
        (0x18B, "TPM_RC_HANDLE (0x18b, handle 1)"),
        (0x28B, "TPM_RC_HANDLE (0x28b, handle 2)"),
        (0x9A2, "TPM_RC_BAD_AUTH (0x9a2, session 1)"),
        (0x98E, "TPM_RC_AUTH_FAIL (0x98e, session 1)"),
        (0x1C4, "TPM_RC_VALUE (0x1c4, parameter 1)"),
        (0x14A, "TPM_RC_NV_UNINITIALIZED (0x14a)"),
        (0x148, "TPM_RC_NV_LOCKED (0x148)"),
        (0x146, "TPM_RC_NV_RANGE (0x146)"),
        (0x14B, "TPM_RC_NV_SPACE (0x14b)"),
        (0x14C, "TPM_RC_NV_DEFINED (0x14c)"),
        (0x922, "TPM_RC_RETRY (0x922)"),
        (0x908, "TPM_RC_YIELDED (0x908)"),
        (0x90A, "TPM_RC_TESTING (0x90a)"),
        (0x921, "TPM_RC_LOCKOUT (0x921)"),
        (0xA0001, "a TSS or resource manager error (0xa0001)"),
        (0x17F, "an unknown response code (0x17f)"),
    ],
)
def test_rc_names(rc: int, name: str) -> None:
    assert tpm2.rc_name(rc) == name


@given(st.integers(0, 2**32 - 1))
def test_rc_name_is_total(rc: int) -> None:
    name = tpm2.rc_name(rc)
    assert "\n" not in name and f"{rc:#x}" in name


def test_retryable_warnings_are_sent_again(fake: FakeTpm) -> None:
    """TPM_RC_RETRY is resent (as libtss2's ESAPI does, 5 submissions at most), then named."""
    fake.answer, fake.mode = header(0x8001, 10, 0x922), "repeat"
    fake.commands.clear()
    with Tpm(f"swtpm:host=127.0.0.1,port={fake.port}", timeout_s=5) as t:
        with pytest.raises(TpmError, match="TPM_RC_RETRY") as info:
            t.nv_increment(INDEX)
        assert info.value.rc == tpm2.RC_RETRY
    assert len(fake.commands) == 5
    assert len(set(fake.commands)) == 1


def test_module_stays_light() -> None:
    """What ``import agent.tpm2`` loads, as ``python -X importtime`` lists it."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-S", "-c", "import agent.tpm2"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    loaded = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert {"agent.tpm2", "select"} <= loaded
    heavy = {"socket", "_socket", "struct", "enum", "typing", "dataclasses", "re", "subprocess"}
    assert not loaded & heavy, sorted(loaded & heavy)
