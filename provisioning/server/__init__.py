"""The HQ HTTP API (FastAPI, served by uvicorn) over the same database as the CLI.

Device endpoints authenticate with the license key in the JSON body (never in a URL, so
never in an access log); admin endpoints need a bearer token from
``fieldpass-hq tokens create``. Every error is ``{"error": {"code", "message"}}`` with a
stable code and the status of ``provisioning.errors``. The clock is read here.

Nothing here logs a request body.

The device endpoints are the hot path (a fleet renewing at once): their dependency is
``async`` and they return a ``JSONResponse`` themselves, so a request costs one hop to
the thread pool (the database call) instead of three (dependency, endpoint, response
serialisation); docs/performance.md has the figures.
"""

import base64
import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.wire import armor

from .. import __version__, documents
from ..errors import HQError, Unauthorized
from ..models import Actor, EntitlementRow, Plan
from ..services import HQ, Issued
from .api_models import (
    ACTIVATION_ID,
    LICENSE_ID,
    ActivateRequest,
    DeactivateRequest,
    LicenseCreate,
    MachineFileRequest,
    PlanCreate,
    ValidateRequest,
    error_responses,
)

MAX_BODY_BYTES = 16 * 1024
HOME_ENV = "FIELDPASS_HQ_HOME"


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 before the app reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error(413, "invalid_request", f"body larger than {self.max_bytes} bytes")
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await self._refuse(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


_bearer = HTTPBearer(auto_error=False)


async def _device(request: Request) -> Actor:  # async: no thread-pool hop
    return Actor("device", request.client.host if request.client else "unknown")


def _admin(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    if creds is None or creds.scheme.lower() != "bearer":
        raise Unauthorized("a bearer token is required")
    hq: HQ = request.app.state.hq
    name = hq.check_token(creds.credentials)
    return Actor(f"token:{name}", request.client.host if request.client else "unknown")


DeviceActor = Annotated[Actor, Depends(_device)]
AdminActor = Annotated[Actor, Depends(_admin)]
LicenseIdQuery = Annotated[str | None, Query(pattern=LICENSE_ID)]
LicenseId = Annotated[str, PathParam(pattern=LICENSE_ID)]
ActivationId = Annotated[str, PathParam(pattern=ACTIVATION_ID)]

# Every route may answer 413 (BodyLimit) and 422 (validation); 503 when HQ has no key or
# its storage fails.
COMMON = (413, 422, 503)
DEVICE = error_responses(400, 403, 404, 409, *COMMON)
ADMIN = error_responses(400, 401, 404, 409, *COMMON)


def _allowed_methods(app: FastAPI, path: str) -> str:
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(path):
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


def _issued(i: Issued) -> dict[str, Any]:
    doc = documents.issued_doc(i, None)
    doc.pop("file")
    doc["machine_file"] = armor.armor(i.machine_file, armor.MACHINE_FILE)
    return doc


def create_app(home: Path, *, database: str | None = None) -> FastAPI:
    hq = HQ(home, database=database)
    app = FastAPI(
        title="Fieldpass HQ",
        version=__version__,
        description="Activations, renewals and validation for Fieldpass devices; admin API.",
    )
    app.state.hq = hq

    @app.exception_handler(HQError)
    async def hq_error(_: Request, exc: HQError) -> JSONResponse:
        return _error(exc.http_status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "invalid_request", "the body is not valid JSON")
        where = [".".join(str(p) for p in e.get("loc", ())[1:]) or "body" for e in errors]
        return _error(422, "invalid_request", "invalid fields: " + ", ".join(where[:10]))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        response = _error(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods
            response.headers["Allow"] = _allowed_methods(request.app, request.url.path)
        return response

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal_error", f"internal error ({type(exc).__name__})")

    def now() -> int:
        return int(time.time())

    # -- device --------------------------------------------------------------------------
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

    # -- admin ---------------------------------------------------------------------------
    @app.get("/v1/plans", tags=["admin"], responses=ADMIN)
    def plans(_: AdminActor) -> list[dict[str, Any]]:
        return [documents.plan_doc(p) for p in hq.list_plans()]

    @app.post("/v1/plans", status_code=201, tags=["admin"], responses=ADMIN)
    def plan_create(body: PlanCreate, actor: AdminActor) -> dict[str, Any]:
        plan = Plan(
            body.name,
            body.product,
            body.offline_ttl_s,
            body.grace_s,
            body.seats,
            body.warn_s,
            now(),
        )
        return documents.plan_doc(hq.create_plan(plan, actor))

    @app.get("/v1/licenses", tags=["admin"], responses=ADMIN)
    def licenses(_: AdminActor) -> list[dict[str, Any]]:
        t = now()
        return [documents.license_doc(lic, t) for lic in hq.list_licenses()]

    @app.post("/v1/licenses", status_code=201, tags=["admin"], responses=ADMIN)
    def license_create(body: LicenseCreate, actor: AdminActor) -> dict[str, Any]:
        """Create a license; the response holds its key, the only time it is returned."""
        ents = [EntitlementRow(e.feature, e.expires_at) for e in body.entitlements]
        lic = hq.create_license(body.plan, ents, body.expires_at, now(), actor)
        return documents.license_doc(lic, lic.created_at, with_key=True)

    @app.get("/v1/licenses/{license_id}", tags=["admin"], responses=ADMIN)
    def license_show(license_id: LicenseId, _: AdminActor) -> dict[str, Any]:
        lic, acts = hq.get_license(license_id)
        doc = documents.license_doc(lic, now())
        doc["activations"] = [documents.activation_doc(a) for a in acts]
        return doc

    def _set_status(license_id: str, action: str, actor: Actor) -> dict[str, Any]:
        lic = hq.set_status(license_id, action, now(), actor)
        return {"id": lic.id, "status": lic.status, "updated_at": lic.updated_at}

    @app.post("/v1/licenses/{license_id}/suspend", tags=["admin"], responses=ADMIN)
    def suspend(license_id: LicenseId, actor: AdminActor) -> dict[str, Any]:
        return _set_status(license_id, "suspend", actor)

    @app.post("/v1/licenses/{license_id}/reinstate", tags=["admin"], responses=ADMIN)
    def reinstate(license_id: LicenseId, actor: AdminActor) -> dict[str, Any]:
        return _set_status(license_id, "reinstate", actor)

    @app.post("/v1/licenses/{license_id}/revoke", tags=["admin"], responses=ADMIN)
    def revoke(license_id: LicenseId, actor: AdminActor) -> dict[str, Any]:
        return _set_status(license_id, "revoke", actor)

    @app.get("/v1/activations", tags=["admin"], responses=ADMIN)
    def activations(
        _: AdminActor,
        license_id: LicenseIdQuery = None,
    ) -> list[dict[str, Any]]:
        return [documents.activation_doc(a) for a in hq.list_activations(license_id)]

    @app.post("/v1/activations/{activation_id}/deactivate", tags=["admin"], responses=ADMIN)
    def admin_deactivate(activation_id: ActivationId, actor: AdminActor) -> dict[str, Any]:
        return documents.activation_doc(hq.deactivate(now(), actor, activation_id=activation_id))

    @app.get("/v1/audit", tags=["admin"], responses=ADMIN)
    def audit(
        _: AdminActor,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        license_id: LicenseIdQuery = None,
    ) -> list[dict[str, Any]]:
        return [documents.audit_doc(e) for e in hq.audit(limit, license_id)]

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: the home comes from $FIELDPASS_HQ_HOME."""
    return create_app(Path(os.environ[HOME_ENV]))


def run(
    home: Path,
    host: str,
    port: int,
    tls_cert: str | None,
    tls_key: str | None,
    workers: int,
    as_json: bool,
    *,
    access_log: bool = True,
    forwarded_allow_ips: str | None = None,
) -> None:
    import uvicorn

    os.environ[HOME_ENV] = str(home)
    scheme = "https" if tls_cert else "http"
    if as_json:
        print(json.dumps({"url": f"{scheme}://{host}:{port}", "home": str(home)}), flush=True)
    uvicorn.run(
        "provisioning.server:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        access_log=access_log,
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level="info",
    )
