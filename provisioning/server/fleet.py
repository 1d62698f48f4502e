"""The fleet's read API (what the console shows, for scripts): activations and licenses
filtered and paged, the overview's figures, sites, the audit log filtered, the usage
devices reported (per device, the metered entitlements, the regressions; a license's
returns); and the
changes to what a plan or a license grants (``PATCH /v1/plans/{name}``, ``PUT
/v1/licenses/{id}/seats``).

Every route needs an admin bearer token (``admin.AdminActor``). The views read only:
unlike ``field export``, nothing here renews a file. A list answers a JSON array (as
before paging existed); ``limit``/``offset`` choose a page, ``X-Total-Count`` says how
many match in all and ``Link: <...>; rel="next"`` where the next page is (a relative
URL, never built from ``Host``). Every time is Unix seconds and, beside it, ISO 8601
(``NAME_iso``). Routes parse and answer; the rules are the services'.
"""

import re
import urllib.parse
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, Response
from fastapi import Path as PathParam

from .. import documents
from ..errors import InvalidRequest
from ..services import HQ
from ..services.fleet import AUDIT_MAX, DEFAULT_QUIET_DAYS, MAX_PAGE, Page
from ..services.terms import PlanChange
from ..services.usage_view import COUNTER_SORT, USAGE_SORTS, UsageView, page_of
from ..storage.views import ACTIVATION_SORTS, LICENSE_SORTS, LICENSE_STATUSES
from ..units import MAX_DURATION_S, parse_duration
from .admin import ADMIN, AdminActor, LicenseId, LicenseIdQuery
from .api_models import ACTIVATION_ID, NAME, LicenseSeats, PlanUpdate
from .common import now

DURATION = r"^[0-9]{1,9}[smhdw]?$"


def _choice(names: Any) -> str:
    return "^(" + "|".join(sorted(names)) + ")$"


Within = Annotated[
    str | None,
    Query(
        pattern=DURATION,
        description="Only those whose file expires within this time from now (30d, 12h, "
        "3600s...; 0: only files already expired, beyond 100 years: every file); expired files "
        "included.",
    ),
]
Limit = Annotated[int | None, Query(ge=1, le=MAX_PAGE, description="A page of this many.")]
Offset = Annotated[int, Query(ge=0, le=10**9, description="Skip this many first.")]
Name = Annotated[str | None, Query(pattern=NAME)]
ActivationIdQuery = Annotated[str | None, Query(pattern=ACTIVATION_ID)]
UnixTime = Annotated[int | None, Query(ge=0, le=(1 << 53) - 1)]
USAGE_SORT = "^(" + "|".join(USAGE_SORTS) + "|" + COUNTER_SORT + "[A-Za-z0-9_.-]{1,64})$"
PlanName = Annotated[str, PathParam(pattern=NAME)]


def _within(text: str | None) -> int | None:
    """Seconds of a duration the pattern let through: 0 is files already expired, more
    than 100 years is every file (what a client asking so far ahead means)."""
    if text is None:
        return None
    try:
        return parse_duration(text, allow_zero=True)
    except ValueError:
        if re.fullmatch(DURATION, text) is None:  # pragma: no cover - the Query's pattern
            raise InvalidRequest(f"expiring_within: {text!r} is not a duration") from None
        return MAX_DURATION_S


def _paged(request: Request, response: Response, page: Page[Any]) -> None:
    response.headers["X-Total-Count"] = str(page.total)
    if page.next_offset is not None:
        params = dict(request.query_params)
        params["offset"] = str(page.next_offset)
        query = urllib.parse.urlencode(params)
        response.headers["Link"] = f'<{request.url.path}?{query}>; rel="next"'


def _usage_doc(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "first_at_iso": documents.iso(row["first_at"]),
            "last_at_iso": documents.iso(row["last_at"])}  # fmt: skip


def add_routes(app: FastAPI, hq: HQ) -> None:
    """Add these routes to ``app``, over ``hq``."""
    usage_view = UsageView(hq.store, hq.usage)

    @app.get("/v1/activations", tags=["fleet"], responses=ADMIN)
    def activations(
        request: Request,
        response: Response,
        _: AdminActor,
        license_id: LicenseIdQuery = None,
        site: Name = None,
        plan: Name = None,
        expiring_within: Within = None,
        include_deactivated: bool = False,
        sort: Annotated[str, Query(pattern=_choice(ACTIVATION_SORTS))] = "expires",
        order: Annotated[str, Query(pattern="^(asc|desc)$")] = "asc",
        limit: Limit = None,
        offset: Offset = 0,
    ) -> list[dict[str, Any]]:
        """Activations (live ones unless `include_deactivated`) matching every filter,
        each with its plan, site and `verdict` as HQ last heard it (`valid`, `warning`,
        `grace`, `expired`, `revoked`, `unknown`). Without `limit`, all of them."""
        page = hq.fleet.activations(
            now(),
            license_id=license_id,
            site=site,
            plan=plan,
            expiring_within_s=_within(expiring_within),
            live=not include_deactivated,
            sort=sort,
            descending=order == "desc",
            limit=limit,
            offset=offset,
        )
        _paged(request, response, page)
        return [documents.device_doc(d) for d in page.items]

    @app.get("/v1/licenses", tags=["admin"], responses=ADMIN)
    def licenses(
        request: Request,
        response: Response,
        _: AdminActor,
        plan: Name = None,
        status: Annotated[str | None, Query(pattern=_choice(LICENSE_STATUSES))] = None,
        site: Name = None,
        expiring_within: Within = None,
        sort: Annotated[str, Query(pattern=_choice(LICENSE_SORTS))] = "created",
        order: Annotated[str, Query(pattern="^(asc|desc)$")] = "asc",
        limit: Limit = None,
        offset: Offset = 0,
    ) -> list[dict[str, Any]]:
        """Licenses (never their keys) matching every filter, with `seats_used` of
        `seats_limit` (their own limit, `seats_own`, else their plan's) and the earliest
        expiry of their live devices' files (`first_file_expires_at`). `site`: with a
        live device there; `expiring_within`: with a live device whose file expires
        within that time."""
        t = now()
        page = hq.fleet.licenses(
            t,
            plan=plan,
            status=status,
            site=site,
            expiring_within_s=_within(expiring_within),
            sort=sort,
            descending=order == "desc",
            limit=limit,
            offset=offset,
        )
        _paged(request, response, page)
        return [documents.license_summary_doc(s, t) for s in page.items]

    @app.get("/v1/fleet/overview", tags=["fleet"], responses=ADMIN)
    def overview(
        _: AdminActor,
        quiet_days: Annotated[int, Query(ge=1, le=36500)] = DEFAULT_QUIET_DAYS,
    ) -> dict[str, Any]:
        """The console's overview: live devices by verdict as HQ last heard it, files
        expiring per week (52 weeks from this week's Monday, UTC), devices not heard
        from in `quiet_days`, the newest audit events."""
        return documents.overview_doc(hq.fleet.overview(now(), quiet_days=quiet_days))

    @app.get("/v1/sites", tags=["fleet"], responses=ADMIN)
    def sites(_: AdminActor) -> list[dict[str, Any]]:
        """Every site, its live devices, and the earliest expiry of their files."""
        return [documents.site_doc(s) for s in hq.fleet.sites()]

    @app.get("/v1/audit", tags=["admin"], responses=ADMIN)
    def audit(
        request: Request,
        response: Response,
        _: AdminActor,
        limit: Annotated[int, Query(ge=1, le=AUDIT_MAX)] = 100,
        license_id: LicenseIdQuery = None,
        actor: Annotated[str | None, Query(max_length=200)] = None,
        action: Annotated[str | None, Query(pattern=NAME)] = None,
        since: Annotated[int | None, Query(ge=0, le=(1 << 53) - 1)] = None,
        until: Annotated[int | None, Query(ge=0, le=(1 << 53) - 1)] = None,
        offset: Offset = 0,
    ) -> list[dict[str, Any]]:
        """The newest `limit` events matching every filter (after skipping `offset`
        newer ones), oldest first. `actor`: as recorded (`cli:alice`) or the name after
        its prefix (`alice`); `since`/`until`: Unix seconds, inclusive."""
        page = hq.fleet.audit(
            actor=actor,
            action=action,
            license_id=license_id,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
        )
        _paged(request, response, page)
        return [documents.audit_doc(e) for e in reversed(page.items)]

    @app.patch("/v1/plans/{name}", tags=["admin"], responses=ADMIN)
    def plan_update(name: PlanName, body: PlanUpdate, actor: AdminActor) -> dict[str, Any]:
        """Change a plan's seats, offline TTL, grace or warning window (audited as
        `plan_update`); a field left out stays, `warn_s: null` is a third of each
        file's TTL. Files already issued keep their terms until their next renewal;
        fewer seats than a license of the plan uses is 409."""
        given = body.model_fields_set
        change = PlanChange(
            seats=body.seats,
            offline_ttl_s=body.offline_ttl_s,
            grace_s=body.grace_s,
            warn_s=body.warn_s,
            warn_default="warn_s" in given and body.warn_s is None,
        )
        return documents.plan_doc(hq.update_plan(name, change, now(), actor))

    @app.put("/v1/licenses/{license_id}/seats", tags=["admin"], responses=ADMIN)
    def license_seats(
        license_id: LicenseId, body: LicenseSeats, actor: AdminActor
    ) -> dict[str, Any]:
        """Give a license its own seat limit (`seats`), or its plan's again (`null`);
        audited as `license_seats`. Below the seats in use is 409."""
        t = now()
        hq.set_license_seats(license_id, body.seats, t, actor)
        summary = hq.fleet.license_summary(license_id, t)
        assert summary is not None  # it was just changed
        return documents.license_summary_doc(summary, t)

    @app.get("/v1/usage", tags=["fleet"], responses=ADMIN)
    def usage(
        request: Request,
        response: Response,
        _: AdminActor,
        license_id: LicenseIdQuery = None,
        activation_id: ActivationIdQuery = None,
        since: UnixTime = None,
        until: UnixTime = None,
        sort: Annotated[str, Query(pattern=USAGE_SORT)] = "last",
        order: Annotated[str, Query(pattern="^(asc|desc)$")] = "asc",
        limit: Limit = None,
        offset: Offset = 0,
    ) -> list[dict[str, Any]]:
        """Usage per device from the reports received in [`since`, `until`) (Unix
        seconds): the rows of `fieldpass-hq usage show --json` (`counters`: the last
        report's in the period, `growth`: between its first and last), sorted by `sort`
        (`counter:NAME`: that counter's value). Without `limit`, all of them."""
        rows = usage_view.rows(license_id, activation_id, since, until)
        page = page_of(rows, sort, order == "desc", limit, offset)
        _paged(request, response, page)
        return [_usage_doc(r) for r in page.items]

    @app.get("/v1/usage/meters", tags=["fleet"], responses=ADMIN)
    def usage_meters(
        _: AdminActor,
        license_id: LicenseIdQuery = None,
        activation_id: ActivationIdQuery = None,
    ) -> list[dict[str, Any]]:
        """Each metered entitlement of the live devices chosen: its `limit`, the period
        HQ last signed for the device (`period_start`, `period_end`: null if none yet)
        and its `base`, the counter's last reported `value`, `used` and `left`; `ended`:
        the period is over and the device waits for a file of the next one."""
        t = now()
        found = []
        for m in usage_view.meters(t, license_id, activation_id):
            doc = {**m.__dict__, "used": m.used, "left": m.left}
            doc["period_start_iso"] = documents.iso(m.period_start)
            doc["period_end_iso"] = documents.iso(m.period_end)
            found.append(doc)
        return found

    @app.get("/v1/usage/regressions", tags=["fleet"], responses=ADMIN)
    def usage_regressions(
        request: Request,
        response: Response,
        _: AdminActor,
        license_id: LicenseIdQuery = None,
        activation_id: ActivationIdQuery = None,
        since: UnixTime = None,
        until: UnixTime = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        offset: Offset = 0,
    ) -> list[dict[str, Any]]:
        """Reports stored with a counter lower than HQ's last value (a device restored
        from an old state; audited `usage_regression`) in [`since`, `until`), newest
        first: the report's `seq` and the counters that were `lower`."""
        page = usage_view.regressions(license_id, activation_id, since, until, limit, offset)
        _paged(request, response, page)
        return [
            {"at": g.at, "at_iso": documents.iso(g.at), "license_id": g.license_id,
             "activation_id": g.activation_id, "seq": g.seq, "lower": list(g.lower)}
            for g in page.items
        ]  # fmt: skip

    @app.get("/v1/licenses/{license_id}/returns", tags=["admin"], responses=ADMIN)
    def license_returns(license_id: LicenseId, _: AdminActor) -> dict[str, Any]:
        """The license's returns (newest first): when the device gave it back, when
        and how the receipt reached HQ, when the seat frees (`frees_at`) or was freed
        (`freed_at`, null while taken) and the operator's `override`; and
        `returned_last_year` against the plan's `returns_per_year` (null: no limit;
        overridden returns do not count). Never the receipt itself."""
        r = usage_view.returns(license_id, now())
        items = []
        for s in r.items:
            rec = s.record
            times = {"returned_at": rec.returned_at, "received_at": rec.received_at,
                     "frees_at": rec.frees_at, "freed_at": s.freed_at}  # fmt: skip
            doc: dict[str, Any] = {"activation_id": rec.activation_id, "serial": rec.serial,
                                   "via": rec.via, "override": rec.override, **times}  # fmt: skip
            doc.update({f"{k}_iso": documents.iso(v) for k, v in times.items()})
            items.append(doc)
        return {
            "license_id": license_id,
            "returns": items,
            "returned_last_year": r.this_year,
            "returns_per_year": r.limit,
        }
