"""Clocks that lie and clocks that are simply wrong, with the real libfaketime."""

import time

from hypothesis import given
from hypothesis import strategies as st

from agent import clock
from tests.answering_server import AnsweringServer
from tests.conftest import DeviceRoot, Signer


def test_board_without_rtc_booting_at_the_epoch(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device)
    assert device.check().returncode == 0
    strict = device.check(faketime="@1970-01-01 00:00:10")
    assert strict.returncode == 40
    device.write_config('[clock]\npolicy = "floor"\n')
    floor = device.check(faketime="@1970-01-01 00:00:10")
    assert floor.returncode == 0, floor.stdout
    assert "(365 days left)" in floor.stdout  # decided at the mark: no time gained


def test_floor_never_gains_time_from_a_reset(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device)
    device.write_config('[clock]\npolicy = "floor"\n')
    assert device.check(faketime="+370d").returncode == 10  # grace, and the mark moves
    reset = device.check(faketime="@1970-01-01 00:00:10")
    assert reset.returncode == 10  # still grace: the reset bought nothing
    assert device.check(faketime="+400d").returncode == 20


def test_ntp_sized_corrections_never_trip_rollback(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device)
    assert device.check(faketime="+10d").returncode == 0
    for back in ("+9.9999d", "+9.998d"):  # ~9 s and ~3 min behind the mark
        assert device.check(faketime=back).returncode == 0
    device.write_config("[clock]\ntolerance_s = 60\n")
    assert device.check(faketime="+9.998d").returncode == 40  # 3 min > 60 s tolerance


def test_clock_far_ahead_then_back_is_healed_only_by_hq_time(
    device: DeviceRoot, signer: Signer
) -> None:
    signer.provision(device, serial=1)
    assert device.check(faketime="+3000d").returncode == 20  # someone set 2035; mark follows
    stuck = device.check()
    assert stuck.returncode == 40  # the true clock now looks rolled back
    assert device.check().returncode == 40  # and the device's own clock cannot heal it
    renewal = device.path.parent / "renewal.machine"
    renewal.write_bytes(signer.issue(device.fingerprint, serial=2))
    assert device.run("install", str(renewal)).returncode == 0
    # A file alone (it could have been kept for years) never lowers the mark...
    assert device.check().returncode == 40
    # ...an answer HQ bound to this device's fresh request does.
    assert signer.recover(device, serial=3).returncode == 0
    healed = device.check()
    assert healed.returncode == 0, healed.stdout


def test_edited_state_is_tampering(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device)
    device.check()
    for slot in ("state.a", "state.b"):
        path = device.state_dir / slot
        data = bytearray(path.read_bytes())
        data[-40] ^= 0x01  # inside the authenticated body
        path.write_bytes(bytes(data))
    result = device.check()
    assert result.returncode == 31
    assert device.verdict()["reason"] in ("state_foreign", "state_corrupt")


def test_state_copied_from_another_device_is_refused(make_device: "object", signer: Signer) -> None:
    a, b = make_device(), make_device()  # type: ignore[operator]
    signer.provision(a)
    signer.provision(b)
    a.check()
    for slot in ("state.a", "state.b"):
        (b.state_dir / slot).write_bytes((a.state_dir / slot).read_bytes())
    result = b.check()
    assert result.returncode == 31
    assert b.verdict()["reason"] == "state_foreign"


def test_operator_way_out_only_hqs_bound_answer_rebuilds_bad_state(
    device: DeviceRoot, signer: Signer
) -> None:
    signer.provision(device, serial=1)
    (device.state_dir / "state.a").write_bytes(b"junk")
    (device.state_dir / "state.b").unlink()
    assert device.check().returncode == 31
    renewal = device.path.parent / "renewal.machine"
    renewal.write_bytes(signer.issue(device.fingerprint, serial=2))
    refused = device.run("install", str(renewal))
    assert refused.returncode == 31  # a file alone never replaces a refused state
    assert "request" in refused.stderr
    assert device.check().returncode == 31
    assert signer.recover(device, serial=3).returncode == 0
    assert device.check().returncode == 0


def test_future_versioned_state_has_a_clear_message(device: DeviceRoot, signer: Signer) -> None:
    from agent.wire import cbor

    signer.provision(device)
    for slot in ("state.a", "state.b"):
        (device.state_dir / slot).write_bytes(cbor.dumps({"v": 9, "body": b"", "mac": b""}))
    result = device.check()
    assert result.returncode == 31
    assert "newer Fieldpass" in result.stdout


# -- a clock past 2262-04-11 (CPython's time.time() overflows there) ------------------

FAR = "@2300-01-01 00:00:00"
FAR_TS = 10413792000  # 2300-01-01T00:00:00Z


def test_a_clock_past_2262_is_a_verdict_not_a_traceback(
    device: DeviceRoot, signer: Signer, answering_server: AnsweringServer
) -> None:
    signer.provision(device)
    expired = device.run("check", "--json", faketime=FAR)
    assert "Traceback" not in expired.stderr and "OverflowError" not in expired.stderr
    assert expired.returncode == 20, expired.stderr
    assert device.verdict()["checked_at"] == "2300-01-01T00:00:00Z"
    status = device.run("status", faketime=FAR)
    assert status.returncode == 20 and "Traceback" not in status.stderr, status.stderr
    assert "2300-01-01T00:00:00Z" in device.run("status", "--json", faketime=FAR).stdout
    device.write_config(f'[online]\nserver = "{answering_server.url}"\ntimeout_s = 3\n')
    online = device.run("check", "--online", faketime=FAR)
    assert online.returncode == 20 and "Traceback" not in online.stderr, online.stderr
    # HQ's renewal issued in 2300 is installed and valid then
    renewal = device.path.parent / "renewal.machine"
    renewal.write_bytes(signer.issue(device.fingerprint, serial=2, issued_at=FAR_TS))
    installed = device.run("install", str(renewal), faketime="@2300-01-01 00:10:00")
    assert installed.returncode == 0, installed.stderr
    valid = device.run("check", faketime="@2300-01-02 00:00:00")
    assert valid.returncode == 0, valid.stderr
    assert "License valid until 2301-01-01" in valid.stdout


@given(st.integers(-(1 << 62), 1 << 62))
def test_dates_never_overflow_and_agree_with_gmtime(ts: int) -> None:
    text = clock.iso(ts)
    assert text is not None and text.endswith("Z")
    try:
        reference = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return  # beyond the C library: ours still answers
    if 1000 <= time.gmtime(ts).tm_year <= 9999:
        assert text == reference
        assert clock.date(ts) == reference[:10]
