"""The console's Usage page, the usage beside each device and the returns on a license
page, over real HTTP (httpx against ``fieldpass-hq serve`` on a free loopback port),
over a fleet whose usage reports and return receipts were signed by the devices' own
keys (tests/hq/fleet.py ``seed_usage``); what a page says is checked against the
database, read on its own, and the CSV against ``fieldpass-hq usage show --csv``. The
read API behind it (``GET /v1/usage``...) on both HQ engines.
"""

import datetime as dt
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioning.models import Plan
from provisioning.services import HQ
from provisioning.services.usage import set_terms

from . import fleet
from .server import FIELDPASS_HQ, Server, hq_cli, start_server
from .test_console_http import client, login

DAY = fleet.DAY


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, fleet.Fleet]]:
    home = tmp_path_factory.mktemp("usage") / "hq"
    world = fleet.seed(home, int(time.time()))
    server = start_server(home)
    try:
        yield server, world
    finally:
        server.stop()


@pytest.fixture
def c(seeded: tuple[Server, fleet.Fleet]) -> Iterator[httpx.Client]:
    server, world = seeded
    with client(server) as session:
        assert login(session, world.token).status_code == 303
        yield session


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def rows_of(html: str, table: str) -> dict[str, str]:
    """data-activation -> the row's text, in the page's table of this id (or class)."""
    mark = f'id="{table}"' if table.startswith("usage-") else f'<table class="{table}"'
    body = html[html.index(mark) :]
    body = body[: body.index("</table>")]
    found = re.findall(r'<tr data-activation="([^"]*)"[^>]*>(.*?)</tr>', body, re.S)
    return {act: text_of(row) for act, row in found}


def cli_bytes(home: Path, *args: str) -> bytes:
    """What the installed ``fieldpass-hq`` writes, byte for byte (CSV lines end CRLF)."""
    res = subprocess.run([FIELDPASS_HQ, "--home", str(home), *args], capture_output=True,
                         timeout=60, check=True)  # fmt: skip
    return res.stdout


def latest(home: Path) -> dict[str, tuple[int, dict[str, int], str]]:
    """Each activation's newest report, from the database: seq, counters, via."""
    rows = fleet.stored(
        home,
        "SELECT r.activation_id, r.seq, r.counters, r.via FROM usage_reports r "
        "JOIN activations a ON a.id = r.activation_id AND r.seq = a.report_seq",
    )
    return {str(a): (int(s), json.loads(str(c)), str(v)) for a, s, c, v in rows}  # type: ignore[call-overload]


def test_usage_per_device_and_license_matches_what_the_devices_reported(
    seeded: tuple[Server, fleet.Fleet], c: httpx.Client
) -> None:
    server, world = seeded
    page = c.get("/console/usage")
    assert page.status_code == 200
    shown = rows_of(page.text, "usage-devices")
    stored = latest(server.home)
    assert (
        set(shown) == set(stored) == {world.metered[r] for r in ("steady", "exhausted", "restored")}
    )
    steady = shown[world.metered["steady"]]
    assert "3 #1–#3" in steady and "700 +600" in steady  # value, and growth since #1
    restored = shown[world.metered["restored"]]
    assert "regressed" in restored and "200 -300" in restored
    assert "regressed" not in steady
    for act, (_seq, counters, _) in stored.items():
        for name, value in counters.items():
            assert f"{value} " in shown[act], (act, name)
    # per license: one license, the sums of its devices' last values
    per_license = c.get("/console/usage", params={"view": "licenses"}).text
    units = sum(counters["units"] for _, counters, _ in stored.values())
    row = re.search(
        rf'<tr data-license="{world.licenses["metered"]}">(.*?)</tr>', per_license, re.S
    )
    assert row is not None and f"{units} +" in text_of(row.group(1))
    # the plan's counters and meter, as declared
    terms = re.search(r'<tr data-plan="metered">(.*?)</tr>', page.text, re.S)
    assert terms is not None
    assert "boots, operating_s, units" in text_of(terms.group(1))
    assert "welding: 1000 units per 30d" in text_of(terms.group(1))


def test_the_usage_tables_sort_and_page(
    seeded: tuple[Server, fleet.Fleet], c: httpx.Client
) -> None:
    _, world = seeded
    html = c.get("/console/usage", params={"sort": "counter:units", "order": "desc"}).text
    order = list(rows_of(html, "usage-devices"))
    assert order == [world.metered[r] for r in ("exhausted", "steady", "restored")]
    html = c.get("/console/usage", params={"sort": "counter:units"}).text
    assert list(rows_of(html, "usage-devices")) == order[::-1]
    assert 'aria-sort="ascending"' in html
    assert "1–3 of 3" in html
    meters = c.get("/console/usage", params={"view": "meters", "sort": "left"}).text
    assert next(iter(rows_of(meters, "usage-meters"))) == world.metered["exhausted"]
    skipped = c.get("/console/usage", params={"view": "meters", "offset": "4"}).text
    assert "5–5 of 5" in skipped and len(rows_of(skipped, "usage-meters")) == 1


def test_metered_entitlements_show_their_limit_period_used_and_left(
    seeded: tuple[Server, fleet.Fleet], c: httpx.Client
) -> None:
    server, world = seeded
    html = c.get("/console/usage", params={"view": "meters"}).text
    rows = rows_of(html, "usage-meters")
    assert len(rows) == len(fleet.REPORTS)  # every live device of the metered plan
    periods = fleet.stored(
        server.home, "SELECT activation_id, period_start, period_end, base FROM meter_periods"
    )
    start, end = (dt.datetime.fromtimestamp(int(t), dt.UTC) for t in periods[0][1:3])  # type: ignore[call-overload]
    exhausted = rows[world.metered["exhausted"]]
    assert "welding on units 1000" in exhausted and "1200 0 exhausted" in exhausted
    assert f"{start:%Y-%m-%d %H:%M} UTC" in exhausted and f"{end:%Y-%m-%d %H:%M} UTC" in exhausted
    assert "700 300" in rows[world.metered["steady"]]
    assert "exhausted" not in rows[world.metered["steady"]]
    assert all(int(p[3]) == 0 for p in periods)  # type: ignore[call-overload]  # the first period's base


def test_regressions_are_flagged_for_the_operator(
    seeded: tuple[Server, fleet.Fleet], c: httpx.Client
) -> None:
    server, world = seeded
    html = c.get("/console/usage", params={"view": "regressions"}).text
    rows = rows_of(html, "usage-regressions")
    audited = fleet.stored(
        server.home, "SELECT activation_id, detail FROM audit WHERE action = 'usage_regression'"
    )
    assert [(world.metered["restored"], "seq=2 lower=units")] == audited
    assert list(rows) == [world.metered["restored"]]
    assert "#2 units" in rows[world.metered["restored"]]
    assert 'data-view="regressions"' in html and "v-expired" in html  # the tab stands out


def test_the_csv_download_is_the_clis_for_the_same_filters(
    seeded: tuple[Server, fleet.Fleet], c: httpx.Client
) -> None:
    server, world = seeded
    today = dt.datetime.fromtimestamp(time.time(), dt.UTC).date()
    week_ago, tomorrow = str(today - dt.timedelta(days=7)), str(today + dt.timedelta(days=1))
    cases: list[dict[str, str]] = [
        {},
        {"license": world.licenses["metered"]},
        {"device": world.metered["steady"]},
        {"since": week_ago},
        {"since": week_ago, "until": tomorrow, "license": world.licenses["metered"]},
        {"until": week_ago},
        {"license": world.licenses["spread"]},  # no report: the header alone
    ]
    options = {"license": "--license", "device": "--device", "since": "--since", "until": "--until"}
    for params in cases:
        res = c.get("/console/usage.csv", params=params)
        assert res.status_code == 200, params
        assert res.headers["content-type"].startswith("text/csv")
        assert res.headers["content-disposition"].startswith('attachment; filename="usage')
        args = [a for k in options if k in params for a in (options[k], params[k])]
        assert res.content == cli_bytes(server.home, "usage", "show", "--csv", *args), params
        # the page names the same command, and links to this download
        page = c.get("/console/usage", params=params).text
        command = re.search(r'<code id="csv-command">([^<]*)</code>', page)
        assert command is not None
        assert command.group(1) == " ".join(["fieldpass-hq", "usage", "show", *args, "--csv"])
    lines = c.get("/console/usage.csv", params={"since": week_ago}).text.splitlines()
    # within the week: steady's #2 and #3, restored's #2; exhausted reported 10 days ago
    acts = {line.split(",")[0] for line in lines[1:]}
    assert acts == {world.metered["steady"], world.metered["restored"]}
    assert f"{world.metered['steady']},{world.licenses['metered']},units,700,300," in (
        c.get("/console/usage.csv", params={"since": week_ago}).text
    )


def test_bad_filters_say_what_is_wrong_and_show_nothing(
    seeded: tuple[Server, fleet.Fleet], c: httpx.Client
) -> None:
    for params, message in (
        ({"since": "yesterday"}, "is not a date like 2027-12-31"),
        ({"license": "lic_nope"}, "is not a license id"),
        ({"device": "<script>"}, "is not a device id"),
        ({"since": "2027-02-01", "until": "2027-01-01"}, "ends before it starts"),
    ):
        page = c.get("/console/usage", params=params)
        assert page.status_code == 200 and message in page.text
        assert "<script>" not in page.text
        assert rows_of(page.text, "usage-devices") == {}
        csv = c.get("/console/usage.csv", params=params)
        assert csv.status_code == 422 and message in csv.text


def test_device_rows_and_the_license_page_show_the_last_report_and_the_returns(
    seeded: tuple[Server, fleet.Fleet], c: httpx.Client
) -> None:
    server, world = seeded
    lic = world.licenses["metered"]
    page = c.get(f"/console/licenses/{lic}")
    assert page.status_code == 200
    last = re.search(r'<dd id="last-report">(.*?)</dd>', page.text, re.S)
    assert last is not None
    # the newest of the license's reports: steady's #3, a day ago, through a laptop
    assert f"#3 from {world.metered['steady']}" in text_of(last.group(1))
    assert "via laptop" in text_of(last.group(1))
    assert f'href="/console/usage?license={lic}"' in last.group(1)
    devices = rows_of(page.text, "devices")
    stored = latest(server.home)
    for act, (seq, _, via) in stored.items():
        assert f"#{seq} · {via}" in devices[act]
        assert f'href="/console/usage?device={act}"' in page.text
    assert "– usage" in devices[world.metered["returned"]]  # no report yet
    # the same column on the devices list
    listed = rows_of(c.get("/console/activations", params={"license": lic}).text, "devices")
    assert "#3 · laptop" in listed[world.metered["steady"]]
    # returns: when, via, the seat (taken until the file's expiry and grace), the count
    returns = rows_of(page.text, "returns")
    recorded = fleet.stored(
        server.home, "SELECT activation_id, via, frees_at, override FROM returns"
    )
    assert (
        set(returns)
        == {str(r[0]) for r in recorded}
        == {world.metered["returned"], world.metered["swapped"]}
    )
    for act, via, frees_at, override in recorded:
        row = returns[str(act)]
        day = dt.datetime.fromtimestamp(int(frees_at), dt.UTC)  # type: ignore[call-overload]
        assert f"via {via}" in row and f"taken until {day:%Y-%m-%d %H:%M} UTC" in row
        assert (override or "") in row
    count = re.search(r'<p id="return-count">(.*?)</p>', page.text, re.S)
    assert count is not None
    assert "1 of the plan's limit of 1 a year limit reached" in text_of(count.group(1))
    still = fleet.stored(
        server.home, "SELECT COUNT(*) FROM activations WHERE license_id = ? "
        "AND deactivated_at IS NULL", lic,
    )  # fmt: skip
    assert still == [(len(fleet.REPORTS),)]  # no seat freed yet: no TPM, so after grace
    # a license without usage says so
    idle = c.get(f"/console/licenses/{world.licenses['idle']}").text
    assert "none yet" in idle and "No device of this license was given back." in idle


def test_usage_pages_show_no_license_key(
    seeded: tuple[Server, fleet.Fleet], c: httpx.Client
) -> None:
    _, world = seeded
    keys = list(world.keys.values())
    assert keys
    lic = world.licenses["metered"]
    seen = "".join(
        c.get(p).text
        for p in ("/console/usage", "/console/usage?view=licenses", "/console/usage?view=meters",
                  "/console/usage?view=regressions", f"/console/licenses/{lic}",
                  "/console/usage.csv")
    )  # fmt: skip
    for k in keys:
        assert k not in seen and k.replace("-", "") not in seen.replace("-", "")
    assert "BEGIN FIELDPASS RETURN RECEIPT" not in seen


def test_usage_pages_need_a_session(seeded: tuple[Server, fleet.Fleet]) -> None:
    server, _ = seeded
    with client(server) as anonymous:
        for path in ("/console/usage", "/console/usage.csv"):
            res = anonymous.get(path)
            assert res.status_code == 303 and res.headers["location"].startswith("/console/login")
        page = anonymous.get("/v1/usage")
        assert page.status_code == 401


# -- the read API, on each engine -------------------------------------------------------
def _api(online: Any, path: str, **params: str) -> httpx.Response:
    return httpx.get(online.url + path, params=params, headers=online.admin, timeout=30)


def test_the_usage_api_on_each_engine(online: Any) -> None:
    """Reports signed by the devices' keys, accepted by HQ on the engine under test; the
    API answers what the CLI's JSON says, the meters, the regressions and the returns."""
    home, now = online.server.home, int(time.time())
    hq = HQ(home)
    try:
        plan = f"api-{now % 100000}"
        hq.create_plan(
            Plan(plan, "robot", 365 * DAY, 30 * DAY, 5, None, now - 10 * DAY), fleet.SEED
        )
        set_terms(
            hq.store, plan, ["units"], [fleet.METERED_TERMS[1]], 2, now - 10 * DAY, fleet.SEED
        )
        lic = hq.create_license(plan, [], None, now - 10 * DAY, fleet.SEED)
        a, b = (
            fleet.SeedDevice(hq, lic.license_key, f"{now:032x}{n:032x}", now - 10 * DAY)
            for n in (1, 2)
        )
        a.report(1, now - 5 * DAY, "mqtt", 300)
        a.report(2, now - DAY, "http", 100)  # lower: a regression
        b.report(1, now - 2 * DAY, "laptop", 40)
        b.give_back(now - DAY, "http")
    finally:
        hq.store.close()
    rows = _api(online, "/v1/usage", license_id=lic.id, sort="counter:units", order="desc")
    assert rows.status_code == 200 and rows.headers["x-total-count"] == "2"
    cli = json.loads(hq_cli(home, "usage", "show", "--license", lic.id, "--json"))
    by_id = {r["activation_id"]: r for r in rows.json()}
    assert [r["activation_id"] for r in rows.json()] == [a.act.id, b.act.id]  # 100 > 40
    for r in cli:
        got = by_id[r["activation_id"]]
        assert {k: got[k] for k in r} == r
        assert got["last_at_iso"].endswith("Z")
    first = _api(online, "/v1/usage", license_id=lic.id, limit="1")
    assert len(first.json()) == 1 and 'rel="next"' in first.headers["link"]
    recent = _api(online, "/v1/usage", license_id=lic.id, since=str(now - 3 * DAY))
    assert {r["activation_id"]: r["reports"] for r in recent.json()} == {a.act.id: 1, b.act.id: 1}
    meters = _api(online, "/v1/usage/meters", license_id=lic.id).json()
    assert {(m["activation_id"], m["used"], m["left"]) for m in meters} == {
        (a.act.id, 100, 900),
        (b.act.id, 40, 960),
    }
    assert all(m["limit"] == 1000 and m["period_end_iso"] for m in meters)
    flagged = _api(online, "/v1/usage/regressions", license_id=lic.id).json()
    assert [(g["activation_id"], g["seq"], g["lower"]) for g in flagged] == [
        (a.act.id, 2, ["units"])
    ]
    assert _api(online, "/v1/usage/regressions", activation_id=b.act.id).json() == []
    returns = _api(online, f"/v1/licenses/{lic.id}/returns").json()
    assert returns["returned_last_year"] == 1 and returns["returns_per_year"] == 2
    (given,) = returns["returns"]
    assert given["activation_id"] == b.act.id and given["via"] == "http"
    assert given["freed_at"] is None and given["frees_at"] > now
    assert "receipt" not in given
    missing = _api(online, f"/v1/licenses/lic_{'0' * 20}/returns")
    assert missing.status_code == 404
