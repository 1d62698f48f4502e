"""Hostile files at every place the device reads one: the machine file and its armor
(`fieldpass install`, and the stored file under `fieldpass check`), the state slots,
incoming/ from the factory, agent.toml, revocations and requests."""

import os
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from agent.wire import armor
from agent.wire.errors import WireError
from agent.wire.keys import SigningKey
from agent.wire.request import Request
from agent.wire.revocation import Revocation, sign_revocation
from tests.fuzz.conftest import Provisioned, assert_clean, fuzz, run_cli, run_gate, run_script
from tests.fuzz.strategies import armored, hostile_file, mutated, well_formed_cbor


def install_hostile(p: Provisioned, data: bytes, tmp: Path) -> tuple[object, str]:
    path = tmp / "hostile.machine"
    path.write_bytes(data)
    return run_cli(p.device, "install", str(path), "--json")


@fuzz(150)
@given(data=st.data())
def test_install_of_a_hostile_file_changes_nothing(
    provisioned: Provisioned, tmp_path: Path, data: st.DataObject
) -> None:
    p = provisioned
    p.reset()
    hostile = data.draw(hostile_file(p.data))
    code, out = install_hostile(p, hostile, tmp_path)
    assert_clean(code, out)
    if hostile in (p.data, armor.armor(p.data, armor.MACHINE_FILE).encode()):
        return  # the very file installed: "nothing changed" (0)
    assert code != 0 or '"install": "same"' in out, out
    assert p.stored.unchanged_files()


@fuzz(150)
@given(data=st.data())
def test_check_of_a_hostile_stored_file_is_31_and_records_nothing(
    provisioned: Provisioned, data: st.DataObject
) -> None:
    p = provisioned
    p.reset()
    hostile = data.draw(hostile_file(p.data).filter(lambda b: b != p.data))
    p.device.machine_file.write_bytes(hostile)
    before = p.stored.license_facts()
    code, out = run_gate(p.device, "--json")
    assert_clean(code, out)
    assert code == 31, out
    assert p.stored.license_facts() == before


@fuzz(120)
@given(a=st.binary(max_size=600) | well_formed_cbor(), b=st.binary(max_size=600))
def test_hostile_state_slots_are_refused_never_reset(
    provisioned: Provisioned, a: bytes, b: bytes
) -> None:
    p = provisioned
    p.reset()
    (p.device.state_dir / "state.a").write_bytes(a)
    (p.device.state_dir / "state.b").write_bytes(b)
    code, out = run_gate(p.device)
    assert_clean(code, out)
    assert code == 31, out  # never accepted, never silently rebuilt
    assert (p.device.state_dir / "state.a").read_bytes() == a


@fuzz(60)
@given(data=st.data())
def test_one_hostile_slot_beside_a_good_one_is_survived(
    provisioned: Provisioned, data: st.DataObject
) -> None:
    p = provisioned
    p.reset()
    slots = sorted(p.device.state_dir.glob("state.?"))
    victim = data.draw(st.sampled_from(slots))
    victim.write_bytes(data.draw(mutated(victim.read_bytes()) | st.binary(max_size=300)))
    code, out = run_gate(p.device)
    assert_clean(code, out)
    assert code in (0, 31), out


@fuzz(100)
@given(data=st.data(), key=st.binary(max_size=300) | st.text(max_size=80).map(str.encode))
def test_hostile_incoming_spool_is_kept_and_reported(
    provisioned: Provisioned, data: st.DataObject, key: bytes
) -> None:
    p = provisioned
    p.reset()
    p.device.machine_file.unlink()  # the spool is read before the first install only
    incoming = p.device.state_dir / "incoming"
    incoming.mkdir(exist_ok=True)
    hostile = data.draw(hostile_file(p.data))
    (incoming / "machine.file").write_bytes(hostile)
    (incoming / "license.key").write_bytes(key)
    code, out = run_gate(p.device)
    assert_clean(code, out)
    if code == 0:  # the very file HQ provisioned, with its key: installed, as it should
        assert p.device.machine_file.read_bytes() == p.data
        return
    assert code in (30, 31), out
    assert not p.device.machine_file.exists() or p.device.machine_file.read_bytes() == p.data
    assert (incoming / "machine.file").read_bytes() == hostile


toml_text = st.text(max_size=300) | st.builds(
    lambda key, value: f"{key} = {value}\n",
    st.sampled_from(
        [
            "state_dir",
            "keyring",
            "[clock]\npolicy",
            "[clock]\ntolerance_s",
            "[online]\nservers",
            "[online]\ntimeout_s",
            "[daemon]\nbackoff_min_ms",
            "[mqtt]\nbrokers",
            "[tpm]\nenabled",
            "[identity]\nallow_override",
        ]
    ),
    st.sampled_from(['"x"', "1", "-1", "1.5", "true", "[]", '["a"]', "{a=1}", "1979-05-27"])
    | st.integers(1, 5000).map(lambda n: "[" * n)
    | st.integers(1, 5000).map(lambda n: "{a=" * n)
    | st.integers(-(10**30), 10**30).map(str)
    | st.text(max_size=40).map(repr),
)


@fuzz(200)
@given(text=toml_text)
@example("[online]\nservers = " + "[" * 2000)
@example("a = 1" + "0" * 5000)
def test_hostile_agent_toml_is_78_or_a_verdict(provisioned: Provisioned, text: str) -> None:
    p = provisioned
    p.reset()
    (p.device.path / "etc/fieldpass/agent.toml").write_text(text)
    code, out = run_gate(p.device)
    assert_clean(code, out)  # 78, or a verdict (a state_dir or keyring elsewhere)
    assert p.stored.license_facts()[:2] == p.facts[:2]
    status, status_out = run_cli(p.device, "status")
    assert_clean(status, status_out)


@fuzz(100)
@given(data=st.data())
def test_hostile_revocations_change_nothing(
    provisioned: Provisioned, tmp_path: Path, data: st.DataObject
) -> None:
    p = provisioned
    p.reset()
    foreign = sign_revocation(SigningKey.generate(), Revocation("act_1", 10**10, "revoked"))
    other = sign_revocation(p.signer.key, Revocation("act_other", 10**10, "revoked"))
    inner = data.draw(
        st.binary(max_size=600)
        | well_formed_cbor()
        | mutated(foreign)
        | st.sampled_from([foreign, other])
    )
    text = data.draw(
        armored(st.just(inner)) | st.just(armor.armor(inner, armor.REVOCATION).encode())
    )
    code, out = install_hostile(p, text, tmp_path)
    assert_clean(code, out)
    assert p.stored.license_facts() == p.facts


@fuzz(400)
@given(data=st.binary(max_size=800) | well_formed_cbor() | armored(well_formed_cbor()))
def test_requests_parse_or_refuse_with_a_wire_error(data: bytes) -> None:
    """The request parser (device code HQ imports) refuses anything it cannot read
    with a WireError, never another exception."""
    try:
        Request.parse(data)
    except WireError:
        pass


def test_a_request_given_to_install_is_refused(provisioned: Provisioned, tmp_path: Path) -> None:
    p = provisioned
    p.reset()
    req = armor.armor(Request(p.device.fingerprint).to_bytes_v1(), armor.REQUEST).encode()
    code, out = install_hostile(p, req, tmp_path)
    assert_clean(code, out)
    assert code == 31 and p.stored.unchanged_files()


def test_the_installed_script_on_hostile_files(provisioned: Provisioned, tmp_path: Path) -> None:
    """A few real subprocesses: what the in-process examples found holds for the script."""
    p = provisioned
    for hostile in (b"", b"\xff" * 5000, p.data[:-1], armor.armor(b"x", armor.REVOCATION).encode()):
        p.reset()
        path = tmp_path / "hostile"
        path.write_bytes(hostile)
        for args in (["install", str(path)], ["check"], ["status", "--json"]):
            if args == ["check"]:
                p.device.machine_file.write_bytes(hostile)
            result = run_script(p, *args)
            assert_clean(result.returncode, result.stdout + result.stderr)
    assert os.path.exists(p.device.state_dir)
