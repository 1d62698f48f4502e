"""The console's license pages: the list (filters by plan, status, site and expiry;
seats as used/limit; sorted and paged), a new license (its key shown once, on the page
that answers the form), one license with its devices, and its actions: suspend,
reinstate, revoke (after a confirmation naming what stops working), its own seat
limit, and a field bundle of its devices.

Every rule is the services'; this module reads the request, calls them, and renders.
"""

import re

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ...errors import HQError, InvalidRequest
from ...models import EntitlementRow
from ...services import HQ, license_status
from ...services.usage_view import UsageView
from ...services.verdicts import VERDICTS
from ...storage.views import LICENSE_SORTS, LICENSE_STATUSES, LicenseSummary
from ...units import parse_date
from ..common import now
from .render import download, filters, listing, redirect, refused, render
from .session import PATH, Form, Op
from .sites import BUNDLE_TYPE, field_bundle

PAGE = 50
DEVICES_PAGE = 100
LICENSE_ID = re.compile(r"lic_[0-9a-f]{20}")


def _entitlements(text: str) -> list[EntitlementRow]:
    """``welding, vision:2027-06-30``: features, each with an optional expiry date."""
    found = []
    for part in text.split(","):
        feature, sep, date = part.strip().partition(":")
        if feature:
            try:
                found.append(EntitlementRow(feature, parse_date(date) if sep else None))
            except ValueError as e:
                raise InvalidRequest(str(e)) from None
    return found


def add_routes(app: FastAPI, hq: HQ) -> None:
    usage_view = UsageView(hq.store, hq.usage)

    def back(license_id: str) -> str:
        return f"{PATH}/licenses/{license_id}"

    def summary_of(license_id: str) -> LicenseSummary | None:
        if not LICENSE_ID.fullmatch(license_id):
            return None
        return hq.fleet.license_summary(license_id, now())

    def not_found(request: Request, op: Op) -> Response:
        return render(request, "error.html", http_status=404, op=op, message="no such license")

    @app.get(PATH + "/licenses", include_in_schema=False)
    def licenses(request: Request, op: Op) -> Response:
        sort, desc, offset = listing(request, LICENSE_SORTS, "created")
        chosen, shown = filters(request, hq, ("plan", "site"))
        status = request.query_params.get("status")
        page = hq.fleet.licenses(
            now(),
            status=status if status in LICENSE_STATUSES else None,
            sort=sort,
            descending=desc,
            limit=PAGE,
            offset=offset,
            **chosen,
        )
        return render(
            request,
            "licenses.html",
            op=op,
            page=page,
            statuses=LICENSE_STATUSES,
            sort=sort,
            desc=desc,
            nav="licenses",
            **shown,
        )

    @app.get(PATH + "/licenses/new", include_in_schema=False)
    def new_license(request: Request, op: Op) -> Response:
        return render(request, "license_new.html", op=op, plans=hq.list_plans(), nav="licenses")

    @app.post(PATH + "/licenses/new", include_in_schema=False)
    def create_license(request: Request, op: Op, form: Form) -> Response:
        try:
            expires = form.get("expires", "").strip()
            lic = hq.create_license(
                form.get("plan", ""),
                _entitlements(form.get("entitlements", "")),
                parse_date(expires) if expires else None,
                now(),
                op.actor,
            )
        except ValueError as e:
            return refused(request, op, InvalidRequest(str(e)), PATH + "/licenses/new")
        except HQError as e:
            return refused(request, op, e, PATH + "/licenses/new")
        # The one time the key is shown: on this answer, never stored in the browser
        # (the page is no-store) and never on any other page.
        return render(request, "license_created.html", op=op, lic=lic, nav="licenses")

    @app.get(PATH + "/licenses/{license_id}", include_in_schema=False)
    def license_page(request: Request, op: Op, license_id: str) -> Response:
        summary = summary_of(license_id)
        if summary is None:
            return not_found(request, op)
        sort, desc, offset = listing(request, {"expires", "seen", "site", "serial"}, "expires")
        everything = request.query_params.get("all") == "1"
        devices = hq.fleet.activations(
            now(),
            license_id=license_id,
            live=not everything,
            sort=sort,
            descending=desc,
            limit=DEVICES_PAGE,
            offset=offset,
        )
        plan = next(p for p in hq.list_plans() if p.name == summary.license.plan)
        t = now()
        reports = usage_view.last_reports([a.id for a in hq.list_activations(license_id)])
        return render(
            request,
            "license.html",
            op=op,
            s=summary,
            lic=summary.license,
            plan=plan,
            status=license_status(summary.license, now()),
            devices=devices,
            reports=reports,
            last_report=max(reports.values(), key=lambda r: (r.received_at, r.seq), default=None),
            terms=usage_view.terms([plan.name])[0],
            returns=usage_view.returns(license_id, t),
            everything=everything,
            sort=sort,
            desc=desc,
            verdicts=VERDICTS,
            now=now(),
            nav="licenses",
        )

    def _act(request: Request, op: Op, license_id: str, action: str, done: str) -> Response:
        try:
            hq.set_status(license_id, action, now(), op.actor)
        except HQError as e:
            return refused(request, op, e, back(license_id))
        return redirect(back(license_id), done)

    @app.post(PATH + "/licenses/{license_id}/suspend", include_in_schema=False)
    def suspend(request: Request, op: Op, _: Form, license_id: str) -> Response:
        return _act(request, op, license_id, "suspend", "suspended")

    @app.post(PATH + "/licenses/{license_id}/reinstate", include_in_schema=False)
    def reinstate(request: Request, op: Op, _: Form, license_id: str) -> Response:
        return _act(request, op, license_id, "reinstate", "reinstated")

    @app.get(PATH + "/licenses/{license_id}/revoke", include_in_schema=False)
    def revoke_confirm(request: Request, op: Op, license_id: str) -> Response:
        summary = summary_of(license_id)
        if summary is None:
            return not_found(request, op)
        live = hq.fleet.activations(now(), license_id=license_id)
        sites = sorted({d.row.site for d in live.items if d.row.site})
        return render(
            request,
            "revoke.html",
            op=op,
            lic=summary.license,
            live=live.total,
            sites=sites,
            nav="licenses",
        )

    @app.post(PATH + "/licenses/{license_id}/revoke", include_in_schema=False)
    def revoke(request: Request, op: Op, _: Form, license_id: str) -> Response:
        return _act(request, op, license_id, "revoke", "revoked")

    @app.post(PATH + "/licenses/{license_id}/seats", include_in_schema=False)
    def seats(request: Request, op: Op, form: Form, license_id: str) -> Response:
        text = form.get("seats", "").strip()
        try:
            if text != "plan" and not text.isdigit():
                raise InvalidRequest("seats: a number, or the plan's")
            own = None if text == "plan" else int(text)
            hq.set_license_seats(license_id, own, now(), op.actor)
        except HQError as e:
            return refused(request, op, e, back(license_id))
        return redirect(back(license_id), "seats")

    @app.post(PATH + "/licenses/{license_id}/bundle", include_in_schema=False)
    def license_bundle(request: Request, op: Op, _: Form, license_id: str) -> Response:
        if not LICENSE_ID.fullmatch(license_id):
            return not_found(request, op)
        try:
            data = field_bundle(hq, op.actor, now(), license_id=license_id)
        except HQError as e:
            return refused(request, op, e, back(license_id))
        return download(data, f"{license_id}.bundle", BUNDLE_TYPE)
