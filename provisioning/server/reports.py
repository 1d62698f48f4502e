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
from ..services.device_requests import Verified
from ..services.usage import ReturnHeld, SeatFreedAlready
from .api_models import (
    COMMON_ERRORS,
    ReceiptSettled,
    ReceiptTaken,
    SignedMessage,
    error_responses,
)
from .common import client_host, now

REPORTS = error_responses(400, 401, 403, 404, 409, *COMMON_ERRORS)
RECEIPTS: dict[int | str, dict[str, object]] = {
    **REPORTS,
    200: {"model": ReceiptTaken, "description": "HQ took the receipt."},
    404: {
        "model": ReceiptSettled,
        "description": "No such activation; `activation_not_found` with `ack`: its seat "
        "was freed by hand, nothing is left to free.",
    },
    409: {
        "model": ReceiptSettled,
        "description": "`conflict` with `ack`: the activation was returned already (this "
        "receipt or another); `return_limit_reached`, without: the plan's limit.",
    },
}


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

    @app.post("/v1/receipt", tags=["device"], responses=RECEIPTS)
    def receipt(body: SignedMessage, actor: DeviceActor) -> JSONResponse:
        """A return receipt (`fieldpass return`): frees the seat (at once for a TPM-bound
        device, else after the expiry and grace of every file issued to it). The answers
        that tell the device its receipt is settled (200; 409 `conflict`: returned
        already; 404 `activation_not_found`: the seat was freed by hand) carry `ack`, HQ's
        signed acknowledgement of this very receipt: the device drops its copy only on
        that (docs/wire-format.md §9)."""
        data = base64.b64decode(body.request)
        verified = hq.device.verify(data, "receipt", live=False)
        try:
            returned = hq.usage.accept_verified_receipt(verified, data, now(), "http", actor)
        except (ReturnHeld, SeatFreedAlready) as e:  # settled: nothing left to free
            doc = {"error": {"code": e.code, "message": e.message}, "ack": _ack(hq, verified, data)}
            return JSONResponse(doc, status_code=e.http_status)
        rec = returned.record
        return JSONResponse(
            {
                "activation_id": rec.activation_id,
                "freed": returned.freed,
                "frees_at": rec.frees_at,
                "ack": _ack(hq, verified, data),
            }
        )


def _ack(hq: HQ, verified: Verified, receipt: bytes) -> str:
    token = hq.usage.receipt_acknowledgement(verified, receipt, now())
    return base64.b64encode(token).decode("ascii")
