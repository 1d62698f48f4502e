"""The fleet at a glance, for the console, the read API and ``activations list``: the
overview's figures, activations and licenses filtered, sorted and paged, sites with
their devices, the audit log filtered.

Reads only: nothing here issues a file, consumes a seat or writes an event (the views
have no side effect, unlike ``field export``). Each device's verdict comes from
``verdicts`` (the one place it is decided). Every method takes ``now`` from its caller.
Never returns a license key to show: ``License`` records carry one, and only
``documents`` decides what is shown (never a key, but at creation).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..errors import InvalidRequest
from ..models import AuditEvent
from ..storage import Store
from ..storage.views import (
    ACTIVATION_SORTS,
    LICENSE_SORTS,
    LICENSE_STATUSES,
    ActivationQuery,
    AuditQuery,
    FleetRow,
    LicenseQuery,
    LicenseSummary,
    SiteSummary,
)
from . import verdicts

WEEK_S = 7 * 86400
CHART_WEEKS = 52
MAX_PAGE = 1000
AUDIT_MAX = 10_000  # the audit log's pages may be larger (GET /v1/audit, as before paging)
DEFAULT_QUIET_DAYS = 30
_MONDAY_EPOCH_OFFSET_S = 4 * 86400  # 1970-01-01 was a Thursday; 1970-01-05 a Monday

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a view: its items, how many match in all, where it starts."""

    items: Sequence[T]
    total: int
    offset: int
    limit: int | None

    @property
    def next_offset(self) -> int | None:
        end = self.offset + len(self.items)
        return end if self.limit is not None and end < self.total else None


@dataclass(frozen=True)
class Device:
    """A row of an activation list: the activation, what stands beside it, its verdict."""

    row: FleetRow
    verdict: str


@dataclass(frozen=True)
class Week:
    starts_at: int  # Monday 00:00 UTC
    files: int  # live devices' files that expire in this week


@dataclass(frozen=True)
class Overview:
    now: int
    devices: int  # live activations
    verdicts: dict[str, int]  # every one of verdicts.VERDICTS, in that order
    weeks: list[Week]  # CHART_WEEKS of them, from this week on
    later: int  # files expiring after the last week of the chart
    quiet_days: int
    quiet: int  # live devices not heard from in quiet_days (or never)
    clock_not_advancing: int | None  # None: no device's clock report is recorded at HQ
    recent: list[AuditEvent]  # newest first


def week_start(t: int) -> int:
    """Monday 00:00 UTC of the week holding ``t``."""
    return t - (t - _MONDAY_EPOCH_OFFSET_S) % WEEK_S


def expiring_before(now: int, within_s: int | None) -> int | None:
    return None if within_s is None else now + within_s


def _paging(limit: int | None, offset: int, most: int = MAX_PAGE) -> None:
    if limit is not None and not 1 <= limit <= most:
        raise InvalidRequest(f"a page holds 1 to {most} items")
    if offset < 0:
        raise InvalidRequest("an offset is 0 or more")


def _sort(sort: str, known: dict[str, str]) -> None:
    if sort not in known:
        raise InvalidRequest(f"sort by one of {', '.join(sorted(known))}, not {sort!r}")


def device_verdict(row: FleetRow, now: int) -> str:
    a = row.activation
    return verdicts.verdict(
        issued_at=a.last_issued_at,
        expires_at=a.last_expires_at,
        seen_at=a.last_seen_at,
        license_status=row.license_status,
        license_expires_at=row.license_expires_at,
        grace_s=row.grace_s,
        warn_s=row.warn_s,
        now=now,
    )


class Fleet:
    def __init__(self, store: Store) -> None:
        self.store = store

    def overview(
        self, now: int, *, quiet_days: int = DEFAULT_QUIET_DAYS, recent: int = 10
    ) -> Overview:
        if not 1 <= quiet_days <= 36500:
            raise InvalidRequest("quiet days are 1 to 36500")
        with self.store.read() as tx:
            states = tx.file_states()
            events, _ = tx.query_audit(AuditQuery(limit=recent))
        counts = dict.fromkeys(verdicts.VERDICTS, 0)
        first_week = week_start(now)
        bars = [0] * CHART_WEEKS
        later = quiet = 0
        quiet_since = now - quiet_days * 86400
        for s in states:
            v = verdicts.verdict(
                issued_at=s.issued_at,
                expires_at=s.expires_at,
                seen_at=s.seen_at,
                license_status=s.license_status,
                license_expires_at=s.license_expires_at,
                grace_s=s.grace_s,
                warn_s=s.warn_s,
                now=now,
            )
            counts[v] += 1
            if s.seen_at is None or s.seen_at < quiet_since:
                quiet += 1
            if s.expires_at >= now:
                week = (s.expires_at - first_week) // WEEK_S
                if week < CHART_WEEKS:
                    bars[week] += 1
                else:
                    later += 1
        weeks = [Week(first_week + i * WEEK_S, n) for i, n in enumerate(bars)]
        return Overview(now, len(states), counts, weeks, later, quiet_days, quiet, None, events)

    def activations(
        self,
        now: int,
        *,
        license_id: str | None = None,
        site: str | None = None,
        plan: str | None = None,
        expiring_within_s: int | None = None,
        live: bool = True,
        sort: str = "expires",
        descending: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[Device]:
        """Activations (live ones unless ``live`` is False) matching every filter given,
        ``expiring_within_s``: whose newest file expires within that time of ``now``
        (expired files included)."""
        _sort(sort, ACTIVATION_SORTS)
        _paging(limit, offset)
        q = ActivationQuery(
            license_id=license_id,
            site=site,
            plan=plan,
            expiring_before=expiring_before(now, expiring_within_s),
            live=live,
            sort=sort,
            descending=descending,
            limit=limit,
            offset=offset,
        )
        with self.store.read() as tx:
            rows, total = tx.query_activations(q)
        return Page([Device(r, device_verdict(r, now)) for r in rows], total, offset, limit)

    def licenses(
        self,
        now: int,
        *,
        plan: str | None = None,
        status: str | None = None,
        site: str | None = None,
        expiring_within_s: int | None = None,
        sort: str = "created",
        descending: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[LicenseSummary]:
        """Licenses matching every filter given, with their seat limit and the earliest
        expiry of their live devices' files. ``status``: as ``license_status`` says it at
        ``now``; ``site``: with a live device there; ``expiring_within_s``: with a live
        device whose file expires within that time."""
        _sort(sort, LICENSE_SORTS)
        _paging(limit, offset)
        if status is not None and status not in LICENSE_STATUSES:
            raise InvalidRequest(f"a status is one of {', '.join(LICENSE_STATUSES)}")
        q = LicenseQuery(
            plan=plan,
            status=status,
            site=site,
            expiring_before=expiring_before(now, expiring_within_s),
            sort=sort,
            descending=descending,
            limit=limit,
            offset=offset,
        )
        with self.store.read() as tx:
            found, total = tx.license_summaries(q, now)
        return Page(found, total, offset, limit)

    def license_summary(self, license_id: str, now: int) -> LicenseSummary | None:
        """One license's summary (None if there is no such license)."""
        with self.store.read() as tx:
            found, _ = tx.license_summaries(LicenseQuery(license_id=license_id), now)
        return found[0] if found else None

    def sites(self) -> list[SiteSummary]:
        with self.store.read() as tx:
            return tx.site_summaries()

    def audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        license_id: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[AuditEvent]:
        """Events matching every filter given, newest first."""
        _paging(limit, offset, AUDIT_MAX)
        q = AuditQuery(actor, action, license_id, since, until, limit, offset)
        with self.store.read() as tx:
            events, total = tx.query_audit(q)
        return Page(events, total, offset, limit)
