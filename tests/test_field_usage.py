"""What the devices hand the technician's laptop for HQ (issue 16): their signed usage
reports and return receipts, collected by a real ``fieldpass-hq field serve`` on a free
127.0.0.1 port from real device agents renewing through it, carried in the field report
and recorded at HQ by ``field import`` through HQ's own usage rules. Tried as an attacker
would: forged, foreign, replayed and reordered reports and receipts are refused at the
laptop or at import, and change nothing."""

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from agent.wire import armor, device_msg
from agent.wire.device_key import DeviceKey
from tests.conftest import HQ, DeviceRoot
from tests.hq.server import start_server
from tests.laptop import laptop
from tests.test_field import audit_events, on_site


def counters(device: DeviceRoot) -> dict[str, int]:
    return json.loads(device.run("usage", "show", "--json").stdout)  # type: ignore[no-any-return]


def hq_counters(hq: HQ) -> dict[str, dict[str, int]]:
    rows: Any = hq.json("usage", "show")
    return {r["activation_id"]: r["counters"] for r in rows}


def activation_of(device: DeviceRoot) -> str:
    return str(device.verdict()["activation_id"])


def signed_report(device: DeviceRoot, where: Path) -> bytes:
    """A report the device signs for the air-gapped path (`fieldpass report -o FILE`)."""
    assert device.run("report", "-o", str(where)).returncode == 0
    return armor.unarmor(where.read_text(), armor.REPORT)


def post(url: str, route: str, data: bytes) -> httpx.Response:
    return httpx.post(url + route, json={"request": base64.b64encode(data).decode()}, timeout=10)


def online_fleet(
    hq: HQ, make_device: Callable[..., DeviceRoot], n: int
) -> tuple[str, list[DeviceRoot]]:
    """``n`` robots activated online against a real ``fieldpass-hq serve`` (so HQ records
    their device keys and the claims they read) on a license of ``n`` seats, on a plan
    whose devices count units."""
    key = hq.setup(seats=n)
    hq.run("usage", "terms", "industrial", "--counter", "units", "--returns-per-year", "1")
    server = start_server(hq.home)
    fleet = []
    try:
        for _ in range(n):
            robot = make_device()
            hq.image(robot)
            done = robot.run("activate", key, "--server", server.url)
            assert done.returncode == 0, done.stderr
            fleet.append(robot)
    finally:
        server.stop()
    return key, fleet


def test_reports_and_a_receipt_collected_on_site_reach_hqs_totals(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    """Two robots count units; one renews from the laptop (its report travels with the
    renewal), the other gives its license back on site (its daemon hands the laptop its
    report and receipt). Back at HQ the field import records both reports and the
    receipt: HQ's totals are the devices' counters, and the seat is freed as
    `deactivate --receipt` frees it."""
    key, (robot, old_board) = online_fleet(hq, make_device, 2)
    for device, n in ((robot, 5), (robot, 7), (old_board, 3)):
        assert device.run("usage", "add", "units", str(n)).returncode == 0
    returned_id = activation_of(old_board)
    bundle, report = tmp_path / "site.bundle", tmp_path / "site.report"
    hq.run("field", "export", "--all", "-o", str(bundle))
    with laptop(bundle, report) as lp:
        on_site(robot, lp.url)
        renewed = robot.run("refresh")
        assert renewed.returncode == 0, renewed.stderr
        given = old_board.run("return", "--yes")
        assert given.returncode == 0, given.stderr
        on_site(old_board, lp.url)
        daemon = old_board.run("run", "--once")
        assert daemon.returncode == 0, daemon.stderr
        # the laptop carries it, but only HQ's signed acknowledgement lets the board drop it
        assert (old_board.state_dir / "return.receipt").exists()
        assert "carried, not acknowledged" in daemon.stderr, daemon.stderr
    assert "Traceback" not in lp.stderr, lp.stderr
    assert "carrying 2 usage report(s) and 1 return receipt(s) for HQ" in lp.stdout
    done = json.loads(report.read_text())
    assert sorted(r["activation_id"] for r in done["usage_reports"]) == sorted(
        [activation_of(robot), returned_id]
    )
    assert [r["activation_id"] for r in done["receipts"]] == [returned_id]
    imported = hq.run("field", "import", str(report))
    assert "2 usage report(s); 1 return receipt(s), 0 seat(s) freed now" in imported.stdout
    totals = hq_counters(hq)
    assert totals[activation_of(robot)] == counters(robot)
    assert totals[returned_id] == counters(old_board)
    assert totals[activation_of(robot)]["units"] == 12
    returns = audit_events(hq, "return")
    assert [e["activation_id"] for e in returns] == [returned_id]
    assert returns[0]["actor"].startswith("field:")
    # no TPM: the seat is free once the returned file's expiry and grace have passed,
    # and the laptop freed nothing: the new board waits for HQ, not for the technician
    new_board = "ab" * 32
    full = hq.run("activate", key, "--fingerprint", new_board, check=False)
    assert full.returncode != 0 and "seat" in full.stderr
    later = hq.run("activate", key, "--fingerprint", new_board, "--json", faketime="+400d")
    assert later.returncode == 0, later.stderr
    # the board reaches HQ: HQ holds its receipt (409 conflict) and says so, signed
    server = start_server(hq.home)
    try:
        old_board.write_config(f'[online]\nserver = "{server.url}"\ntimeout_s = 5\n')
        assert old_board.run("run", "--once").returncode == 0
    finally:
        server.stop()
    assert not (old_board.state_dir / "return.receipt").exists()


def device_key(device: DeviceRoot) -> DeviceKey:
    """The device's own key, as an attacker holding the device has it."""
    return DeviceKey.loads((device.state_dir / "device.key").read_bytes())


def signed_by(key: DeviceKey, kind: str, device: DeviceRoot, **fields: object) -> bytes:
    """A ``kind`` message naming ``device`` (its fingerprint, its activation), signed by
    ``key``."""
    common: dict[str, object] = {
        "activation_id": activation_of(device),
        "fingerprint": device.fingerprint,
        "at": 1_800_000_000,
        "agent_version": "9.9",
        "device_key": None,
        "proof": None,
    }
    if kind == "report":
        common.update(seq=10**9, counters={"units": 10**9, "boots": 1}, challenge=None)
    else:
        common.update(serial=1, returned_at=1_800_000_000, reason="returned")
    return device_msg.sign(key, kind, {**common, **fields})


def test_forged_foreign_replayed_and_reordered_are_refused_at_the_laptop(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    key, (robot, other, outsider) = online_fleet(hq, make_device, 3)
    site = tmp_path / "site.txt"
    site.write_text(f"{robot.fingerprint}\n{other.fingerprint}\n")  # the outsider is not there
    bundle, report = tmp_path / "site.bundle", tmp_path / "site.report"
    hq.run("field", "export", "--fingerprints", str(site), "-o", str(bundle))
    assert robot.run("usage", "add", "units", "4").returncode == 0
    older = signed_report(robot, tmp_path / "1.report")
    newer = signed_report(robot, tmp_path / "2.report")
    stranger = DeviceKey.generate()
    receipt_file = tmp_path / "other.receipt"
    assert other.run("return", "--yes", "-o", str(receipt_file)).returncode == 0
    receipt = armor.unarmor(receipt_file.read_text(), armor.RECEIPT)
    assert outsider.run("return", "--yes", "-o", str(tmp_path / "out.receipt")).returncode == 0
    refusals = {
        "an older report (reordered)": ("/v1/report", older, 409, "report_refused"),
        "the same report again (replayed)": ("/v1/report", newer, 409, "report_refused"),
        "a stranger's report": ("/v1/report", signed_by(stranger, "report", robot), 401, ""),
        "a stranger's key, carried": (
            "/v1/report",
            signed_by(stranger, "report", robot, device_key=stranger.public_key, proof=bytes(32)),
            401,
            "",
        ),
        "a report of a device not in the bundle": (
            "/v1/report", signed_report(outsider, tmp_path / "o.report"), 401, "",
        ),
        "a device speaking for another": (
            "/v1/report", signed_by(device_key(robot), "report", other), 401, "",
        ),
        "a stranger's receipt": ("/v1/receipt", signed_by(stranger, "receipt", other), 401, ""),
        "a receipt of a device not in the bundle": (
            "/v1/receipt", armor.unarmor((tmp_path / "out.receipt").read_text(), armor.RECEIPT),
            401, "",
        ),
        "a receipt as a report": ("/v1/report", receipt, 401, ""),
        "another receipt of the same activation": (
            "/v1/receipt", signed_by(device_key(other), "receipt", other), 409, "receipt_refused",
        ),
    }  # fmt: skip
    with laptop(bundle, report) as lp:
        assert post(lp.url, "/v1/report", newer).status_code == 200
        assert post(lp.url, "/v1/receipt", receipt).status_code == 200
        assert post(lp.url, "/v1/receipt", receipt).status_code == 200  # heard again: kept once
        for case, (route, data, status, code) in refusals.items():
            answer = post(lp.url, route, data)
            assert answer.status_code == status, (case, answer.text)
            error = answer.json()["error"]
            assert error["code"] == (code or "device_unauthenticated"), case
            assert "\n" not in error["message"]
        assert lp.alive()
    assert "Traceback" not in lp.stderr, lp.stderr
    done = json.loads(report.read_text())
    assert [base64.b64decode(r["report"]) for r in done["usage_reports"]] == [newer]
    assert [base64.b64decode(r["receipt"]) for r in done["receipts"]] == [receipt]
    imported: Any = hq.json("field", "import", str(report))
    assert imported["usage_reports"] == {"accepted": 1, "refused": {}}
    assert imported["receipts"] == {
        "accepted": 1,
        "refused": {},
        "freed": 0,
        "held": 0,
        "freed_by_hand": 0,
    }
    totals = hq_counters(hq)
    assert set(totals) == {activation_of(robot)}
    assert totals[activation_of(robot)] == counters(robot)
    assert [e["activation_id"] for e in audit_events(hq, "return")] == [activation_of(other)]
    del key


def test_replayed_older_and_edited_reports_are_refused_at_import(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    """What a laptop carried is verified again at HQ, through the same rules as POST
    /v1/report: a report HQ holds a newer one of (from another path) is refused with its
    reason and changes nothing; one whose signature was broken on the way is refused;
    one whose entry says another number than it signs makes the report malformed (65,
    nothing recorded)."""
    _, (robot, other) = online_fleet(hq, make_device, 2)
    bundle = tmp_path / "site.bundle"
    hq.run("field", "export", "--all", "-o", str(bundle))
    assert robot.run("usage", "add", "units", "9").returncode == 0
    first = tmp_path / "first.report"
    with laptop(bundle, first) as lp:
        for device in (robot, other):
            on_site(device, lp.url)
            assert device.run("refresh").returncode == 0
    visit = json.loads(first.read_text())
    assert len(visit["usage_reports"]) == 2
    # the robot reports by hand after the visit: HQ holds a newer report than the laptop's
    assert robot.run("usage", "add", "units", "1").returncode == 0
    hand = tmp_path / "hand.report"
    assert robot.run("report", "-o", str(hand)).returncode == 0
    hq.run("usage", "import", str(hand))
    before = hq_counters(hq)
    # the other's report, its signature broken on the way
    broken = bytearray(base64.b64decode(visit["usage_reports"][1]["report"]))
    broken[-1] ^= 1
    edited = json.loads(json.dumps(visit))
    edited["usage_reports"][1]["report"] = base64.b64encode(bytes(broken)).decode()
    tampered = tmp_path / "tampered.report"
    tampered.write_text(json.dumps(edited))
    result: Any = hq.json("field", "import", str(tampered))
    refused = result["usage_reports"]["refused"]
    assert result["usage_reports"]["accepted"] == 0 and sum(refused.values()) == 2
    assert refused.get("report_refused") == 1  # the robot's: older than HQ's
    assert hq_counters(hq) == before
    assert hq_counters(hq)[activation_of(robot)] == counters(robot)  # the newest stands
    # an entry that says another sequence than it signs: the whole report is bad input
    renumbered = json.loads(json.dumps(visit))
    renumbered["usage_reports"][1]["seq"] += 1
    bad = tmp_path / "renumbered.report"
    bad.write_text(json.dumps(renumbered))
    audit_before = len(audit_events(hq, "field_import"))
    malformed = hq.run("field", "import", str(bad), check=False)
    assert malformed.returncode == 65, malformed.stderr
    assert malformed.stderr.count("\n") == 1 and "does not say what its signature" in (
        malformed.stderr
    )
    assert len(audit_events(hq, "field_import")) == audit_before
    assert activation_of(other) not in hq_counters(hq)
    # the report as the laptop wrote it: the other's report is accepted once
    once: Any = hq.json("field", "import", str(first))
    assert once["usage_reports"]["accepted"] == 1
    assert hq_counters(hq)[activation_of(other)] == counters(other)


def test_a_receipt_hq_has_no_use_for_is_forgotten_by_the_device_when_it_reaches_hq(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    """The operator carried one board's receipt to HQ (`deactivate --receipt FILE`, the
    step `fieldpass return` names) and freed the other's seat by hand; later each
    board's daemon reaches HQ with the receipt it kept. HQ has nothing left to free (409
    conflict: it holds that receipt; 404: the seat is free): the board lets it go,
    rather than sending it at every contact for ever."""
    _, boards = online_fleet(hq, make_device, 2)
    acts = [activation_of(b) for b in boards]
    for board in boards:
        assert board.run("return", "--yes", "-o", str(tmp_path / "r")).returncode == 0
        if board is boards[0]:
            hq.run("deactivate", "--receipt", str(tmp_path / "r"))
    hq.run("deactivate", acts[1], "--reason", "board dead, ticket 4713")
    server = start_server(hq.home)
    try:
        for board in boards:
            assert (board.state_dir / "return.receipt").exists()
            board.write_config(f'[online]\nserver = "{server.url}"\ntimeout_s = 5\n')
            assert board.run("run", "--once").returncode == 0
            assert not (board.state_dir / "return.receipt").exists()
    finally:
        server.stop()
    assert [e["activation_id"] for e in audit_events(hq, "return")] == [acts[0]]


def test_a_carried_receipt_of_a_seat_freed_by_hand_is_counted_apart_at_import(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    """The mainboard swap runbook's word: the operator freed the old board's seat by hand
    before the laptop's report came back; its receipt has nothing left to free, and the
    import's summary counts it apart, not as a refusal (as a swap takes it), changing
    nothing; the same receipt over HTTP is still 404 activation_not_found (the device
    drops its copy)."""
    _, (board,) = online_fleet(hq, make_device, 1)
    act = activation_of(board)
    bundle, report = tmp_path / "site.bundle", tmp_path / "site.report"
    hq.run("field", "export", "--all", "-o", str(bundle))
    with laptop(bundle, report) as lp:
        assert board.run("return", "--yes").returncode == 0
        on_site(board, lp.url)
        assert board.run("run", "--once").returncode == 0
    assert [r["activation_id"] for r in json.loads(report.read_text())["receipts"]] == [act]
    hq.run("deactivate", act, "--reason", "mainboard swap: board dead, ticket 4714")
    imported = hq.run("field", "import", str(report))
    assert "0 return receipt(s), 0 seat(s) freed now" in imported.stdout
    assert "1 return receipt(s) of a seat freed by hand already" in imported.stdout
    assert audit_events(hq, "return") == []
