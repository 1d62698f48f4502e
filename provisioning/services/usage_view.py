"""What HQ shows of the usage devices report (issue 16): the rows for billing (the same
for ``fieldpass-hq usage show``, its ``--csv``, the console's Usage page and its CSV
download, and ``GET /v1/usage``), per license, each device's last report, the metered
entitlements used and left, the regressions flagged to the operator, and a license's
returns against its plan's limit.

Reads only, over ``Usage.usage`` (the rows) and the store's read queries: nothing here
accepts a report, frees a seat or writes an event. Every method takes ``now`` from its
caller. ``billing_csv`` is the one place the billing CSV is written.
"""

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.usage import BUILTIN

from ..errors import InvalidRequest, LicenseNotFound
from ..models import PlanMeter, ReturnRecord, UsageReport
from ..storage import Store
from ..units import format_time
from .fleet import Page
from .usage import YEAR_S, Usage

CSV_HEADER = ("activation_id", "license_id", "counter", "value", "growth", "last_at")
# What the device rows sort by (``counter:NAME`` sorts by that counter's last value).
USAGE_SORTS = ("device", "license", "reports", "first", "last", "growth")
COUNTER_SORT = "counter:"

Row = dict[str, Any]


def billing_csv(rows: Sequence[Row]) -> str:
    """The billing CSV of ``Usage.usage`` rows: one line per device and counter."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_HEADER)
    for r in rows:
        for name, value in sorted(r["counters"].items()):
            growth = r["growth"].get(name, 0)
            writer.writerow(
                [r["activation_id"], r["license_id"], name, value, growth,
                 format_time(int(r["last_at"]))]
            )  # fmt: skip
    return buf.getvalue()


def _sort_key(sort: str) -> Any:
    if sort.startswith(COUNTER_SORT):
        name = sort[len(COUNTER_SORT) :]
        return lambda r: (r["counters"].get(name, -1), r["activation_id"])
    column = {
        "device": "fingerprint",
        "license": "license_id",
        "reports": "reports",
        "first": "first_at",
        "last": "last_at",
    }
    if sort == "growth":
        return lambda r: (sum(r["growth"].values()), r["activation_id"])
    if sort not in column:
        raise InvalidRequest(
            f"sort by one of {', '.join(USAGE_SORTS)} or {COUNTER_SORT}NAME, not {sort!r}"
        )
    return lambda r: (r[column[sort]], r["activation_id"])


def page_of(
    rows: Sequence[Any], sort: str, descending: bool, limit: int | None, offset: int
) -> Page[Any]:
    """One page of usage rows sorted by ``sort`` (``USAGE_SORTS`` or ``counter:NAME``)."""
    ordered = sorted(rows, key=_sort_key(sort), reverse=descending)
    end = None if limit is None else offset + limit
    return Page(ordered[offset:end], len(ordered), offset, limit)


@dataclass(frozen=True)
class LicenseUsage:
    """A license's devices' usage over a period: the sum of their last counters and of
    their growth."""

    license_id: str
    devices: int
    reports: int
    first_at: int
    last_at: int
    counters: dict[str, int] = field(default_factory=dict)
    growth: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PlanTerms:
    plan: str
    counters: tuple[str, ...]  # Fieldpass's own (boots, operating_s), then the plan's
    meters: tuple[PlanMeter, ...]
    returns_per_year: int | None


@dataclass(frozen=True)
class MeterUse:
    """A metered entitlement on one device: the period HQ signed last, its base, and
    the counter's last reported value; ``used`` since the base, ``left`` of ``limit``."""

    activation_id: str
    license_id: str
    feature: str
    counter: str
    limit: int
    period_start: int | None  # None: HQ has signed no period for it yet
    period_end: int | None
    base: int
    value: int
    ended: bool  # the period is over: the device waits for a file of the next one

    @property
    def used(self) -> int:
        return max(0, self.value - self.base)

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True)
class Regression:
    """A report with a counter lower than HQ's last value (audited ``usage_regression``)."""

    at: int
    license_id: str | None
    activation_id: str | None
    seq: int | None
    lower: tuple[str, ...]


@dataclass(frozen=True)
class ReturnState:
    record: ReturnRecord
    freed_at: int | None  # when the seat was freed (None: still taken)

    @property
    def override(self) -> str | None:
        return self.record.override


@dataclass(frozen=True)
class Returns:
    """A license's returns, newest first, and those of the last year that count
    against its plan's limit (an operator's override does not)."""

    items: list[ReturnState]
    this_year: int
    limit: int | None


def _parse_regression(detail: str | None) -> tuple[int | None, tuple[str, ...]]:
    """``seq=N lower=a,b`` (services/usage.py writes it)."""
    seq: int | None = None
    lower: tuple[str, ...] = ()
    for part in (detail or "").split():
        key, _, value = part.partition("=")
        if key == "seq" and value.isdigit():
            seq = int(value)
        elif key == "lower":
            lower = tuple(n for n in value.split(",") if n)
    return seq, lower


class UsageView:
    def __init__(self, store: Store, usage: Usage) -> None:
        self.store = store
        self.usage = usage

    def rows(
        self,
        license_id: str | None = None,
        activation_id: str | None = None,
        since: int | None = None,
        until: int | None = None,
    ) -> list[Row]:
        """Per device, the period's reports (``Usage.usage``: what billing reads)."""
        return self.usage.usage(license_id, activation_id, since, until)

    @staticmethod
    def by_license(rows: Sequence[Row]) -> list[LicenseUsage]:
        """The rows added up per license."""
        found: dict[str, list[Row]] = {}
        for r in rows:
            found.setdefault(str(r["license_id"]), []).append(r)
        out = []
        for lid, rs in found.items():
            counters: dict[str, int] = {}
            growth: dict[str, int] = {}
            for r in rs:
                for k, v in r["counters"].items():
                    counters[k] = counters.get(k, 0) + int(v)
                for k, v in r["growth"].items():
                    growth[k] = growth.get(k, 0) + int(v)
            out.append(
                LicenseUsage(
                    lid,
                    len(rs),
                    sum(int(r["reports"]) for r in rs),
                    min(int(r["first_at"]) for r in rs),
                    max(int(r["last_at"]) for r in rs),
                    dict(sorted(counters.items())),
                    dict(sorted(growth.items())),
                )
            )
        return out

    def last_reports(self, activation_ids: Sequence[str]) -> dict[str, UsageReport]:
        """The newest report HQ accepted from each of these activations."""
        with self.store.read() as tx:
            return tx.latest_reports(list(activation_ids))

    def terms(self, plans: Sequence[str]) -> list[PlanTerms]:
        """Each plan's usage terms: counters, metered entitlements, returns a year."""
        with self.store.read() as tx:
            return [
                PlanTerms(
                    p,
                    (*BUILTIN, *tx.plan_counters(p)),
                    tuple(tx.plan_meters(p)),
                    tx.plan_returns(p),
                )
                for p in plans
            ]

    def meters(
        self, now: int, license_id: str | None = None, activation_id: str | None = None
    ) -> list[MeterUse]:
        """Every metered entitlement of the live devices chosen, as used now."""
        with self.store.read() as tx:
            acts = [
                a
                for a in tx.list_activations(license_id)
                if a.deactivated_at is None and activation_id in (None, a.id)
            ]
            ids = [a.id for a in acts]
            periods = tx.latest_meter_periods(ids)
            reports = tx.latest_reports(ids)
            plans: dict[str, str] = {}
            meters: dict[str, list[PlanMeter]] = {}
            out = []
            for a in acts:
                if a.license_id not in plans:
                    lic = tx.get_license(a.license_id)
                    assert lic is not None  # a foreign key
                    plans[a.license_id] = lic.plan
                plan = plans[a.license_id]
                if plan not in meters:
                    meters[plan] = tx.plan_meters(plan)
                report = reports.get(a.id)
                for m in meters[plan]:
                    signed = periods.get((a.id, m.feature))
                    start, end, base = signed if signed else (None, None, 0)
                    value = report.counters.get(m.counter, 0) if report else 0
                    ended = end is not None and end <= now
                    out.append(
                        MeterUse(
                            a.id, a.license_id, m.feature, m.counter, m.limit,
                            start, end, base, value, ended,
                        )
                    )  # fmt: skip
        return out

    def regressions(
        self,
        license_id: str | None = None,
        activation_id: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[Regression]:
        """The reports flagged as regressions in [since, until), newest first."""
        with self.store.read() as tx:
            rows, total = tx.usage_regressions(
                license_id, activation_id, since, until, limit, offset
            )
        items = [Regression(at, lic, act, *_parse_regression(d)) for at, lic, act, d in rows]
        return Page(items, total, offset, limit)

    def returns(self, license_id: str, now: int) -> Returns:
        """A license's returns, and those of the last year against its plan's limit
        (the count ``Usage.accept_receipt`` checks)."""
        with self.store.read() as tx:
            lic = tx.get_license(license_id)
            if lic is None:
                raise LicenseNotFound(f"no license {license_id}")
            items = [ReturnState(r, freed) for r, freed in tx.license_returns(license_id)]
            this_year = tx.returns_since(license_id, now - YEAR_S)
            return Returns(items, this_year, tx.plan_returns(lic.plan))
