"""The HQ console in a real browser: Debian's headless Chromium (tests/hq/browser.py)
against a real ``fieldpass-hq serve`` on a free loopback port, over a seeded fleet
(tests/hq/fleet.py). What the page says is checked against the database, read on its
own. On a failure, a screenshot of every page the test visited is written to the test's
output folder (its ``tmp_path``/screenshots).
"""

import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioning.services.fleet import CHART_WEEKS, WEEK_S, week_start

from . import fleet
from .browser import LAPTOP, TABLET, Browser, available, clean_profile
from .server import Server, start_server

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

PAGES = [
    "/console/",
    "/console/licenses",
    "/console/activations",
    "/console/sites",
    "/console/sites/south",
    "/console/audit",
    "/console/plans",
    "/console/keys",
    "/console/tokens",
    "/console/licenses/new",
    "/console/usage",
    "/console/usage?view=licenses",
    "/console/usage?view=meters",
    "/console/usage?view=regressions",
]


@dataclass
class Console:
    server: Server
    seeded: fleet.Fleet
    browser: Browser
    home: Path
    now: int

    def license_page(self, role: str) -> str:
        return f"/console/licenses/{self.seeded.licenses[role]}"


def status_of(console: Console, role: str) -> object:
    rows = fleet.stored(
        console.home, "SELECT status FROM licenses WHERE id = ?", console.seeded.licenses[role]
    )
    return rows[0][0]


@pytest.fixture
def console(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Console]:
    home = tmp_path / "hq"
    now = int(time.time())
    seeded = fleet.seed(home, now)
    server = start_server(home)
    browser = Browser(server.url, clean_profile(tmp_path / "chromium"))
    try:
        yield Console(server, seeded, browser, home, now)
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            written = browser.save_screenshots(tmp_path / "screenshots")
            print(f"screenshots of every page visited: {written[0].parent if written else '-'}")
        browser.quit()
        server.stop()


def test_a_page_without_a_session_goes_to_the_login_and_back(console: Console) -> None:
    b = console.browser
    b.visit("/console/licenses?status=active")
    assert b.path.startswith("/console/login?next=")
    next_page = urllib.parse.parse_qs(urllib.parse.urlsplit(b.path).query)["next"][0]
    assert next_page == "/console/licenses?status=active"
    b.find("input[name=token]").send_keys("fphq_not-a-token")
    b.click("section.login button[type=submit]")
    assert "invalid or missing bearer token" in b.text("p.problem")
    b.find("input[name=token]").send_keys(console.seeded.token)
    b.click("section.login button[type=submit]")
    assert b.path == "/console/licenses?status=active"  # back where the operator was
    assert b.text(".operator") == fleet.TOKEN_NAME


def test_log_in_and_out(console: Console) -> None:
    b = console.browser
    b.login(console.seeded.token)
    assert b.path == "/console/"
    assert b.text("h1") == "Fleet overview"
    cookie = b.driver.get_cookie("fieldpass_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert cookie["expiry"] <= time.time() + 8 * 3600 + 60
    b.click("form.who button[type=submit]")
    assert b.path == "/console/login"
    assert b.driver.get_cookie("fieldpass_console") is None
    b.visit("/console/")
    assert b.path.startswith("/console/login")
    rows = fleet.stored(
        console.home, "SELECT actor, action FROM audit WHERE action LIKE 'console_%' ORDER BY id"
    )
    who = f"console:{fleet.TOKEN_NAME}"
    assert rows == [(who, "console_login"), (who, "console_logout")]


def test_the_overview_matches_the_database_and_charts_one_bar_a_week(console: Console) -> None:
    b = console.browser
    b.login(console.seeded.token)
    live = fleet.stored(
        console.home, "SELECT COUNT(*) FROM activations WHERE deactivated_at IS NULL"
    )
    assert int(b.text("#devices-total")) == live[0][0] == sum(console.seeded.verdicts.values())
    shown = {t.get_attribute("data-verdict"): int(t.find_element("css selector", ".n").text)
             for t in b.find_all("li.tile")}  # fmt: skip
    expected = dict.fromkeys(["valid", "warning", "grace", "expired", "revoked", "unknown"], 0)
    expected.update(console.seeded.verdicts)
    assert shown == expected
    # One bar per week, each as high as the files the database says expire that week.
    bars = b.find_all("svg.chart rect.bar")
    assert len(bars) == CHART_WEEKS
    first = week_start(int(time.time()))
    per_week: Counter[int] = Counter()
    later = 0
    for expires in fleet.live_expiries(console.home):
        if expires >= console.now:
            week = (expires - first) // WEEK_S
            if week < CHART_WEEKS:
                per_week[week] += 1
            else:
                later += 1
    assert [int(bar.get_attribute("data-files")) for bar in bars] == [
        per_week[i] for i in range(CHART_WEEKS)
    ]
    assert sum(per_week.values()) >= 15  # the seed spreads them over the year
    heights = [float(bar.get_attribute("height")) for bar in bars]
    assert all((h > 0) == (per_week[i] > 0) for i, h in enumerate(heights))
    assert int(b.text("#files-later")) == later
    # Not heard from in 30 days: seen before that or never, read from the database.
    quiet = fleet.stored(
        console.home,
        "SELECT COUNT(*) FROM activations WHERE deactivated_at IS NULL "
        "AND (last_seen_at IS NULL OR last_seen_at < ?)",
        console.now - 30 * fleet.DAY,
    )
    assert int(b.text("#quiet-count")) == quiet[0][0] == 8


def test_filter_licenses_by_expiry(console: Console) -> None:
    b = console.browser
    b.login(console.seeded.token)
    b.visit("/console/licenses")
    everyone = {r.get_attribute("data-license") for r in b.find_all("tr[data-license]")}
    assert everyone == set(console.seeded.licenses.values())
    box = b.find("#license-filters input[name=within]")
    box.send_keys("60d")
    b.click("#license-filters button[type=submit]")
    assert "within=60d" in b.path
    shown = {r.get_attribute("data-license") for r in b.find_all("tr[data-license]")}
    expected = {
        r[0]
        for r in fleet.stored(
            console.home,
            "SELECT DISTINCT license_id FROM activations WHERE deactivated_at IS NULL "
            "AND last_expires_at <= ?",
            int(time.time()) + 60 * fleet.DAY,
        )
    }
    # spread (its first file expires in 6 weeks) and soon (warning, grace, expired)
    assert shown == expected == {console.seeded.licenses[r] for r in ("spread", "soon")}
    seats = {
        r.get_attribute("data-license"): r.find_element("css selector", "td.seats").text
        for r in b.find_all("tr[data-license]")
    }
    assert seats[console.seeded.licenses["soon"]] == "7 / 100"
    # Sorted by seats used, most first: the header's link, twice (ascending, then not).
    b.visit("/console/licenses")
    b.click("th a[href*='sort=seats']")
    b.click("th a[href*='sort=seats']")
    assert "order=desc" in b.path
    used = [int(c.text.split(" / ")[0]) for c in b.find_all("td.seats")]
    assert used == sorted(used, reverse=True) and used[0] == 12


def test_revoke_through_the_confirmation_and_see_the_devices_change(console: Console) -> None:
    b = console.browser
    b.login(console.seeded.token)
    b.visit(console.license_page("soon"))
    verdicts = {c.text for c in b.find_all("table.devices td.verdict")}
    assert verdicts == {"warning", "grace", "expired"}
    b.click("a.button.danger")  # Revoke...
    assert b.path == console.license_page("soon") + "/revoke"
    assert b.text("#live-count") == "7"
    assert "south" in b.text("#consequences") and "final" in b.text("#consequences")
    assert status_of(console, "soon") == "active"
    b.click("#confirm-revoke")
    assert b.path.startswith(console.license_page("soon") + "?done=revoked")
    assert "revoked" in b.text("h1")
    assert {c.text for c in b.find_all("table.devices td.verdict")} == {"revoked"}
    assert status_of(console, "soon") == "revoked"
    audit = fleet.stored(
        console.home, "SELECT actor, license_id FROM audit WHERE action = 'revoke'"
    )
    assert (f"console:{fleet.TOKEN_NAME}", console.seeded.licenses["soon"]) in audit


def test_a_form_posted_without_its_csrf_token_is_refused(console: Console) -> None:
    b = console.browser
    b.login(console.seeded.token)
    b.visit(console.license_page("spread"))
    form = "form[action$='/suspend']"
    b.driver.execute_script(f'document.querySelector("{form} input[name=csrf]").remove()')
    b.click(f"{form} button")
    assert "CSRF" in b.text("p.problem")
    b.visit(console.license_page("spread"))
    b.driver.execute_script(
        f'document.querySelector("{form} input[name=csrf]").value = "0".repeat(64)'
    )
    b.click(f"{form} button")
    assert "CSRF" in b.text("p.problem")
    assert status_of(console, "spread") == "active"  # nothing changed
    b.visit(console.license_page("spread"))
    b.click(f"{form} button")  # the same form with its token: suspended
    assert "suspended" in b.text("h1")


def test_no_page_asks_any_host_but_the_server(console: Console) -> None:
    b = console.browser
    b.login(console.seeded.token)
    for path in [*PAGES, console.license_page("soon"), console.license_page("soon") + "/revoke"]:
        b.visit(path)
    b.visit("/docs")
    b.driver.implicitly_wait(10)
    assert b.find("#swagger-ui .info .title").text.startswith("Fieldpass HQ")
    b.shot("docs")
    urls = b.requested_urls()
    assert len(urls) > len(PAGES) + 4  # the log saw the pages and their assets
    server = urllib.parse.urlsplit(console.server.url).netloc
    # Network requests only: the browser's own pages (chrome://) and data: or blob: URLs
    # reach no host.
    foreign = {
        u for u in urls if urllib.parse.urlsplit(u).scheme in ("http", "https", "ws", "wss")
        and urllib.parse.urlsplit(u).netloc != server
    }  # fmt: skip
    assert foreign == set()
    assert any(u.endswith("/docs/assets/swagger-ui-bundle.js") for u in urls)
    # Nothing a page does is refused by its own Content-Security-Policy.
    assert [m for m in b.console_messages() if "Content Security Policy" in m] == []


@pytest.mark.parametrize("size", [LAPTOP, TABLET], ids=["laptop-1280x800", "tablet-768x1024"])
def test_every_page_fits_a_laptop_and_a_tablet(console: Console, size: tuple[int, int]) -> None:
    b = console.browser
    b.login(console.seeded.token)
    b.resize(size)
    for path in [*PAGES, console.license_page("spread"), console.license_page("metered")]:
        b.visit(path)
        assert not b.overflows(), f"{path} scrolls sideways at {size[0]}x{size[1]}"
        assert b.find("nav.main").is_displayed()


def test_dates_show_as_dates_with_their_zone(console: Console) -> None:
    b = console.browser
    b.login(console.seeded.token)
    b.visit(console.license_page("spread"))
    times = b.find_all("table.devices time")
    assert times
    for t in times:
        assert t.text.endswith(" UTC") and t.text[:4].isdigit() and "-" in t.text
    epoch = re.compile(r"\b1[0-9]{9}\b")  # Unix seconds of these years
    assert not [c.text for c in b.find_all("table.devices td") if epoch.search(c.text)]


def test_usage_from_the_menu_to_a_device_and_back_to_its_license(console: Console) -> None:
    b = console.browser
    b.login(console.seeded.token)
    b.click("nav.main a[href='/console/usage']")
    assert b.path == "/console/usage" and b.text("h1") == "Usage"
    reported = fleet.stored(console.home, "SELECT DISTINCT activation_id FROM usage_reports")
    rows = b.find_all("#usage-devices tr[data-activation]")
    assert {r.get_attribute("data-activation") for r in rows} == {r[0] for r in reported}
    # sorted by the plan's counter, most first: the header's link, twice
    b.click("#usage-devices th a[href*='sort=counter%3Aunits']")
    b.click("#usage-devices th a[href*='sort=counter%3Aunits']")
    units = [int(c.text.split()[0]) for c in b.find_all("#usage-devices td[data-counter=units]")]
    assert units == sorted(units, reverse=True) == [1200, 700, 200]
    for t in b.find_all("#usage-devices time"):
        assert t.text.endswith(" UTC") and t.text[:4].isdigit()
    # a billing period in the operator's terms: this month, shown as dates with the zone
    b.click("#presets a[data-preset='This month']")
    assert "since=" in b.path and "until=" in b.path
    assert b.text("#period").startswith("Reports received from ")
    assert b.text("#period").count(" UTC") == 2
    csv_link = b.find("#csv").get_attribute("href")
    assert "/console/usage.csv?" in csv_link and "since=" in csv_link
    # the metered entitlements: the exhausted device has nothing left
    b.visit("/console/usage")
    b.click("nav.tabs a[data-view=meters]")
    exhausted = console.seeded.metered["exhausted"]
    row = b.find(f"#usage-meters tr[data-activation={exhausted}]")
    assert row.find_element("css selector", "td.left").text == "0"
    assert "exhausted" in row.text
    # the regressed device, flagged, and its license page with its last report
    b.click("nav.tabs a[data-view=regressions]")
    restored = console.seeded.metered["restored"]
    assert [
        r.get_attribute("data-activation") for r in b.find_all("#usage-regressions tbody tr")
    ] == [restored]
    b.visit(console.license_page("metered"))
    assert "#3 from" in b.text("#last-report") and "via laptop" in b.text("#last-report")
    assert "1 of the plan's limit of 1 a year" in b.text("#return-count")
    assert len(b.find_all("table.returns tbody tr")) == 2
    steady = console.seeded.metered["steady"]
    b.click(f"table.devices tr[data-activation={steady}] td.last-report a")
    assert b.path == f"/console/usage?device={steady}"
    assert [r.get_attribute("data-activation") for r in b.find_all("#usage-devices tbody tr")] == [
        steady
    ]


def test_selenium_manager_cannot_run_so_nothing_is_downloaded(console: Console) -> None:
    """The browser above started with Selenium Manager pointed at a file that does not
    exist: had Selenium wanted a driver or a browser it would have failed, not fetched."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    assert console.browser.driver.capabilities["browserName"] in ("chrome", "chromium")
    with pytest.raises(WebDriverException, match="selenium-manager"):
        SeleniumManager().binary_paths(["--browser", "chrome"])
