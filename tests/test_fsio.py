"""Files the device reads and writes: never a hang on a FIFO or a device node, never a
planted symlink followed, a bound on every read (agent/fsio.py).

Each hostile file is a real one made here (mkfifo, mknod as root, a bound AF_UNIX
socket, a symlink). The gate runs as the installed script with a timeout, so a gate
that hangs fails the test instead of hanging the suite.
"""

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import fsio
from tests.conftest import DeviceRoot, Signer

GATE_TIMEOUT_S = 20


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_char_device(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is


def make_directory(path: Path) -> None:
    path.mkdir()


def make_symlink(path: Path) -> None:
    target = path.parent / f"{path.name}.target"
    target.write_bytes(b"not what the device wrote")
    path.symlink_to(target)


@pytest.fixture
def make_socket() -> Iterator[Callable[[Path], None]]:
    held: list[socket.socket] = []

    short = Path(tempfile.mkdtemp(prefix="fp-sock-"))  # AF_UNIX paths are 108 bytes at most

    def make(path: Path) -> None:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(short / "s"))
        os.rename(short / "s", path)  # a bound socket file moves like any other
        held.append(sock)

    yield make
    for sock in held:
        sock.close()
    shutil.rmtree(short)


KINDS = {
    "fifo": (make_fifo, "a FIFO"),
    "char_device": (make_char_device, "a character device"),
    "directory": (make_directory, "a directory"),
    "symlink": (make_symlink, "a symbolic link"),
}


def replace_with(path: Path, kind: str, make_socket: Callable[[Path], None]) -> str:
    """Put a non-regular file of ``kind`` at ``path``; return how fsio names it."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "socket":
        make_socket(path)
        return "a socket"
    make, words = KINDS[kind]
    make(path)
    return words


ALL_KINDS = [*KINDS, "socket"]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_read_bytes_refuses_non_regular_files_by_name(
    tmp_path: Path, kind: str, make_socket: Callable[[Path], None]
) -> None:
    path = tmp_path / "machine.file"
    words = replace_with(path, kind, make_socket)
    with pytest.raises(fsio.NotRegularFile) as info:
        fsio.read_bytes(str(path), 1024)
    assert f"is {words}, not a regular file" in str(info.value)
    assert info.value.reason == "not_regular"
    assert isinstance(info.value, fsio.StorageError)


def test_read_bytes_reads_at_most_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 5000)
    assert fsio.read_bytes(str(path), 5000) == b"x" * 5000
    with pytest.raises(fsio.TooLarge, match="larger than 4999 bytes") as info:
        fsio.read_bytes(str(path), 4999)
    assert info.value.reason == "too_large"
    assert fsio.read_bytes(str(tmp_path / "absent"), 10) is None


def test_system_files_follow_symlinks_and_refuse_fifos(tmp_path: Path) -> None:
    """/etc/machine-id is often a symlink on a read-only root; a FIFO is never an id."""
    real = tmp_path / "machine-id.real"
    real.write_text("0123456789abcdef0123456789abcdef\n")
    link = tmp_path / "machine-id"
    link.symlink_to(real)
    assert fsio.read_system_file(str(link), 4096).startswith(b"0123")
    fifo = tmp_path / "serial-number"
    os.mkfifo(fifo)
    with pytest.raises(fsio.NotRegularFile):
        fsio.read_system_file(str(fifo), 4096)


def test_a_kernel_attribute_reads_bounded() -> None:
    """sysfs reports 4096 bytes for every attribute; the read takes what is there."""
    path = "/sys/kernel/mm/transparent_hugepage/enabled"
    if not os.path.exists(path):
        path = "/proc/sys/kernel/pid_max"
    data = fsio.read_system_file(path, 4096)
    assert 0 < len(data) < 4096


def test_the_lock_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    state = tmp_path / "state"
    state.mkdir()
    (state / fsio.LOCK_NAME).symlink_to(victim)
    with fsio.ExclusiveLock(str(state)):
        pass
    assert victim.read_text() == "keep"


# -- the gate against non-regular files at every path it reads ---------------------------


def gate_paths(device: DeviceRoot) -> dict[str, Path]:
    return {
        "machine file": device.machine_file,
        "state slot a": device.state_dir / "state.a",
        "state slot b": device.state_dir / "state.b",
        "license key": device.state_dir / "license.key",
        "keyring": device.path / "etc/fieldpass/keyring",
        "agent.toml": device.path / "etc/fieldpass/agent.toml",
        "incoming machine file": device.state_dir / "incoming/machine.file",
        "incoming license key": device.state_dir / "incoming/license.key",
    }


@pytest.mark.parametrize("kind", ["fifo", "char_device", "socket", "directory"])
@pytest.mark.parametrize(
    "where",
    [
        "machine file",
        "state slot a",
        "state slot b",
        "license key",
        "keyring",
        "agent.toml",
        "incoming machine file",
        "incoming license key",
    ],
)
def test_non_regular_file_never_hangs_the_gate(
    device: DeviceRoot,
    signer: Signer,
    where: str,
    kind: str,
    make_socket: Callable[[Path], None],
) -> None:
    signer.provision(device)
    assert device.check().returncode == 0
    path = gate_paths(device)[where]
    if where.startswith("incoming"):
        (device.state_dir / "incoming").mkdir(exist_ok=True)
        device.machine_file.unlink()  # the spool is read only before the first install
    replace_with(path, kind, make_socket)
    result = device.run("check", "--json", timeout=GATE_TIMEOUT_S)
    assert "Traceback" not in result.stderr
    expected = {
        "machine file": {31},  # refused, reason not_regular
        "state slot a": {0},  # the other slot is good
        "state slot b": {0},
        "license key": {30},  # no usable key: not activated
        "keyring": {78},
        "agent.toml": {78},
        "incoming machine file": {30},
        "incoming license key": {30},
    }[where]
    assert result.returncode in expected, (result.stdout, result.stderr)
    if where == "machine file":
        assert device.verdict()["reason"] == "not_regular"
        assert "not a regular file" in str(device.verdict()["message"])
    if where in ("keyring", "agent.toml"):
        assert "not a regular file" in result.stderr
        assert device.verdict()["verdict"] == "error"


def test_oversize_machine_file_has_its_own_reason(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device)
    device.machine_file.write_bytes(b"\0" * (64 * 1024))
    result = device.run("check", "--json")
    assert result.returncode == 31
    assert device.verdict()["reason"] == "too_large"


# -- atomic_write never follows what is planted at a temp name -----------------------------


def plant_old_temp_names(directory: Path, names: list[str], victim: Path) -> int:
    """A symlink to ``victim`` at NAME.tmp.PID for every PID this kernel can hand out:
    every temp name the old atomic_write could have chosen."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    if pid_max > 100_000:
        pytest.fail(f"pid_max {pid_max}: too many names to plant here")
    planted = 0
    for name in names:
        for pid in range(1, pid_max + 1):
            (directory / f"{name}.tmp.{pid}").symlink_to(victim)
            planted += 1
    return planted


def test_no_temp_name_of_the_verdict_files_is_ever_followed(
    device: DeviceRoot, signer: Signer, tmp_path: Path
) -> None:
    signer.provision(device)
    assert device.check().returncode == 0
    victim = tmp_path / "victim"
    victim.write_text("root-owned file an attacker wants overwritten\n")
    plant_old_temp_names(device.verdict_dir, ["verdict.json", "verdict.env"], victim)
    result = device.check()
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "root-owned file an attacker wants overwritten\n"
    assert device.verdict()["verdict"] == "valid"
    assert (device.verdict_dir / "verdict.env").read_text().startswith("FIELDPASS_VERDICT=")


def test_no_temp_name_on_the_data_partition_is_ever_followed(
    device: DeviceRoot, signer: Signer, tmp_path: Path
) -> None:
    """The install path writes the license key, the machine file and both slots; the
    daemon its resume point. In process, so the old names (this PID) are known."""
    from agent.daemon import resume

    signer.provision(device)
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    names = ["machine.file", "license.key", "state.a", "state.b", resume.NAME]
    for name in names:
        (device.state_dir / f"{name}.tmp.{os.getpid()}").symlink_to(victim)
    cfg = device.config()
    fsio.atomic_write(os.path.join(cfg.state_dir, resume.NAME), b"{}", 0o600)
    for name in ("machine.file", "license.key"):
        fsio.atomic_write(os.path.join(cfg.state_dir, name), b"new", 0o600)
    assert victim.read_text() == "keep\n"
    assert (device.state_dir / "machine.file").read_bytes() == b"new"
    fsio.remove_stale_temps(cfg.state_dir)
    assert not [p for p in device.state_dir.iterdir() if ".tmp." in p.name]


def test_temp_names_are_unpredictable_and_removable(tmp_path: Path) -> None:
    seen = set()
    for _ in range(50):
        fd, tmp = fsio._create_temp(str(tmp_path / "f"), 0o600)
        os.close(fd)
        assert os.path.basename(tmp).startswith("f.tmp.")
        seen.add(tmp)
    assert len(seen) == 50
    fsio.remove_stale_temps(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "verdict.json"
    target.symlink_to(victim)
    fsio.atomic_write(str(target), b"{}", durable=False)
    assert victim.read_text() == "keep"
    assert not target.is_symlink() and target.read_bytes() == b"{}"


def test_a_device_node_or_fifo_at_the_target_is_never_replaced(tmp_path: Path) -> None:
    """`fieldpass request -o /dev/null` as root must not turn /dev/null into a file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target in (fifo, tmp_path):
        with pytest.raises(fsio.NotRegularFile, match="not a regular file"):
            fsio.atomic_write(str(target), b"x")
    # a character device node like /dev/null (made here: never risk the real one)
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(fsio.NotRegularFile):
        fsio.atomic_write(str(null), b"x")
    assert null.is_char_device() and os.stat(null).st_rdev == os.makedev(1, 3)
