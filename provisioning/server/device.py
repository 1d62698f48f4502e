"""The device endpoints of the HQ HTTP API: activate, renew (machine-file), validate,
deactivate, the public keys, and ``/healthz``.

A device authenticates with its license key in the JSON body (never in a URL, so never
in an access log). These are the hot path (a fleet renewing at once): the actor
dependency is ``async`` and each route returns a ``JSONResponse`` itself, so a request
costs one hop to the thread pool (the database call) instead of three (dependency,
endpoint, response serialisation); docs/performance.md has the figures.

Routes parse and answer; the rules are the services'. Nothing here logs a body.
"""

import base64
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from agent.wire import armor

from .. import __version__, documents
from ..models import Actor
from ..services import HQ, Issued
from .api_models import (
    COMMON_ERRORS,
    ActivateRequest,
    DeactivateRequest,
    MachineFileRequest,
    ValidateRequest,
    error_responses,
)
from .common import client_host, now

DEVICE = error_responses(400, 403, 404, 409, *COMMON_ERRORS)


async def _device(request: Request) -> Actor:  # async: no thread-pool hop
    return Actor("device", client_host(request))


DeviceActor = Annotated[Actor, Depends(_device)]


def _issued(i: Issued) -> dict[str, Any]:
    doc = documents.issued_doc(i, None)
    doc.pop("file")
    doc["machine_file"] = armor.armor(i.machine_file, armor.MACHINE_FILE)
    return doc


def add_routes(app: FastAPI, hq: HQ) -> None:
    """Add these routes to ``app``, over ``hq``."""

    @app.post("/v1/activate", status_code=201, tags=["device"], responses=DEVICE)
    def activate(body: ActivateRequest, actor: DeviceActor) -> JSONResponse:
        """Consume a seat (or reuse this device's) and return a machine file."""
        issued = hq.activate(body.license_key, body.fingerprint, now(), actor)
        return JSONResponse(_issued(issued), status_code=201)

    @app.post("/v1/machine-file", tags=["device"], responses=DEVICE)
    def machine_file(body: MachineFileRequest, actor: DeviceActor) -> JSONResponse:
        """Renew without a seat; an optional TTL up to the plan's offline TTL."""
        issued = hq.renew(
            now(),
            actor,
            license_key=body.license_key,
            fingerprint=body.fingerprint,
            activation_id=body.activation_id,
            ttl_s=body.ttl_s,
        )
        return JSONResponse(_issued(issued))

    @app.post("/v1/validate", tags=["device"], responses=DEVICE)
    def validate(body: ValidateRequest) -> JSONResponse:
        """The license's status for this device and an HQ-signed current time."""
        v = hq.validate(body.license_key, body.fingerprint, body.nonce, now())
        if v.status != "active":
            code = f"license_{v.status}"
        elif v.activation is None:
            code = "activation_not_found"
        else:
            code = "valid"
        doc = {
            "valid": code == "valid",
            "code": code,
            "license_id": v.license_id,
            "status": v.status,
            "license_expires_at": v.license_expires_at,
            "activation_id": v.activation.id if v.activation else None,
            "serial": v.activation.serial if v.activation else None,
            "expires_at": v.activation.last_expires_at if v.activation else None,
            "time": v.time,
            "signed_time": base64.b64encode(v.signed_time).decode("ascii"),
        }
        return JSONResponse(doc)

    @app.post("/v1/deactivate", tags=["device"], responses=DEVICE)
    def deactivate(body: DeactivateRequest, actor: DeviceActor) -> JSONResponse:
        """Free this device's seat."""
        act = hq.deactivate(
            now(),
            actor,
            license_key=body.license_key,
            fingerprint=body.fingerprint,
            activation_id=body.activation_id,
        )
        return JSONResponse(documents.activation_doc(act))

    @app.get("/v1/keys", tags=["device"], responses=error_responses(503))
    def keys() -> dict[str, Any]:
        """The public signing keys by id, and the keyring file text."""
        infos = hq.list_keys()
        return {
            "keys": [documents.key_doc(k) for k in infos],
            "keyring": hq.keyring().dumps() if infos else None,
        }

    @app.get("/healthz", tags=["device"], responses=error_responses(503))
    def healthz() -> dict[str, Any]:
        hq.list_plans()
        return {"status": "ok", "version": __version__}
