"""The console's Usage page: what devices reported over a period, per device and per
license (the rows ``fieldpass-hq usage show`` prints), the counters each plan declares,
the metered entitlements used and left, and the reports flagged as regressions; sorted
and paged; and the billing CSV of the same rows (``usage show --csv``, one writer:
``services/usage_view.billing_csv``).

The period is the CLI's: reports received from ``since`` (a day, 00:00 UTC) up to,
not including, ``until``. Every rule is the services'; this module reads the request,
calls them, and renders. Reads only: no form, nothing changes.
"""

import datetime as dt
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ...models import UsageReport
from ...services import HQ
from ...services.fleet import Device, Page
from ...services.usage_view import COUNTER_SORT, USAGE_SORTS, UsageView, billing_csv, page_of
from ...units import parse_date
from ..common import now
from .render import download, listing, number, render
from .session import PATH, Op

PAGE = 100
VIEWS = ("devices", "licenses", "meters", "regressions")
LICENSE_ID = re.compile(r"lic_[0-9a-f]{20}")
ACTIVATION_ID = re.compile(r"act_[0-9a-f]{20}")
LICENSE_SORTS = {"license": "license_id", "devices": "devices", "reports": "reports",
                 "first": "first_at", "last": "last_at"}  # fmt: skip
METER_SORTS = {"device": "activation_id", "license": "license_id", "feature": "feature",
               "used": "used", "left": "left", "ends": "period_end"}  # fmt: skip


@dataclass(frozen=True)
class Filters:
    """The page's filters as given (the CLI's options) and as HQ reads them."""

    license_id: str | None
    activation_id: str | None
    since: str | None
    until: str | None
    since_at: int | None
    until_at: int | None
    problem: str

    def query(self) -> dict[str, str]:
        given = {"license": self.license_id, "device": self.activation_id,
                 "since": self.since, "until": self.until}  # fmt: skip
        return {k: v for k, v in given.items() if v}

    def command(self) -> str:
        """The same rows from the command line."""
        words = ["fieldpass-hq", "usage", "show"]
        for option, value in (("--license", self.license_id), ("--device", self.activation_id),
                              ("--since", self.since), ("--until", self.until)):  # fmt: skip
            if value:
                words += [option, value]
        return shlex.join([*words, "--csv"])


def read_filters(request: Request) -> Filters:
    q = request.query_params
    license_id = q.get("license", "").strip() or None
    activation_id = q.get("device", "").strip() or None
    since, until = q.get("since", "").strip() or None, q.get("until", "").strip() or None
    problems = []
    if license_id and not LICENSE_ID.fullmatch(license_id):
        problems.append(f"{license_id[:40]!r} is not a license id (lic_ and 20 hex digits)")
    if activation_id and not ACTIVATION_ID.fullmatch(activation_id):
        problems.append(f"{activation_id[:40]!r} is not a device id (act_ and 20 hex digits)")
    at: list[int | None] = []
    for text in (since, until):
        try:
            at.append(parse_date(text) if text else None)
        except ValueError:
            at.append(None)
            problems.append(f"{text[:40]!r} is not a date like 2027-12-31")  # type: ignore[index]
    if at[0] is not None and at[1] is not None and at[1] <= at[0]:
        problems.append("the period ends before it starts")
    return Filters(license_id, activation_id, since, until, at[0], at[1], "; ".join(problems))


def _month(day: dt.date, months: int) -> dt.date:
    total = day.year * 12 + day.month - 1 + months
    return dt.date(total // 12, total % 12 + 1, 1)


def presets(t: int) -> list[tuple[str, str, str]]:
    """Periods an operator bills by: (label, since, until), whole days in UTC."""
    today = dt.datetime.fromtimestamp(t, dt.UTC).date()
    this_month = today.replace(day=1)
    this_year = dt.date(today.year, 1, 1)
    tomorrow = today + dt.timedelta(days=1)
    return [
        ("This month", this_month.isoformat(), _month(this_month, 1).isoformat()),
        ("Last month", _month(this_month, -1).isoformat(), this_month.isoformat()),
        ("Last 30 days", (tomorrow - dt.timedelta(days=30)).isoformat(), tomorrow.isoformat()),
        ("This year", this_year.isoformat(), dt.date(today.year + 1, 1, 1).isoformat()),
        ("Last year", dt.date(today.year - 1, 1, 1).isoformat(), this_year.isoformat()),
    ]


def csv_name(f: Filters) -> str:
    parts = ["usage", f.license_id or "", f.activation_id or "", f.since or "", f.until or ""]
    return "-".join(p for p in parts if p).replace(":", "") + ".csv"


def last_reports(hq: HQ, devices: Page[Device]) -> dict[str, UsageReport]:
    """The newest report of each device of a page (the device rows' column)."""
    view = UsageView(hq.store, hq.usage)
    return view.last_reports([d.row.activation.id for d in devices.items])


def _sorted(items: Sequence[Any], key: str, desc: bool, offset: int) -> Page[Any]:
    ordered = sorted(items, key=lambda x: (getattr(x, key) is None, getattr(x, key) or 0,
                                           x.license_id), reverse=desc)  # fmt: skip
    return Page(ordered[offset : offset + PAGE], len(ordered), offset, PAGE)


def add_routes(app: FastAPI, hq: HQ) -> None:
    view = UsageView(hq.store, hq.usage)

    def rows_of(f: Filters) -> list[dict[str, Any]]:
        if f.problem:
            return []
        return view.rows(f.license_id, f.activation_id, f.since_at, f.until_at)

    @app.get(PATH + "/usage", include_in_schema=False)
    def usage(request: Request, op: Op) -> Response:
        t = now()
        f = read_filters(request)
        shown = request.query_params.get("view", "devices")
        shown = shown if shown in VIEWS else "devices"
        rows = rows_of(f)
        counters = sorted({n for r in rows for n in r["counters"]})
        empty: Page[Any] = Page([], 0, 0, PAGE)
        chosen = (f.license_id, f.activation_id, f.since_at, f.until_at)
        flags = empty if f.problem else view.regressions(*chosen, limit=1000)
        flagged = {r.activation_id for r in flags.items}
        meters = [] if f.problem else view.meters(t, f.license_id, f.activation_id)
        licenses = view.by_license(rows)
        if shown == "devices":
            sorts = {*USAGE_SORTS, *(COUNTER_SORT + c for c in counters)}
            sort, desc, offset = listing(request, sorts, "last")
            page = page_of(rows, sort, desc, PAGE, offset)
        elif shown == "licenses":
            sort, desc, offset = listing(request, LICENSE_SORTS, "last")
            page = _sorted(licenses, LICENSE_SORTS[sort], desc, offset)
        elif shown == "meters":
            sort, desc, offset = listing(request, METER_SORTS, "left")
            page = _sorted(meters, METER_SORTS[sort], desc, offset)
        else:
            sort, desc, offset = "", False, number(request.query_params.get("offset"), 0, 0, 10**9)
            page = empty if f.problem else view.regressions(*chosen, limit=PAGE, offset=offset)
        plans = sorted({p.name for p in hq.list_plans()})
        return render(
            request,
            "usage.html",
            op=op,
            f=f,
            view=shown,
            views=VIEWS,
            counts={
                "devices": len(rows),
                "licenses": len(licenses),
                "meters": len(meters),
                "regressions": flags.total,
            },
            page=page,
            counters=counters,
            flagged=flagged,
            terms=[
                p
                for p in view.terms(plans)
                if len(p.counters) > 2 or p.meters or p.returns_per_year is not None
            ],
            sort=sort,
            desc=desc,
            presets=presets(t),
            csv_query=f.query(),
            now=t,
            nav="usage",
        )

    @app.get(PATH + "/usage.csv", include_in_schema=False)
    def usage_csv(request: Request, op: Op) -> Response:
        f = read_filters(request)
        if f.problem:
            return render(request, "error.html", http_status=422, op=op, message=f.problem)
        return download(billing_csv(rows_of(f)).encode("utf-8"), csv_name(f), "text/csv")
