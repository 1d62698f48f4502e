"""The console's device pages: every activation of the fleet (filters by license, site,
plan and expiry; sorted and paged: the list that renders 10,000 devices a page at a
time), and a device's actions: its machine file (a download, for an air-gapped
device), deactivation (after a confirmation), leaving its site.

Every rule is the services'; this module reads the request, calls them, and renders.
"""

import re

from fastapi import FastAPI, Request
from fastapi.responses import Response

from agent.wire import armor

from ...errors import HQError
from ...services import HQ
from ...services.verdicts import VERDICTS
from ...storage.views import ACTIVATION_SORTS
from ..common import now
from .render import download, filters, listing, redirect, refused, render
from .session import PATH, Form, Op
from .sites import site_path
from .usage import last_reports

PAGE = 100
ACTIVATION_ID = re.compile(r"act_[0-9a-f]{20}")


def add_routes(app: FastAPI, hq: HQ) -> None:
    def license_path(license_id: str) -> str:
        return f"{PATH}/licenses/{license_id}"

    @app.get(PATH + "/activations", include_in_schema=False)
    def activations(request: Request, op: Op) -> Response:
        sort, desc, offset = listing(request, ACTIVATION_SORTS, "expires")
        chosen, shown = filters(request, hq, ("license_id", "plan", "site"))
        page = hq.fleet.activations(
            now(), sort=sort, descending=desc, limit=PAGE, offset=offset, **chosen
        )
        return render(
            request,
            "activations.html",
            op=op,
            devices=page,
            reports=last_reports(hq, page),
            sort=sort,
            desc=desc,
            verdicts=VERDICTS,
            nav="activations",
            **shown,
        )

    def _activation(request: Request, op: Op, activation_id: str) -> Response | None:
        if not ACTIVATION_ID.fullmatch(activation_id):
            return render(request, "error.html", http_status=404, op=op, message="no such device")
        return None

    @app.post(PATH + "/activations/{activation_id}/machine-file", include_in_schema=False)
    def machine_file(request: Request, op: Op, _: Form, activation_id: str) -> Response:
        bad = _activation(request, op, activation_id)
        if bad is not None:
            return bad
        try:
            issued = hq.renew(now(), op.actor, activation_id=activation_id)
        except HQError as e:
            return refused(request, op, e, PATH + "/activations")
        text = armor.armor(issued.machine_file, armor.MACHINE_FILE)
        return download(text.encode("ascii"), f"{activation_id}.lic", "text/plain")

    @app.get(PATH + "/activations/{activation_id}/deactivate", include_in_schema=False)
    def deactivate_confirm(request: Request, op: Op, activation_id: str) -> Response:
        bad = _activation(request, op, activation_id)
        if bad is not None:
            return bad
        try:
            act = hq.get_activation(activation_id)
        except HQError as e:
            return refused(request, op, e, PATH + "/activations")
        return render(request, "deactivate.html", op=op, act=act, nav="activations")

    @app.post(PATH + "/activations/{activation_id}/deactivate", include_in_schema=False)
    def deactivate(request: Request, op: Op, _: Form, activation_id: str) -> Response:
        bad = _activation(request, op, activation_id)
        if bad is not None:
            return bad
        try:
            act = hq.deactivate(now(), op.actor, activation_id=activation_id)
        except HQError as e:
            return refused(request, op, e, PATH + "/activations")
        return redirect(license_path(act.license_id), "deactivated")

    @app.post(PATH + "/activations/{activation_id}/leave-site", include_in_schema=False)
    def leave_site(request: Request, op: Op, _: Form, activation_id: str) -> Response:
        bad = _activation(request, op, activation_id)
        if bad is not None:
            return bad
        try:
            site = hq.remove_from_site(activation_id, now(), op.actor)
        except HQError as e:
            return refused(request, op, e, PATH + "/sites")
        return redirect(site_path(site), "site_removed")
