"""``POST /v1/status``: the device's signed status (docs/wire-format.md section 9), sent
by agents after 0.1.0 over HTTP after an install and when their daemon connects. HQ
records the contact (when, how, the agent) and the device key a status registers with
its proof; it changes no license. The route parses and answers; the rule is
``DeviceRequests.status``. Nothing here logs a body.
"""

import base64

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import Field

from agent.wire import device_msg

from ..services import HQ
from .api_models import BASE64, COMMON_ERRORS, Strict, error_responses
from .common import now
from .device import DeviceActor


class StatusRequest(Strict):
    request: str = Field(
        max_length=4 * ((device_msg.MAX_MESSAGE_BYTES + 2) // 3),
        pattern=BASE64,
        description="The device's status message signed by its own key over a challenge "
        "of POST /v1/challenge, base64.",
    )


STATUS_ERRORS = error_responses(400, 401, 403, 404, 409, *COMMON_ERRORS)


def add_routes(app: FastAPI, hq: HQ) -> None:
    """Add ``POST /v1/status`` to ``app``, over ``hq`` (called by ``device.add_routes``)."""

    @app.post("/v1/status", tags=["device"], responses=STATUS_ERRORS)
    def status(body: StatusRequest, actor: DeviceActor) -> JSONResponse:
        """Record the device's signed status: when it was last heard from, and how."""
        verified = hq.device.status(base64.b64decode(body.request), now(), actor)
        act = verified.activation
        return JSONResponse({"recorded": True, "activation_id": act.id})
