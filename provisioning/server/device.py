"""The device endpoints of the HQ HTTP API: challenge, activate, renew (machine-file),
validate, deactivate, the public keys, and ``/healthz``.

A device sends its license key once, to activate (in the JSON body: never in a URL, so
never in an access log); afterwards it signs every request with its own key over a
challenge (``request``, docs/wire-format.md section 9). The form of agents up to 0.1.0
(the license key in every body) is still answered, for devices that have no device key.
These are the hot path (a fleet renewing at once): the actor
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
from ..services import HQ, Contact, Issued, Validation
from ..services.swap import swap
from .api_models import (
    COMMON_ERRORS,
    ActivateRequest,
    ChallengeRequest,
    DeactivateRequest,
    MachineFileRequest,
    ValidateRequest,
    error_responses,
)
from .common import client_host, now

DEVICE = error_responses(400, 401, 403, 404, 409, *COMMON_ERRORS)
# What HQ records of a request in the form of agents up to 0.1.0: version-1 claims.
# unsigned: a device with a device key is refused in the request's own transaction
LEGACY = Contact(channel="http", agent_version="0.1.0", claims_format=1, unsigned=True)


async def _device(request: Request) -> Actor:  # async: no thread-pool hop
    return Actor("device", client_host(request))


DeviceActor = Annotated[Actor, Depends(_device)]


def _issued(i: Issued) -> dict[str, Any]:
    doc = documents.issued_doc(i, None)
    doc.pop("file")
    doc["machine_file"] = armor.armor(i.machine_file, armor.MACHINE_FILE)
    return doc


def _validation_doc(v: Validation) -> dict[str, Any]:
    if v.status != "active":
        code = f"license_{v.status}"
    elif v.activation is None or v.activation.deactivated_at is not None:
        code = "activation_not_found"
    else:
        code = "valid"
    live = v.activation if v.activation and v.activation.deactivated_at is None else None
    return {
        "valid": code == "valid",
        "code": code,
        "license_id": v.license_id,
        "status": v.status,
        "license_expires_at": v.license_expires_at,
        "activation_id": live.id if live else None,
        "serial": live.serial if live else None,
        "expires_at": live.last_expires_at if live else None,
        "time": v.time,
        "signed_time": base64.b64encode(v.signed_time).decode("ascii"),
    }


def _swapped(hq: HQ, body: ActivateRequest, actor: Actor) -> dict[str, Any]:
    """The old board's receipts taken, the new board activated (services/swap.py)."""
    assert body.request is not None
    fingerprint, contact = hq.device.activation_contact(
        body.license_key, base64.b64decode(body.request)
    )
    receipts = [base64.b64decode(r) for r in body.receipts]
    done = swap(hq.usage, body.license_key, fingerprint, contact, receipts, now(), "http", actor)
    doc = _issued(done.issued)
    doc["receipts"] = [t.doc() for t in done.receipts]
    return doc


def add_routes(app: FastAPI, hq: HQ) -> None:
    """Add these routes to ``app``, over ``hq``."""

    @app.post("/v1/challenge", tags=["device"], responses=error_responses(400, *COMMON_ERRORS))
    def challenge(body: ChallengeRequest) -> JSONResponse:
        """A single-use challenge (5 minutes) for the next signed device request."""
        return JSONResponse({"challenge": hq.device.challenge(now()), "expires_in": 300})

    @app.post("/v1/activate", status_code=201, tags=["device"], responses=DEVICE)
    def activate(body: ActivateRequest, actor: DeviceActor) -> JSONResponse:
        """Consume a seat (or reuse this device's) and return a machine file. With
        `receipts` (a mainboard swap a laptop relays): the old board's receipts first."""
        if body.receipts:
            assert body.request is not None
            return JSONResponse(_swapped(hq, body, actor), status_code=201)
        if body.request is not None:
            issued = hq.device.activate(
                body.license_key, base64.b64decode(body.request), now(), actor
            )
        else:
            assert body.fingerprint is not None
            issued = hq.activate(body.license_key, body.fingerprint, now(), actor, LEGACY)
        return JSONResponse(_issued(issued), status_code=201)

    @app.post("/v1/machine-file", tags=["device"], responses=DEVICE)
    def machine_file(body: MachineFileRequest, actor: DeviceActor) -> JSONResponse:
        """Renew without a seat; an optional TTL up to the plan's offline TTL."""
        signed = body.signed()
        if signed is not None:
            return JSONResponse(_issued(hq.device.renew(signed, now(), actor)))
        assert body.license_key is not None and body.fingerprint is not None
        issued = hq.renew(
            now(),
            actor,
            license_key=body.license_key,
            fingerprint=body.fingerprint,
            activation_id=body.activation_id,
            ttl_s=body.ttl_s,
            contact=LEGACY,
        )
        return JSONResponse(_issued(issued))

    @app.post("/v1/validate", tags=["device"], responses=DEVICE)
    def validate(body: ValidateRequest) -> JSONResponse:
        """The activation's status and an HQ-signed current time, bound to the nonce."""
        signed = body.signed()
        if signed is not None:
            return JSONResponse(_validation_doc(hq.device.validate(signed, now())))
        assert body.license_key is not None and body.fingerprint is not None
        hq.device.refuse_legacy(body.license_key, body.fingerprint)
        return JSONResponse(
            _validation_doc(hq.validate(body.license_key, body.fingerprint, body.nonce, now()))
        )

    @app.post("/v1/deactivate", tags=["device"], responses=DEVICE)
    def deactivate(body: DeactivateRequest, actor: DeviceActor) -> JSONResponse:
        """Free this device's seat."""
        signed = body.signed()
        if signed is not None:
            return JSONResponse(
                documents.activation_doc(hq.device.deactivate(signed, now(), actor))
            )
        assert body.license_key is not None and body.fingerprint is not None
        hq.device.refuse_legacy(body.license_key, body.fingerprint)
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

    from .status import add_routes as add_status_route  # imports this module

    add_status_route(app, hq)
