"""What the device remembers cannot be erased or forged by writing its data partition
(issue 11), without a TPM: the attacks as an attacker would run them, through the real
CLI, the real gate and libfaketime. The TPM-bound cases are in tests/test_tpm_binding.py.
"""

import json
import time
from pathlib import Path

import pytest

from agent.config import load
from agent.device import Device
from agent.identity import Identity
from agent.state import State, seal, seal_legacy
from agent.wire import sodium
from agent.wire.revocation import Revocation, sign_revocation
from agent.wire.signed_time import SignedStatus
from tests.answering_server import AnsweringServer
from tests.conftest import DAY, DeviceRoot, Signer


def keep(device: DeviceRoot, signer: Signer, name: str, **kw: object) -> str:
    path = device.path.parent / f"{device.path.name}-{name}.machine"
    path.write_bytes(signer.issue(device.fingerprint, **kw))
    return str(path)


def revocation(device: DeviceRoot, signer: Signer, name: str = "rev.txt") -> str:
    """A revocation of ``act_1`` signed now, armored in a file beside the device."""
    from agent.wire import armor

    path = device.path.parent / name
    signed = sign_revocation(signer.key, Revocation("act_1", int(time.time()), "revoked"))
    path.write_text(armor.armor(signed, armor.REVOCATION))
    return str(path)


def test_stockpiled_renewals_with_the_clock_set_back_never_lower_the_mark(
    device: DeviceRoot, signer: Signer
) -> None:
    t0 = int(time.time())
    signer.provision(device, serial=1, issued_at=t0, ttl=30 * DAY)
    # Renewals cost no seat: the user fetches several and keeps them uninstalled.
    kept = [keep(device, signer, f"s{n}", serial=n, issued_at=t0, ttl=30 * DAY) for n in (2, 3)]
    assert device.check(faketime="+31d").returncode == 10  # grace, and the mark follows
    # After expiry the next kept one is installed with the clock set back:
    assert device.run("install", kept[0], faketime="+1d").returncode == 0
    back = device.check(faketime="+1d")
    assert back.returncode == 40, back.stdout  # the mark stayed at day 31
    assert device.run("install", kept[1], faketime="+2d").returncode == 0
    assert device.check(faketime="+2d").returncode == 40
    assert device.check(faketime="+61d").returncode == 20  # a true clock: expired


def test_a_state_forged_with_the_hardware_id_alone_is_refused(
    device: DeviceRoot, signer: Signer
) -> None:
    signer.provision(device, serial=5)
    assert device.run("install", revocation(device, signer)).returncode == 0
    assert device.check().returncode == 32
    # What 0.1.0 keyed the state with: HMAC(raw hardware id, public app id). The raw id
    # (/etc/machine-id, DMI) is world-readable on a running device.
    legacy_key = Identity(device.machine_id, "machine-id").state_key
    clean = State(activation_id="act_1", serial=1, boot=0, hwm=0, gen=50)
    for forged in (seal(clean, legacy_key), seal_legacy(clean, legacy_key)):
        for slot in ("state.a", "state.b"):
            (device.state_dir / slot).write_bytes(forged)
        result = device.check()
        assert result.returncode == 31, result.stdout
        assert device.verdict()["reason"] in ("state_foreign", "state_corrupt")


def test_partial_deletions_fail_closed_and_a_kept_file_does_not_rebuild(
    device: DeviceRoot, signer: Signer
) -> None:
    signer.provision(device, serial=2)
    kept = keep(device, signer, "old", serial=1)
    newer = keep(device, signer, "new", serial=3)
    assert device.check().returncode == 0
    for slot in ("state.a", "state.b"):
        (device.state_dir / slot).unlink()
    assert device.check().returncode == 31
    assert device.verdict()["reason"] == "state_missing"
    for path in (kept, newer):  # neither an older nor a newer file alone rebuilds it
        assert device.run("install", path).returncode == 31
    assert device.check().returncode == 31
    # Machine file gone, state kept: not activated, and the kept older file is a downgrade
    assert signer.recover(device, serial=4).returncode == 0
    (device.state_dir / "machine.file").unlink()
    assert device.check().returncode == 30
    assert device.run("install", kept).returncode == 31


def test_a_whole_wipe_cannot_be_told_from_a_new_device_without_a_tpm(
    device: DeviceRoot, signer: Signer
) -> None:
    """Documented in docs/reliability.md: without a TPM nothing survives a wipe of the
    whole data directory, so the device is as new (the TPM case is refused)."""
    signer.provision(device, serial=2)
    kept = keep(device, signer, "kept", serial=2)
    for path in device.state_dir.iterdir():
        if path.is_file():
            path.unlink()
    assert device.check().returncode == 30
    key_file = device.path.parent / f"{device.path.name}.key"
    assert device.run("install", kept, "--license-key-file", str(key_file)).returncode == 0
    assert device.check().returncode == 0


def test_an_old_suspension_is_ignored_after_a_lift(device: DeviceRoot, signer: Signer) -> None:
    from agent.wire import armor

    t = int(time.time())
    signer.provision(device, serial=1, issued_at=t - 100)
    old = device.path.parent / "suspension.txt"
    old.write_text(
        armor.armor(
            sign_revocation(signer.key, Revocation("act_1", t - 10, "suspended")),
            armor.REVOCATION,
        )
    )
    assert device.run("install", str(old)).returncode == 0
    assert device.check().returncode == 32
    # HQ reinstates; the device's next validate gets a signed "active" at t
    dev = Device(load(str(device.path)))
    with dev.writer_lock():
        dev.record_hq_status(SignedStatus(t, "active", "lic", "act_1"))
    assert device.check().returncode == 0
    # The old suspension comes back from a field bundle or a retained MQTT message
    again = device.run("install", str(old))
    assert again.returncode == 0 and "stale" in again.stdout
    assert device.check().returncode == 0
    # a newer one still counts
    new = device.path.parent / "suspension2.txt"
    new.write_text(
        armor.armor(
            sign_revocation(signer.key, Revocation("act_1", t + 5, "suspended")),
            armor.REVOCATION,
        )
    )
    assert device.run("install", str(new)).returncode == 0
    assert device.check().returncode == 32


def test_a_revocation_over_a_corrupt_state_is_a_clear_refusal(
    device: DeviceRoot, signer: Signer
) -> None:
    from agent.wire import armor

    signer.provision(device, serial=1)
    for slot in ("state.a", "state.b"):
        (device.state_dir / slot).write_bytes(b"junk")
    rev = device.path.parent / "rev.txt"
    rev.write_text(
        armor.armor(
            sign_revocation(signer.key, Revocation("act_1", int(time.time()), "revoked")),
            armor.REVOCATION,
        )
    )
    result = device.run("install", str(rev))
    assert result.returncode == 31
    assert "Traceback" not in result.stderr and "cannot record a revocation" in result.stderr


def test_the_state_key_rests_on_the_device_key_not_on_the_hardware_id(
    device: DeviceRoot, signer: Signer
) -> None:
    signer.provision(device, serial=1)
    assert device.check().returncode == 0
    key_file = device.state_dir / "device.key"
    assert key_file.stat().st_mode & 0o077 == 0
    original = key_file.read_bytes()
    # Another device key (the partition edited, or the key replaced): the state no
    # longer authenticates, and the gate says so.
    from agent.wire.device_key import DeviceKey

    key_file.write_bytes(DeviceKey(sodium.sha256(b"other")).dumps())
    assert device.check().returncode == 31
    key_file.unlink()
    assert device.check().returncode == 31
    assert device.verdict()["reason"] == "state_key_missing"
    key_file.write_bytes(original)
    assert device.check().returncode == 0


def test_an_agent_of_0_1_0_state_is_migrated_once(device: DeviceRoot, signer: Signer) -> None:
    """An image update from 0.1.0: its state (keyed by the hardware id) is read once and
    written as version 2 under the device key."""
    signer.provision(device, serial=3)
    legacy_key = Identity(device.machine_id, "machine-id").state_key
    old = State(activation_id="act_1", serial=3, boot=9, hwm=int(time.time()), gen=4)
    for slot in ("state.a", "state.b"):
        (device.state_dir / slot).unlink(missing_ok=True)
    (device.state_dir / "device.key").unlink()
    (device.state_dir / "state.a").write_bytes(seal_legacy(old, legacy_key))
    assert device.check().returncode == 0
    from agent import state as state_mod

    versions = {
        state_mod.parse_slot((device.state_dir / n).read_bytes()).version for n in state_mod.SLOTS
    }
    assert versions == {2}
    status = device.run("status", "--json")
    assert '"boot_counter": 10' in status.stdout  # 0.1.0's nine boots and this one


def test_a_returned_activations_file_and_key_put_back_by_hand_do_not_run(
    device: DeviceRoot, signer: Signer, tmp_path: Path
) -> None:
    """Root on the data partition keeps the machine file and the license key, gives the
    license back (with a TPM HQ frees the seat at once) and copies both back: the state
    remembers the return, and the gate refuses what it gave back as it refuses the
    install of the kept file."""
    signer.provision(device, serial=2)
    names = ("machine.file", "license.key")
    kept = {name: (device.state_dir / name).read_bytes() for name in names}
    assert device.run("return", "--yes", "-o", str(tmp_path / "robot.receipt")).returncode == 0
    for name, data in kept.items():
        (device.state_dir / name).write_bytes(data)
    put_back = device.check()
    assert put_back.returncode == 30, put_back.stdout
    assert device.verdict()["reason"] == "returned"
    assert device.check().returncode == 30  # and it stays so


def test_a_device_activated_again_after_a_return_takes_its_renewals(
    device: DeviceRoot, signer: Signer, tmp_path: Path
) -> None:
    """Returned, then activated again (a new activation): the return was of the old
    activation, so the new one renews as any; the old one's files stay refused, as
    given back, even one HQ issued later than the new activation's (before it saw the
    receipt): installed, or copied in place with its key."""
    t0 = int(time.time())
    signer.provision(device, serial=3, issued_at=t0 - 60)
    old = (device.state_dir / "machine.file").read_bytes()
    assert device.run("return", "--yes", "-o", str(tmp_path / "robot.receipt")).returncode == 0
    key_file = device.path.parent / f"{device.path.name}.key"
    again = keep(device, signer, "again", activation_id="act_2", serial=1, issued_at=t0)
    assert device.run("install", again, "--license-key-file", str(key_file)).returncode == 0
    renewal = keep(device, signer, "renewal", activation_id="act_2", serial=2, issued_at=t0)
    renewed = device.run("install", renewal)
    assert renewed.returncode == 0, renewed.stderr
    assert device.check().returncode == 0 and device.verdict()["serial"] == 2
    late = keep(device, signer, "late", activation_id="act_1", serial=4, issued_at=t0 + 60)
    refused = device.run("install", late)
    assert refused.returncode == 31 and "gave activation act_1 back" in refused.stderr
    assert device.check().returncode == 0 and device.verdict()["activation_id"] == "act_2"
    for data in (old, Path(late).read_bytes()):  # the returned activation's files
        (device.state_dir / "machine.file").write_bytes(data)
        put_back = device.check()
        assert put_back.returncode == 30, put_back.stdout
        assert device.verdict()["reason"] == "returned" and "act_1" in put_back.stdout


def test_a_return_an_earlier_agent_recorded_is_remembered_past_the_next_activation(
    device: DeviceRoot, signer: Signer, tmp_path: Path
) -> None:
    """The agent before the record of returned activations knew only the current one
    given back (``returned_at``). Its state loads, and when the device is activated
    anew that return joins the record: a file of it issued later is refused still."""
    from agent import state as state_mod

    t0 = int(time.time())
    signer.provision(device, serial=2, issued_at=t0 - 60)
    dev = Device(device.config())
    with dev.writer_lock():  # `fieldpass return` as that agent did it
        st = dev.load_state()
        assert st is not None
        key = dev._state_key(None)
        assert key is not None
        state_mod.save(str(device.state_dir), key, st.replace(returned_at=t0 - 30))
        dev.remove()
    for slot in state_mod.SLOTS:  # byte for byte what that agent wrote
        assert b"returned_ids" not in (device.state_dir / slot).read_bytes()
    assert device.check().returncode == 30 and device.verdict()["reason"] == "returned"
    key_file = device.path.parent / f"{device.path.name}.key"
    again = keep(device, signer, "again", activation_id="act_2", serial=1, issued_at=t0)
    assert device.run("install", again, "--license-key-file", str(key_file)).returncode == 0
    late = keep(device, signer, "late", activation_id="act_1", serial=3, issued_at=t0 + 60)
    refused = device.run("install", late)
    assert refused.returncode == 31 and "gave activation act_1 back" in refused.stderr
    assert device.check().returncode == 0 and device.verdict()["activation_id"] == "act_2"


def test_an_answer_bound_to_the_nonce_just_sent_of_a_returned_activation_is_refused(
    device: DeviceRoot, signer: Signer, tmp_path: Path
) -> None:
    """What `refresh` and the daemon (HTTP or MQTT) do with HQ's answer: install it
    with the nonce they sent. An answer of an activation given back since (by another
    process, the device activated anew meanwhile) names that nonce and is refused."""
    from agent.device import InstallRefused
    from agent.wire.machine_file import Binding

    t0 = int(time.time())
    signer.provision(device, serial=1, issued_at=t0 - 60)
    held = signer.issue(
        device.fingerprint, version=2, binding=Binding(nonce="the-nonce-sent"), serial=2
    )
    assert device.run("return", "--yes", "-o", str(tmp_path / "robot.receipt")).returncode == 0
    key_file = device.path.parent / f"{device.path.name}.key"
    again = keep(device, signer, "again", activation_id="act_2", serial=1, issued_at=t0)
    assert device.run("install", again, "--license-key-file", str(key_file)).returncode == 0
    dev = Device(device.config())
    with dev.writer_lock(), pytest.raises(InstallRefused) as refused:
        dev.install(held, None, t0, nonce="the-nonce-sent")
    assert refused.value.reason == "returned" and "act_1" in str(refused.value)
    assert device.machine_file.read_bytes() == Path(again).read_bytes()
    assert device.check().returncode == 0 and device.verdict()["activation_id"] == "act_2"


def test_an_old_answer_to_a_request_left_pending_does_not_wind_the_device_back(
    device: DeviceRoot, signer: Signer, tmp_path: Path
) -> None:
    """A request carried to HQ 100 days ago was answered, but the device took another
    activation since (online, by hand) and the answer was never installed: its nonce is
    still the pending one, yet it answers no request of now. Installed today it is an
    older file of another activation, not HQ's word now, and lowers no mark."""
    t0 = int(time.time())
    signer.provision(device, serial=1, issued_at=t0 - 101 * DAY)
    request = tmp_path / "old.request"
    assert device.run("request", "-o", str(request), faketime="-100d").returncode == 0
    old = tmp_path / "old.answer"
    old.write_bytes(
        signer.answer(device, request.read_bytes(), activation_id="act_3", issued_at=t0 - 100 * DAY)
    )
    current = keep(device, signer, "current", activation_id="act_2", serial=1, issued_at=t0)
    assert device.run("install", current).returncode == 0
    replayed = device.run("install", str(old))
    assert replayed.returncode == 31 and "older" in replayed.stderr, replayed.stderr
    assert device.check(faketime="-99d").returncode == 40  # the mark stayed


def test_a_lying_server_replaying_old_answers_to_activate_installs_none(
    device: DeviceRoot, signer: Signer, answering_server: AnsweringServer, tmp_path: Path
) -> None:
    """Returned, activated again; then a server on the link answers `fieldpass activate`
    with HQ's old answers, each bound to a nonce of an earlier request: the returned
    activation's, and another activation's issued before the current one. Neither names
    the nonce just sent, so neither is HQ's answer now."""
    from agent.wire import armor
    from agent.wire.machine_file import Binding

    t0 = int(time.time())
    old_answers = [
        signer.issue(
            device.fingerprint,
            version=2,
            binding=Binding(nonce=f"an-old-nonce-{n}"),
            activation_id=act,
            serial=9,
            issued_at=t0 - 60,
        )
        for n, act in enumerate(("act_1", "act_0"))
    ]
    signer.provision(device, serial=1, issued_at=t0 - 60)
    assert device.run("return", "--yes", "-o", str(tmp_path / "robot.receipt")).returncode == 0
    key_file = device.path.parent / f"{device.path.name}.key"
    again = keep(device, signer, "again", activation_id="act_2", serial=1, issued_at=t0)
    assert device.run("install", again, "--license-key-file", str(key_file)).returncode == 0
    device.write_config(f'[online]\nserver = "{answering_server.url}"\ntimeout_s = 3\n')
    answering_server.answer("/v1/receipt", 200, b"{}")
    for data in old_answers:
        text = armor.armor(data, armor.MACHINE_FILE)
        answering_server.answer("/v1/activate", 200, json.dumps({"machine_file": text}).encode())
        replayed = device.run("activate", signer.license_key)
        assert replayed.returncode == 31 and "Traceback" not in replayed.stderr, replayed.stderr
        assert device.check().returncode == 0
        assert device.verdict()["activation_id"] == "act_2"


def _each_slot_deleted(device: DeviceRoot, *args: str) -> list[tuple[int, str]]:
    """For each state slot in turn: both slots as they are now, that one deleted, then
    ``fieldpass ARGS`` (default: the gate) and the verdict file's reason; the slots and
    the machine file are put back after each."""
    kept = [device.state_dir / n for n in ("state.a", "state.b", "machine.file")]
    before = {path: path.read_bytes() for path in kept if path.exists()}
    seen = []
    for gone in ("state.a", "state.b"):
        for path, data in before.items():
            path.write_bytes(data)
        (device.state_dir / gone).unlink()
        result = device.run(*args) if args else device.check()
        seen.append((result.returncode, device.verdict()["reason"] if not args else ""))
    for path, data in before.items():
        path.write_bytes(data)
    return seen


def test_deleting_one_state_slot_brings_back_no_revocation_or_older_file(
    device: DeviceRoot, signer: Signer
) -> None:
    """Without a TPM nothing tells an older slot from the newest, so the slot left
    beside a deleted one must hold the same revocation and file: a newer file, a
    revocation and a return (below) are written to both slots."""
    signer.provision(device, serial=2)
    kept = keep(device, signer, "old", serial=2)
    newer = keep(device, signer, "new", serial=3)
    assert device.run("install", newer).returncode == 0
    # the slot left knows serial 3: the kept serial-2 file is a downgrade
    assert _each_slot_deleted(device, "install", kept) == [(31, ""), (31, "")]
    assert device.run("install", revocation(device, signer)).returncode == 0
    assert _each_slot_deleted(device) == [(32, "revoked"), (32, "revoked")]


def test_deleting_one_state_slot_after_a_return_brings_back_no_activation(
    device: DeviceRoot, signer: Signer, tmp_path: Path
) -> None:
    signer.provision(device, serial=2)
    names = ("machine.file", "license.key")
    kept = {name: (device.state_dir / name).read_bytes() for name in names}
    assert device.check().returncode == 0
    assert device.run("return", "--yes", "-o", str(tmp_path / "robot.receipt")).returncode == 0
    for name, data in kept.items():
        (device.state_dir / name).write_bytes(data)
    assert _each_slot_deleted(device) == [(30, "returned"), (30, "returned")]
