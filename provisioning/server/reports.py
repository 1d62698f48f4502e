"""What devices send HQ besides their requests: signed usage reports and return
receipts (docs/wire-format.md §9, issue 16). Each body is ``{"request": base64}`` of a
device message signed by the device's own key; the rules are services/usage.py's.
"""

import base64
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from ..models import Actor
from ..services import HQ
from .api_models import COMMON_ERRORS, SignedMessage, error_responses
from .common import client_host, now

REPORTS = error_responses(400, 401, 403, 404, 409, *COMMON_ERRORS)


async def _device(request: Request) -> Actor:
    return Actor("device", client_host(request))


DeviceActor = Annotated[Actor, Depends(_device)]


def add_routes(app: FastAPI, hq: HQ) -> None:
    @app.post("/v1/report", tags=["device"], responses=REPORTS)
    def report(body: SignedMessage, actor: DeviceActor) -> JSONResponse:
        """A usage report (cumulative counters, numbered): stored when newer than the
        last one accepted from the device; a replay or an older one is 409."""
        accepted = hq.usage.accept_report(base64.b64decode(body.request), now(), "http", actor)
        doc: dict[str, Any] = {
            "accepted": True,
            "seq": accepted.report.seq,
            "regression": accepted.regression,
        }
        return JSONResponse(doc)

    @app.post("/v1/receipt", tags=["device"], responses=REPORTS)
    def receipt(body: SignedMessage, actor: DeviceActor) -> JSONResponse:
        """A return receipt (`fieldpass return`): frees the seat (at once for a TPM-bound
        device, else after the expiry and grace of every file issued to it)."""
        returned = hq.usage.accept_receipt(base64.b64decode(body.request), now(), "http", actor)
        rec = returned.record
        return JSONResponse(
            {"activation_id": rec.activation_id, "freed": returned.freed, "frees_at": rec.frees_at}
        )
