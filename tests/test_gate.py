"""The boot gate as a subprocess: the installed ``fieldpass check``, clocks moved with
libfaketime, every verdict and its exit code, the verdict files."""

import os
import subprocess

from tests.conftest import DAY, DeviceRoot, Signer


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
    import json

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
