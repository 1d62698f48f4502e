"""The console's first page: the fleet at a glance (``services.fleet.Fleet.overview``):
devices by verdict as HQ last heard it, files expiring per week over the next 52 weeks
(an SVG chart), devices not heard from in N days, recent audit events.

Reads only.
"""

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from ...services import HQ
from ...services.fleet import DEFAULT_QUIET_DAYS
from ...services.verdicts import VERDICTS
from ..common import now
from .charts import expiry_chart
from .render import number, render
from .session import PATH, Op


def add_routes(app: FastAPI, hq: HQ) -> None:
    @app.get(PATH, include_in_schema=False)
    def root() -> Response:
        return RedirectResponse(PATH + "/", status_code=303)

    @app.get(PATH + "/", include_in_schema=False)
    def overview(request: Request, op: Op) -> Response:
        quiet_days = number(request.query_params.get("quiet"), DEFAULT_QUIET_DAYS, 1, 3650)
        fig = hq.fleet.overview(now(), quiet_days=quiet_days)
        return render(
            request,
            "overview.html",
            op=op,
            fig=fig,
            verdicts=VERDICTS,
            chart=expiry_chart(fig.weeks),
            nav="overview",
        )
