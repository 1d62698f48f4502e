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
        assert not (old_board.state_dir / "return.receipt").exists()  # the laptop has it
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
