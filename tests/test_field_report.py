"""``fieldpass-hq field import`` of reports that were edited, forged or broken on the way
(issue 13): every field is checked before anything is recorded, and a report that fails
is bad input (exit 65) with one sentence, never "internal error" (70); the audit log is
unchanged. One real report (a laptop that served one device a file it confirmed, one an
agent of 0.1.0 took, one nobody asked for) is edited for each case."""

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioning.models import Actor
from provisioning.services.audit import event
from tests.conftest import HQ, DeviceRoot
from tests.laptop import laptop
from tests.test_field import activated_fleet, on_site


class Visit:
    def __init__(self, hq: HQ, report: Path) -> None:
        self.hq = hq
        self.report = json.loads(report.read_text())

    def audit(self) -> list[dict[str, Any]]:
        return self.hq.json("audit", "--limit", "10000")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def visit(tmp_path_factory: pytest.TempPathFactory) -> Visit:
    where = tmp_path_factory.mktemp("visit")
    hq = HQ(where / "hq-home")
    made = iter(range(10))

    def make_device() -> DeviceRoot:
        return DeviceRoot(where / f"device{next(made)}", os.urandom(16).hex())

    key, (robot, legacy, _absent) = activated_fleet(hq, make_device, 3, where)
    bundle, report = where / "b", where / "r"
    hq.run("field", "export", "--all", "-o", str(bundle))
    with laptop(bundle, report) as lp:
        on_site(robot, lp.url)
        assert robot.run("refresh").returncode == 0
        body = {"license_key": key, "fingerprint": legacy.fingerprint}  # as agents of 0.1.0 ask
        assert httpx.post(lp.url + "/v1/machine-file", json=body).status_code == 200
    visit = Visit(hq, report)
    assert len(visit.report["pickups"]) == 1 and len(visit.report["served_unconfirmed"]) == 1
    assert len(visit.report["not_picked_up"]) == 1
    assert len(visit.report["usage_reports"]) == 1  # the robot's, sent with its renewal
    return visit


Edit = Callable[[dict[str, Any]], object]
FOREIGN_ID = "act_" + "0" * 20
BAD: dict[str, tuple[Edit, str]] = {
    "no pickups": (lambda r: r.pop("pickups"), "pickups must be a list"),
    "a dict where the list belongs": (lambda r: r.update(pickups={}), "pickups must be a list"),
    "a pickup without its fingerprint": (
        lambda r: r["pickups"][0].pop("fingerprint"),
        "fingerprint must be",
    ),
    "an entry that is a list": (lambda r: r["pickups"].append([1]), "must be a JSON object"),
    "nesting": (lambda r: r["pickups"][0].update(x=[[[[[1]]]]]), "nested more than 3"),
    "at yesterday": (lambda r: r["pickups"][0].update(at="yesterday"), "'yesterday'"),
    "a time in 1999": (lambda r: r.update(started_at=915_148_800), "started_at must be a time"),
    "a time in 2100": (
        lambda r: r["served_unconfirmed"][0].update(at=4_102_444_800),
        "at must be a time",
    ),
    "a time after the import": (
        lambda r: r.update(ended_at=r["ended_at"] + 30 * 86400),
        "ended_at must be a time",
    ),
    "an activation that does not exist": (
        lambda r: r["served_unconfirmed"][0].update(activation_id=FOREIGN_ID),
        f"HQ has no activation {FOREIGN_ID}",
    ),
    "an unknown id among those not picked up": (
        lambda r: r["not_picked_up"].append(FOREIGN_ID),
        f"HQ has no activation {FOREIGN_ID}",
    ),
    "a newline in the operator": (
        lambda r: r.update(operator="eve\nfield_pickup forged"),
        "without control characters",
    ),
    "an escape sequence in a field": (
        lambda r: r["pickups"][0].update(via="http\x1b[2J"),
        "via must be one of http, mqtt",
    ),
    "another license": (
        lambda r: r["served_unconfirmed"][0].update(license_id="lic_" + "1" * 20),
        "of another license or device",
    ),
    "a serial HQ never issued": (
        lambda r: r["served_unconfirmed"][0].update(serial=999_999),
        "serial 999999",
    ),
    "a serial the device did not sign": (
        lambda r: r["pickups"][0].update(serial=1),
        "does not say what its signed status says",
    ),
    "another device's status": (
        lambda r: (
            r["served_unconfirmed"].clear()
            or r["not_picked_up"].clear()
            or r["pickups"].append(
                {**r["pickups"][0], **{k: v for k, v in r["_legacy"].items() if k != "serial"}}
            )
        ),
        "does not say what its signed status says",
    ),
    "an activation twice": (
        lambda r: r["not_picked_up"].append(r["pickups"][0]["activation_id"]),
        "in the report twice",
    ),
    "a status that is not base64": (
        lambda r: r["pickups"][0].update(status="not base64!"),
        "status must be base64",
    ),
    "a bundle HQ never exported": (
        lambda r: r.update(bundle_id="fb_" + "0" * 20),
        "was not exported by this HQ",
    ),
    "an edited bundle time": (
        lambda r: r.update(bundle_created_at=r["bundle_created_at"] - 1),
        "bundle_created_at is not when",
    ),
    "usage reports in a dict": (lambda r: r.update(usage_reports={}), "usage_reports must be"),
    "a usage report that is not base64": (
        lambda r: r["usage_reports"][0].update(report="not base64!"),
        "report must be base64",
    ),
    "a usage report's sequence edited": (
        lambda r: r["usage_reports"][0].update(seq=r["usage_reports"][0]["seq"] + 1),
        "does not say what its signature covers",
    ),
    "a usage report given to another device": (
        lambda r: r["usage_reports"][0].update(r["_legacy"]),
        "does not say what its signature covers",
    ),
    "a usage report twice": (
        lambda r: r["usage_reports"].append(r["usage_reports"][0]),
        "is in usage_reports twice",
    ),
    "a receipt of an activation that does not exist": (
        lambda r: r.update(
            receipts=[
                {
                    **r["usage_reports"][0],
                    "activation_id": FOREIGN_ID,
                    "serial": 1,
                    "receipt": r["usage_reports"][0]["report"],
                }
            ]
        ),
        f"HQ has no activation {FOREIGN_ID}",
    ),
    "a receipt without its serial": (
        lambda r: r.update(receipts=[{**r["usage_reports"][0], "receipt": "AAAA"}]),
        "serial must be",
    ),
    "a version-1 report": (lambda r: r.update(v=1), "version-1 report"),
    "no format": (lambda r: r.pop("format"), "not a field report"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_malformed_report_is_bad_input(visit: Visit, tmp_path: Path, case: str) -> None:
    edit, words = BAD[case]
    report = copy.deepcopy(visit.report)
    legacy = report["served_unconfirmed"][0]
    report["_legacy"] = {k: legacy[k] for k in ("activation_id", "license_id", "fingerprint")}
    edit(report)
    report.pop("_legacy")
    path = tmp_path / "edited.report"
    path.write_text(json.dumps(report))
    before = visit.audit()
    result = visit.hq.run("field", "import", str(path), check=False)
    assert result.returncode == 65, (result.returncode, result.stderr)
    assert result.stderr.startswith("fieldpass-hq: error: ") and result.stderr.count("\n") == 1
    assert words in result.stderr and "please report it" not in result.stderr, result.stderr
    assert visit.audit() == before  # nothing recorded


def test_a_deep_or_huge_report_is_bad_input(visit: Visit, tmp_path: Path) -> None:
    deep = tmp_path / "deep.report"
    deep.write_text('{"format": "fieldpass-field-report", "pickups": ' + "[" * 100_000 + "}")
    huge = tmp_path / "huge.report"
    with huge.open("wb") as f:
        f.truncate(65 * 1024 * 1024)
    for path, words in ((deep, "nested"), (huge, "larger than 64 MiB")):
        result = visit.hq.run("field", "import", str(path), check=False)
        assert result.returncode == 65 and words in result.stderr, result.stderr


def test_an_operator_name_with_a_newline_stays_on_one_line(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    """The technician's login name (from the environment) goes into the report, then the
    audit log: one line, whatever it holds."""
    _, (robot,) = activated_fleet(hq, make_device, 1, tmp_path)
    bundle, report = tmp_path / "b", tmp_path / "r"
    hq.run("field", "export", "--all", "-o", str(bundle))
    name = "eve\nfield_pickup act_forged\x1b[2J"
    with laptop(bundle, report, env={"LOGNAME": name, "USER": name}) as lp:
        on_site(robot, lp.url)
        assert robot.run("refresh").returncode == 0
    assert json.loads(report.read_text())["operator"] == "cli:eve?field_pickup act_forged?[2J"
    hq.run("field", "import", str(report))
    pickups = [e for e in hq.json("audit", "--limit", "100") if e["action"] == "field_pickup"]  # type: ignore[attr-defined]
    assert [e["actor"] for e in pickups] == ["field:cli:eve?field_pickup act_forged?[2J"]


def test_every_audit_event_is_one_line() -> None:
    """Whatever a caller hands the audit log, an event is one line."""
    ev = event(1, Actor("eve\nx", "a\r\nb"), "act\u2028ion", "l\x00", "a\x85", "d\n\x1b")
    texts = [ev.actor, ev.source, ev.action, ev.license_id, ev.activation_id, ev.detail]
    assert texts == ["eve\\nx", "a\\r\\nb", "act\\u2028ion", "l\\x00", "a\\x85", "d\\n\\x1b"]
