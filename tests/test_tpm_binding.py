"""The device state bound to the TPM, for real: swtpm on loopback, the installed
`fieldpass` speaking to it in process, tpm2-tools playing root on the device. The
attacks of issue 11 as an attacker would run them: a restored image, a wipe and a kept
file, a restore then an install, an undefined counter, a forged state, a state from
before the TPM was enabled, a read-only partition freezing the clock mark.
"""

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import state
from agent.config import load
from agent.device import Device
from agent.identity import Identity
from agent.state import State
from agent.tpm import Anchor, parse_nv_index
from agent.wire import sodium
from tests.conftest import DeviceRoot, Signer
from tests.tpm_server import Swtpm

INDEX = "0x01500016"


@pytest.fixture
def tpm(tmp_path: Path) -> Iterator[Swtpm]:
    with Swtpm(tmp_path / "tpmstate") as server:
        yield server


def bind(device: DeviceRoot, tpm: Swtpm, extra: str = "") -> Anchor:
    device.write_config(
        f'[tpm]\nenabled = true\nnv_index = "{INDEX}"\ntcti = "{tpm.tcti}"\n{extra}'
    )
    return Anchor(parse_nv_index(INDEX), tpm.tcti)


def enrolled(device: DeviceRoot, signer: Signer, tpm: Swtpm, serial: int = 1) -> Anchor:
    """A TPM-bound device as the factory makes it: `fieldpass request` (which prepares
    the TPM), HQ's answer bound to the counter, the first install."""
    anchor = bind(device, tpm)
    device.trust(signer.keyring)
    request = device.path.parent / "first.request"
    assert device.run("request", "-o", str(request)).returncode == 0
    answer = device.path.parent / "first.machine"
    answer.write_bytes(signer.answer(device, request.read_bytes(), serial=serial))
    key_file = device.path.parent / "key.txt"
    key_file.write_text(signer.license_key + "\n")
    done = device.run("install", str(answer), "--license-key-file", str(key_file))
    assert done.returncode == 0, done.stderr
    return anchor


def counter(anchor: Anchor) -> int:
    value = anchor.read().counter
    assert value is not None
    return value


def test_the_state_follows_the_counter_once_a_boot(
    device: DeviceRoot, signer: Signer, tpm: Swtpm
) -> None:
    anchor = enrolled(device, signer, tpm)
    first = counter(anchor)
    for n in range(1, 4):
        assert device.check().returncode == 0
        assert counter(anchor) == first + n  # one step a boot
    for _ in range(3):  # status counts no boot and never moves the counter
        assert device.run("status").returncode == 0
    assert counter(anchor) == first + 3


def test_an_unbound_first_install_is_refused_on_a_tpm_device(
    device: DeviceRoot, signer: Signer, tpm: Swtpm
) -> None:
    bind(device, tpm)
    refused = device.run("install", "--license-key-file", "/dev/null", "x")
    assert refused.returncode != 0
    key_file = device.path.parent / "key.txt"
    key_file.write_text(signer.license_key + "\n")
    device.trust(signer.keyring)
    plain = device.path.parent / "plain.machine"
    plain.write_bytes(signer.issue(device.fingerprint))
    result = device.run("install", str(plain), "--license-key-file", str(key_file))
    assert result.returncode == 31
    assert "fieldpass request" in result.stderr and "Traceback" not in result.stderr
    assert device.check().returncode == 30


def test_a_restored_image_is_lost_state_until_hq_answers(
    device: DeviceRoot, signer: Signer, tpm: Swtpm, tmp_path: Path
) -> None:
    enrolled(device, signer, tpm)
    assert device.check().returncode == 0
    image = tmp_path / "image"
    shutil.copytree(device.state_dir, image)  # someone copies the data partition
    for _ in range(3):
        assert device.check().returncode == 0
    shutil.rmtree(device.state_dir)
    shutil.copytree(image, device.state_dir)  # ... and restores it later
    restored = device.check()
    assert restored.returncode == 31
    verdict = device.verdict()
    assert verdict["reason"] == "state_lost"
    assert "restored image" in str(verdict["message"]) and "fieldpass request" in restored.stdout
    # A newer machine file alone (kept, or even fresh from HQ) does not restore it...
    renewal = tmp_path / "renewal.machine"
    renewal.write_bytes(signer.issue(device.fingerprint, serial=5))
    assert device.run("install", str(renewal)).returncode == 31
    assert device.check().returncode == 31
    # ...an answer bound to this device's counter now does.
    assert signer.recover(device, serial=6).returncode == 0
    assert device.check().returncode == 0


def test_a_wipe_and_a_kept_file_is_refused_by_every_offline_path(
    device: DeviceRoot, signer: Signer, tpm: Swtpm, tmp_path: Path
) -> None:
    enrolled(device, signer, tpm, serial=1)
    kept_bound = (tmp_path / "first.machine").read_bytes()  # bound to the old counter
    kept_plain = signer.issue(device.fingerprint, serial=3)
    assert device.check().returncode == 0
    for _ in range(2):  # the attack can be repeated: it must fail every time
        for path in device.state_dir.iterdir():
            if path.is_file():
                path.unlink()
        assert device.check().returncode == 31  # the counter shows it held a state
        assert device.verdict()["reason"] == "state_lost"
        for i, kept in enumerate((kept_bound, kept_plain)):
            f = tmp_path / f"kept-{i}.machine"
            f.write_bytes(kept)
            key_file = tmp_path / "key.txt"
            result = device.run("install", str(f), "--license-key-file", str(key_file))
            assert result.returncode == 31, result.stdout
            # ...nor dropped into incoming/ for the gate to adopt
            incoming = device.state_dir / "incoming"
            incoming.mkdir(parents=True, exist_ok=True)
            (incoming / "machine.file").write_bytes(kept)
            (incoming / "license.key").write_text(signer.license_key + "\n")
            assert device.check().returncode == 31
            assert not (device.state_dir / "machine.file").exists()
    assert signer.recover(device, serial=4).returncode == 0
    assert device.check().returncode == 0


def test_an_undefined_counter_is_lost_state_and_a_kept_file_cannot_match_the_new_one(
    device: DeviceRoot, signer: Signer, tpm: Swtpm, tmp_path: Path
) -> None:
    anchor = enrolled(device, signer, tpm)
    assert device.check().returncode == 0
    kept = (tmp_path / "first.machine").read_bytes()
    old_value = counter(anchor)
    for index in (INDEX, "0x01500018"):  # the counter, and the secret
        subprocess.run(
            ["tpm2_nvundefine", "--tcti", tpm.tcti, index, "-C", "o"],
            check=True,
            capture_output=True,
        )
    result = device.check()
    assert result.returncode == 31 and device.verdict()["reason"] == "state_lost"
    # root wipes the partition too and re-provisions: the new counter starts above
    for path in device.state_dir.iterdir():
        if path.is_file():
            path.unlink()
    assert device.run("tpm", "provision").returncode == 0
    assert counter(anchor) > old_value
    f = tmp_path / "kept.machine"
    f.write_bytes(kept)
    key_file = tmp_path / "key.txt"
    assert device.run("install", str(f), "--license-key-file", str(key_file)).returncode == 31
    assert signer.recover(device, serial=2).returncode == 0
    assert device.check().returncode == 0


def test_a_state_forged_without_the_tpm_secret_is_refused(
    device: DeviceRoot, signer: Signer, tpm: Swtpm
) -> None:
    anchor = enrolled(device, signer, tpm)
    assert device.check().returncode == 0
    # Everything the data partition and the hardware id reveal: the device key's seed,
    # the hardware id, the counter's value (anyone can read it). Not the TPM secret.
    from agent.device import STATE_KEY_CONTEXT
    from agent.wire.device_key import DeviceKey

    seed = DeviceKey.loads((device.state_dir / "device.key").read_bytes()).seed
    base = Identity(device.machine_id, "machine-id").state_key
    guess = sodium.hmac_sha256(base, STATE_KEY_CONTEXT + seed)
    forged = State(activation_id="act_1", serial=1, tpm=counter(anchor), gen=99)
    for slot in state.SLOTS:
        (device.state_dir / slot).write_bytes(state.seal(forged, guess))
    assert device.check().returncode == 31
    assert device.verdict()["reason"] == "state_lost"


def test_a_state_from_before_the_tpm_was_enabled_is_refused(
    device: DeviceRoot, signer: Signer, tpm: Swtpm
) -> None:
    signer.provision(device, serial=1)  # no TPM yet: a state with no TPM mark
    assert device.check().returncode == 0
    bind(device, tpm)
    assert device.run("tpm", "provision").returncode == 0  # the image update enables it
    result = device.check()
    assert result.returncode == 31 and device.verdict()["reason"] == "state_lost"
    assert signer.recover(device, serial=2).returncode == 0
    assert device.check().returncode == 0


def test_a_power_cut_between_state_and_increment_is_accepted(
    device: DeviceRoot, signer: Signer, tpm: Swtpm
) -> None:
    anchor = enrolled(device, signer, tpm)
    assert device.check().returncode == 0
    dev = Device(load(str(device.path)))
    loaded = dev.load()
    assert loaded.state is not None and loaded.reading is not None
    key = dev._state_key(loaded.reading)
    assert key is not None
    value = counter(anchor)
    # the state carrying counter + 1 is written, the power goes before the increment
    state.save(str(device.state_dir), key, loaded.state.replace(tpm=value + 1))
    assert counter(anchor) == value
    assert device.check().returncode == 0
    assert counter(anchor) == value + 1


def test_an_unreachable_tpm_fails_closed(device: DeviceRoot, signer: Signer, tpm: Swtpm) -> None:
    enrolled(device, signer, tpm)
    assert device.check().returncode == 0
    tpm.stop()
    result = device.check()
    assert result.returncode == 31
    assert device.verdict()["reason"] == "tpm_unavailable"
    assert "Traceback" not in result.stderr


@pytest.fixture
def tmpfs_data(device: DeviceRoot) -> Iterator[Path]:
    data = device.path / "data"
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(data)], check=True)
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_a_read_only_partition_cannot_freeze_the_clock_mark_for_ever(
    device: DeviceRoot, signer: Signer, tpm: Swtpm, tmpfs_data: Path
) -> None:
    from agent.verdict import MAX_UNRECORDED_BOOTS

    enrolled(device, signer, tpm)
    assert device.check().returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs_data)], check=True)
    for boot in range(1, MAX_UNRECORDED_BOOTS + 1):
        result = device.check()
        assert result.returncode == 0, result.stdout  # a valid license is not locked out
        assert "could not record the check" in result.stderr
        if boot > 1:  # every such boot is visible in the verdict files and status
            notes = " ".join(str(n) for n in device.verdict()["notes"])  # type: ignore[attr-defined]
            assert f"{boot - 1} boot(s) in a row could not be recorded" in notes
    limited = device.check()
    assert limited.returncode == 10  # the documented limit reached: limited mode
    assert device.verdict()["reason"] == "state_unrecorded"
    status = device.run("status", "--json")
    assert '"state_unrecorded"' in status.stdout
    subprocess.run(["mount", "-o", "remount,rw", str(tmpfs_data)], check=True)
    assert device.check().returncode == 10  # this boot is recorded...
    assert device.check().returncode == 0  # ...and the count starts again


def test_a_returned_activation_does_not_come_back_from_kept_files_or_an_image(
    device: DeviceRoot, signer: Signer, tpm: Swtpm, tmp_path: Path
) -> None:
    """HQ frees a TPM-bound device's seat at once on its receipt, trusting that nothing
    kept brings the activation back: neither its file and key copied back beside the
    returned state, nor the whole data directory as it was before the return."""
    enrolled(device, signer, tpm, serial=1)
    image = tmp_path / "image"
    shutil.copytree(device.state_dir, image)
    assert device.run("return", "--yes", "-o", str(tmp_path / "robot.receipt")).returncode == 0
    for name in ("machine.file", "license.key"):
        shutil.copy(image / name, device.state_dir / name)
    assert device.check().returncode == 30
    assert device.verdict()["reason"] == "returned"
    shutil.rmtree(device.state_dir)
    shutil.copytree(image, device.state_dir)
    assert device.check().returncode == 31
    assert device.verdict()["reason"] == "state_lost"


def test_a_returned_activation_stays_returned_on_a_tpm_device_after_the_next_one(
    device: DeviceRoot, signer: Signer, tpm: Swtpm, tmp_path: Path
) -> None:
    """The record of returned activations is in the TPM-bound state: given back, then
    activated anew (act_2, HQ's answer bound to the counter), the device refuses a file
    of act_1 issued later than act_2's, installed or put in place with its key; and the
    state from before the return, put back to forget it, is lost state."""
    import time

    enrolled(device, signer, tpm, serial=1)
    t0 = int(time.time())
    before = tmp_path / "before-return"
    shutil.copytree(device.state_dir, before)
    assert device.run("return", "--yes", "-o", str(tmp_path / "robot.receipt")).returncode == 0
    request, answer = tmp_path / "again.request", tmp_path / "again.machine"
    assert device.run("request", "-o", str(request)).returncode == 0
    answer.write_bytes(signer.answer(device, request.read_bytes(), activation_id="act_2"))
    key_file = device.path.parent / "key.txt"
    done = device.run("install", str(answer), "--license-key-file", str(key_file))
    assert done.returncode == 0, done.stderr
    late = tmp_path / "late.machine"
    late.write_bytes(signer.issue(device.fingerprint, serial=2, issued_at=t0 + 60))
    refused = device.run("install", str(late))
    assert refused.returncode == 31 and "gave activation act_1 back" in refused.stderr
    assert device.check().returncode == 0 and device.verdict()["activation_id"] == "act_2"
    shutil.copy(late, device.machine_file)
    assert device.check().returncode == 30 and device.verdict()["reason"] == "returned"
    for name in state.SLOTS:
        (device.state_dir / name).unlink()
        if (before / name).exists():
            shutil.copy(before / name, device.state_dir / name)
    assert device.check().returncode == 31 and device.verdict()["reason"] == "state_lost"
