"""The boot gate as a subprocess: the installed ``fieldpass check``, clocks moved with
libfaketime, every verdict and its exit code, the verdict files."""

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from tests.conftest import DAY, FIELDPASS, DeviceRoot, Signer, clean_env


def test_not_activated_is_30(device: DeviceRoot) -> None:
    result = device.check()
    assert result.returncode == 30
    assert "not activated" in result.stdout
    assert device.verdict()["verdict"] == "not_activated"


def test_valid_then_warning_grace_expired_under_faketime(
    device: DeviceRoot, signer: Signer
) -> None:
    signer.provision(device)
    ok = device.check()
    assert ok.returncode == 0, ok.stderr
    assert "(365 days left)" in ok.stdout
    warned = device.check(faketime="+300d")
    assert warned.returncode == 0
    assert "Offline license expires in 65 days: connect to extend" in warned.stdout
    grace = device.check(faketime="+367d")
    assert grace.returncode == 10
    assert "limited mode for 28 more days" in grace.stdout
    env = (device.verdict_dir / "verdict.env").read_text()
    assert "FIELDPASS_VERDICT='grace'" in env and "FIELDPASS_LIMITED='1'" in env
    expired = device.check(faketime="+400d")
    assert expired.returncode == 20
    assert device.verdict()["verdict"] == "expired"


def test_clock_set_back_after_a_check_is_40_within_tolerance_is_0(
    device: DeviceRoot, signer: Signer
) -> None:
    signer.provision(device)
    assert device.check(faketime="+100d").returncode == 0
    small = device.check(faketime="+99.998d")  # ~3 minutes back: inside 300 s tolerance
    assert small.returncode == 0, small.stdout
    back = device.check(faketime="+90d")
    assert back.returncode == 40
    assert "behind the last trusted time" in back.stdout
    assert device.check(faketime="+100d").returncode == 0  # the clock put right again


def test_file_issued_in_the_future_is_rollback(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device, issued_at=int(__import__("time").time()) + 10 * DAY)
    assert device.check().returncode == 40


def test_second_device_with_the_same_file_is_31(make_device: "object", signer: Signer) -> None:
    first, second = make_device(), make_device()  # type: ignore[operator]
    data = signer.provision(first)
    second.trust(signer.keyring)
    second.state_dir.mkdir(parents=True)
    (second.state_dir / "machine.file").write_bytes(data)
    (second.state_dir / "license.key").write_text(signer.license_key)
    result = second.check()
    assert result.returncode == 31
    assert "another device" in result.stdout
    refused = second.run(
        "install",
        str(first.path.parent / f"{first.path.name}.machine"),
        "--license-key",
        signer.license_key,
    )
    assert refused.returncode == 31


def test_truncation_and_garbage_give_31_never_a_traceback(
    device: DeviceRoot, signer: Signer
) -> None:
    data = signer.provision(device)
    for bad in (data[: len(data) // 2], b"", os.urandom(400), b"\xa5" + data[1:] + b"\x00"):
        device.machine_file.write_bytes(bad)
        result = device.check()
        assert result.returncode == 31, result.stdout
        assert "Traceback" not in result.stderr + result.stdout


def test_downgrade_refused_newer_stays_in_force(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device, serial=2)
    old = device.path.parent / "old.machine"
    old.write_bytes(signer.issue(device.fingerprint, serial=1))
    refused = device.run("install", str(old))
    assert refused.returncode == 31
    assert "older" in refused.stderr
    assert device.check().returncode == 0
    assert device.verdict()["serial"] == 2
    # an older file copied over the stored one by hand is caught at boot
    device.machine_file.write_bytes(old.read_bytes())
    assert device.check().returncode == 31
    assert device.verdict()["reason"] == "downgrade"


def test_same_serial_is_a_noop(device: DeviceRoot, signer: Signer) -> None:
    data = signer.provision(device)
    again = device.path.parent / "again.machine"
    again.write_bytes(data)
    result = device.run("install", str(again))
    assert result.returncode == 0
    assert "already installed" in result.stdout


def test_armored_install_from_stdin_with_crlf(device: DeviceRoot, signer: Signer) -> None:
    from agent.wire import armor

    signer.provision(device, serial=1)
    text = armor.armor(signer.issue(device.fingerprint, serial=2), armor.MACHINE_FILE)
    pasted = ("Here is your renewal:\r\n\r\n" + text.replace("\n", "\r\n") + "\r\nBye\r\n").encode()
    result = device.run("install", "-", input=pasted)
    assert result.returncode == 0, result.stderr
    assert device.check().returncode == 0
    assert device.verdict()["serial"] == 2


def test_json_output_and_verdict_files_hold_no_secrets(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device)
    result = device.run("check", "--json")
    assert result.returncode == 0
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "valid" and doc["exit_code"] == 0
    assert doc["entitlements"] == ["navigation"]
    for text in (
        result.stdout,
        (device.verdict_dir / "verdict.env").read_text(),
        (device.verdict_dir / "verdict.json").read_text(),
    ):
        assert signer.license_key not in text
        assert device.machine_id not in text


def test_verdict_env_is_sourceable_by_sh(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device)
    device.check(faketime="+300d")
    out = subprocess.run(
        [
            "sh",
            "-c",
            f'. {device.verdict_dir}/verdict.env; echo "$FIELDPASS_VERDICT|$FIELDPASS_WARNING"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "valid|Offline license expires in 65 days: connect to extend"


def test_bad_usage_and_config_have_documented_codes(device: DeviceRoot) -> None:
    assert device.run("check", "--bogus").returncode == 2
    device.write_config('[clock]\npolicy = "sometimes"\n')
    result = device.check()
    assert result.returncode == 78
    assert result.stderr.startswith("fieldpass: error:") and result.stderr.count("\n") == 1
    device.write_config("nonsense = = =\n")
    assert device.check().returncode == 78


def test_no_identity_is_a_config_error(device: DeviceRoot) -> None:
    (device.path / "etc/machine-id").write_text("uninitialized\n")
    result = device.check()
    assert result.returncode == 78
    assert "no device id" in result.stderr


# -- every run leaves verdict files that match its exit code -------------------------


ALLOWS = Path(__file__).resolve().parents[1] / "firmware-hooks/libexec/fieldpass-verdict-allows"


def allows(device: DeviceRoot) -> int:
    """What an application's start condition says (the real fieldpass-verdict-allows)."""
    env = clean_env(FIELDPASS_ROOT=str(device.path))
    return subprocess.run([str(ALLOWS)], env=env, capture_output=True, check=False).returncode


def assert_error_files(device: DeviceRoot, code: int, reason: str) -> None:
    doc = device.verdict()
    assert (doc["verdict"], doc["exit_code"], doc["reason"]) == ("error", code, reason), doc
    assert doc["entitlements"] == [] and doc["expires_at"] is None
    env = (device.verdict_dir / "verdict.env").read_text()
    assert "FIELDPASS_VERDICT='error'\n" in env and f"FIELDPASS_EXIT='{code}'\n" in env
    assert allows(device) == 1


def test_a_config_error_replaces_a_valid_verdict(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device)
    assert device.check().returncode == 0 and allows(device) == 0
    device.write_config('[clock]\npolicy = "sometimes"\n')
    result = device.run("check", "--json")
    assert result.returncode == 78
    assert json.loads(result.stdout)["reason"] == "config"
    assert_error_files(device, 78, "config")


def test_a_keyring_error_replaces_a_valid_verdict(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device)
    assert device.check().returncode == 0
    (device.path / "etc/fieldpass/keyring").write_text("not a keyring\n")
    assert device.check().returncode == 78
    assert_error_files(device, 78, "config")


def test_an_unknown_config_writes_the_default_verdict_directory(
    device: DeviceRoot, signer: Signer
) -> None:
    signer.provision(device)
    assert device.check().returncode == 0
    result = device.run("--config", "/etc/fieldpass/missing.toml", "check")
    assert result.returncode == 78 and "no such config file" in result.stderr
    assert_error_files(device, 78, "config")


def test_a_lock_timeout_replaces_a_valid_verdict(device: DeviceRoot, signer: Signer) -> None:
    import fcntl

    signer.provision(device)
    assert device.check().returncode == 0
    with open(device.state_dir / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another fieldpass process, stuck
        result = device.check()
    assert result.returncode == 75, result.stderr
    assert_error_files(device, 75, "locked")


def test_an_internal_error_is_one_line_and_an_error_verdict(
    device: DeviceRoot, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (injected: the report step raises) exits 70 with one line, never a
    traceback, and the verdict files say "error"."""
    from agent import gate, report

    signer.provision(device)
    assert device.check().returncode == 0

    def broken(*args: object) -> dict[str, object]:
        raise RuntimeError("injected")

    monkeypatch.setattr(report, "document", broken)
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = gate.main(str(device.path), None, None, [])
    assert code == 70
    assert err.getvalue() == "fieldpass: error: internal error (RuntimeError): please report it\n"
    assert_error_files(device, 70, "internal")


def test_usage_errors_leave_the_files_alone(device: DeviceRoot, signer: Signer) -> None:
    """Not a run of the gate: a mistyped option must not stop the applications."""
    signer.provision(device)
    assert device.check().returncode == 0
    assert device.run("check", "--jsn").returncode == 2
    assert device.verdict()["verdict"] == "valid" and allows(device) == 0


# -- a user who may not read the data directory -----------------------------------------


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def open_device(signer: Signer) -> Iterator[DeviceRoot]:
    """A provisioned device in a directory every user may traverse (pytest's tmp_path
    is private to root); the data directory itself is 0700 root, as on a device."""
    base = Path(tempfile.mkdtemp(prefix="fieldpass-open-", dir="/tmp"))
    base.chmod(0o755)
    device = DeviceRoot(base / "device", os.urandom(16).hex())
    try:
        signer.provision(device)
        assert device.check().returncode == 0
        assert stat.S_IMODE(device.state_dir.stat().st_mode) == 0o700
        yield device
    finally:
        shutil.rmtree(base)


def as_nobody(device: DeviceRoot, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed script as user nobody. setpriv starts the interpreter itself, as
    the script's sh line would (`python3 -I SCRIPT`): this machine's Python lives under
    /root, which nobody may not enter by a later exec (on a device it is /usr/bin)."""
    return subprocess.run(
        [*NOBODY, sys.executable, "-I", FIELDPASS, "--root", str(device.path), *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )


def test_no_access_to_the_data_is_71_not_a_verdict_on_the_file(open_device: DeviceRoot) -> None:
    device = open_device
    sentence = (
        f"cannot read the device's data in {device.state_dir}: the gate runs as root; "
        f"applications read {device.verdict_dir}/verdict.json, never the data directory"
    )
    for command in ("check", "status"):
        result = as_nobody(device, command)
        assert result.returncode == 71, (command, result.stdout, result.stderr)
        assert f"fieldpass: error: {sentence}\n" in result.stderr
        assert "Machine file" not in result.stderr and "Errno" not in result.stderr
        as_json = as_nobody(device, command, "--json")
        assert as_json.returncode == 71
        assert json.loads(as_json.stdout)["reason"] == "no_access"
    assert device.check().returncode == 0  # root still decides


# -- messages a person reads -----------------------------------------------------------


def test_a_damaged_file_is_said_in_plain_words(device: DeviceRoot, signer: Signer) -> None:
    data = signer.provision(device)
    for broken in (data[: len(data) // 2], data + b"\0", data[:1]):
        device.machine_file.write_bytes(broken)
        result = device.run("check", "--json")
        assert result.returncode == 31
        message = str(device.verdict()["message"])
        assert "damaged" in message and "CBOR" not in message, message
        assert device.verdict()["reason"] == "malformed"
        path = device.path.parent / "broken.machine"
        path.write_bytes(broken)
        refused = device.run("install", str(path))
        assert refused.returncode == 31
        assert "damaged" in refused.stderr and "CBOR" not in refused.stderr
    device.machine_file.write_bytes(data)
    assert device.check().returncode == 0  # both slots written
    for name in ("state.a", "state.b"):
        slot = device.state_dir / name
        slot.write_bytes(slot.read_bytes()[:5])
    result = device.run("check", "--json")
    assert result.returncode == 31
    assert "CBOR" not in str(device.verdict()["message"])


def test_the_gate_ends_with_its_output_whole_and_its_verdict_code(
    device: DeviceRoot, signer: Signer, tmp_path: Path
) -> None:
    """The gate ends its process without the interpreter's finalization (agent/main.py,
    _end_gate): what it printed must still arrive whole, and a reader that went away
    must not change the exit code or print a traceback."""
    signer.provision(device)
    out = tmp_path / "out.json"
    with out.open("wb") as f:  # a file: fully buffered, flushed only at the end
        code = subprocess.call(
            [FIELDPASS, "--root", str(device.path), "check", "--json"],
            stdout=f,
            stderr=subprocess.DEVNULL,
            env=clean_env(),
        )
    assert code == 0
    assert json.loads(out.read_text())["verdict"] == "valid"
    gate = subprocess.Popen(
        [FIELDPASS, "--root", str(device.path), "check", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    assert gate.stdout is not None and gate.stderr is not None
    gate.stdout.close()  # the reader is gone before the gate writes
    err = gate.stderr.read().decode()
    assert gate.wait(timeout=60) == 0
    assert "Traceback" not in err
    assert device.verdict()["verdict"] == "valid"
