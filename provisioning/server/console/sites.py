"""The console's site pages: every site with its devices and their earliest expiry;
one site's devices, "make a field bundle for this site" (a download, the same as
``fieldpass-hq field export --site``), and a device taken off its site.

``field_bundle`` is the one way the console makes a bundle (for a site or a license):
the devices chosen by the fleet view, renewed and packed by ``field.bundle.export``
(audited as renewals). A bundle holds no secret (field/bundle.py).
"""

import urllib.parse

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ...errors import HQError
from ...field import bundle
from ...models import Actor, License
from ...services import HQ
from ...services.names import check_name
from ..common import now
from .render import download, listing, refused, render
from .session import PATH, Form, Op
from .usage import last_reports

DEVICES_PAGE = 100
BUNDLE_TYPE = "application/json"


def field_bundle(
    hq: HQ, actor: Actor, t: int, *, license_id: str | None = None, site: str | None = None
) -> bytes:
    """A field bundle of the live devices of a license or a site."""
    licenses: dict[str, License] = {}
    chosen = []
    for d in hq.fleet.activations(t, license_id=license_id, site=site).items:
        act = d.row.activation
        if act.license_id not in licenses:
            summary = hq.fleet.license_summary(act.license_id, t)
            assert summary is not None  # a foreign key: the license exists
            licenses[act.license_id] = summary.license
        chosen.append((act, licenses[act.license_id]))
    return bundle.to_bytes(bundle.export(hq, chosen, None, t, actor))


def site_path(site: str) -> str:
    return f"{PATH}/sites/{urllib.parse.quote(site, safe='')}"


def add_routes(app: FastAPI, hq: HQ) -> None:
    @app.get(PATH + "/sites", include_in_schema=False)
    def sites(request: Request, op: Op) -> Response:
        return render(request, "sites.html", op=op, sites=hq.fleet.sites(), now=now(), nav="sites")

    @app.get(PATH + "/sites/{site}", include_in_schema=False)
    def site_page(request: Request, op: Op, site: str) -> Response:
        try:
            check_name("a site name", site)
        except HQError as e:
            return refused(request, op, e, PATH + "/sites")
        sort, desc, offset = listing(request, {"expires", "seen", "license", "serial"}, "expires")
        devices = hq.fleet.activations(
            now(), site=site, sort=sort, descending=desc, limit=DEVICES_PAGE, offset=offset
        )
        return render(
            request,
            "site.html",
            op=op,
            site=site,
            here=site_path(site),
            devices=devices,
            reports=last_reports(hq, devices),
            sort=sort,
            desc=desc,
            now=now(),
            nav="sites",
        )

    @app.post(PATH + "/sites/{site}/bundle", include_in_schema=False)
    def site_bundle(request: Request, op: Op, _: Form, site: str) -> Response:
        try:
            check_name("a site name", site)
            data = field_bundle(hq, op.actor, now(), site=site)
        except HQError as e:
            return refused(request, op, e, site_path(site))
        return download(data, f"{site}.bundle", BUNDLE_TYPE)
