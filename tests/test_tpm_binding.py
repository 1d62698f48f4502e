"""The device state bound to a TPM 2.0 NV counter, for real: swtpm on loopback and the
tpm2-tools the agent drives, through the installed `fieldpass`."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import state
from agent.identity import Identity
from agent.tpm import NvCounter, parse_nv_index
from tests.conftest import DeviceRoot, Signer
from tests.tpm_server import Swtpm

INDEX = "0x01500016"


@pytest.fixture
def tpm(tmp_path: Path) -> Iterator[Swtpm]:
    with Swtpm(tmp_path / "tpmstate") as server:
        yield server


def bind(device: DeviceRoot, tpm: Swtpm) -> NvCounter:
    device.write_config(f'[tpm]\nenabled = true\nnv_index = "{INDEX}"\ntcti = "{tpm.tcti}"\n')
    return NvCounter(parse_nv_index(INDEX), tpm.tcti)


def test_state_follows_the_counter(device: DeviceRoot, signer: Signer, tpm: Swtpm) -> None:
    counter = bind(device, tpm)
    signer.provision(device)
    first = counter.read()
    for n in range(1, 4):
        assert device.check().returncode == 0
        assert counter.read() == first + n
    st = state.load(str(device.state_dir), Identity(device.machine_id, "x").state_key)
    assert st is not None and st.tpm == counter.read()


def test_a_restored_image_is_refused(
    device: DeviceRoot, signer: Signer, tpm: Swtpm, tmp_path: Path
) -> None:
    bind(device, tpm)
    signer.provision(device, serial=1)
    assert device.check().returncode == 0
    image = tmp_path / "image"
    shutil.copytree(device.state_dir, image)  # someone copies the data partition
    for _ in range(3):
        assert device.check().returncode == 0
    shutil.rmtree(device.state_dir)
    shutil.copytree(image, device.state_dir)  # ... and restores it later
    restored = device.check()
    assert restored.returncode == 31
    assert device.verdict()["reason"] == "state_restored"
    # the way out: a newer machine file from HQ
    renewal = tmp_path / "renewal.machine"
    renewal.write_bytes(signer.issue(device.fingerprint, serial=2))
    assert device.run("install", str(renewal)).returncode == 0
    assert device.check().returncode == 0


def test_power_cut_between_state_and_increment_is_accepted(
    device: DeviceRoot, signer: Signer, tpm: Swtpm
) -> None:
    counter = bind(device, tpm)
    signer.provision(device)
    assert device.check().returncode == 0
    key = Identity(device.machine_id, "x").state_key
    st = state.load(str(device.state_dir), key)
    assert st is not None
    state.save(str(device.state_dir), key, st.replace(tpm=counter.read() + 1))  # no increment
    assert device.check().returncode == 0
    ahead = st.tpm
    assert ahead is not None
    assert counter.read() == ahead + 1  # the check re-wrote that step and incremented
    after = state.load(str(device.state_dir), key)
    assert after is not None and after.tpm == counter.read()


def test_an_unreachable_tpm_fails_closed(device: DeviceRoot, signer: Signer, tpm: Swtpm) -> None:
    bind(device, tpm)
    signer.provision(device)
    assert device.check().returncode == 0
    tpm.stop()
    result = device.check()
    assert result.returncode == 31
    assert device.verdict()["reason"] == "tpm_unavailable"
