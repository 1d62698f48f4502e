"""The admin endpoints of the HQ HTTP API: plans, licenses (create, show, suspend,
reinstate, revoke), activations (deactivate), admin tokens (list, revoke). The lists
(licenses, activations, the audit log) are the fleet's read API, server/fleet.py.

Each needs a bearer token from ``fieldpass-hq tokens create`` that is neither expired
nor revoked; the token's name is the actor in the audit log. Tokens are created at the
command line only, on HQ's own host: a token cannot mint another. Routes parse and
answer; the rules are the services'. A license's key is returned once, by
``POST /v1/licenses``; nothing here logs a body.
"""

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .. import documents
from ..errors import Unauthorized
from ..models import Actor, EntitlementRow, Plan
from ..services import HQ
from .api_models import (
    ACTIVATION_ID,
    COMMON_ERRORS,
    LICENSE_ID,
    NAME,
    LicenseCreate,
    PlanCreate,
    error_responses,
)
from .common import client_host, now

ADMIN = error_responses(400, 401, 403, 404, 409, *COMMON_ERRORS)

_bearer = HTTPBearer(auto_error=False)


def _admin(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    if creds is None or creds.scheme.lower() != "bearer":
        raise Unauthorized("a bearer token is required")
    hq: HQ = request.app.state.hq
    name = hq.check_token(creds.credentials, now())
    return Actor(f"token:{name}", client_host(request))


AdminActor = Annotated[Actor, Depends(_admin)]
LicenseIdQuery = Annotated[str | None, Query(pattern=LICENSE_ID)]
LicenseId = Annotated[str, PathParam(pattern=LICENSE_ID)]
ActivationId = Annotated[str, PathParam(pattern=ACTIVATION_ID)]
TokenName = Annotated[str, PathParam(pattern=NAME)]


def add_routes(app: FastAPI, hq: HQ) -> None:
    """Add these routes to ``app``, over ``hq``."""

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

    @app.post("/v1/activations/{activation_id}/deactivate", tags=["admin"], responses=ADMIN)
    def admin_deactivate(activation_id: ActivationId, actor: AdminActor) -> dict[str, Any]:
        return documents.activation_doc(hq.deactivate(now(), actor, activation_id=activation_id))

    @app.get("/v1/tokens", tags=["admin"], responses=ADMIN)
    def tokens(_: AdminActor) -> list[dict[str, Any]]:
        """Every admin token by name, with `status` (active, expired or revoked) and its
        times; never a token itself."""
        t = now()
        return [documents.token_doc(info, t) for info in hq.list_tokens()]

    @app.delete("/v1/tokens/{name}", tags=["admin"], responses=ADMIN)
    def token_revoke(name: TokenName, actor: AdminActor) -> dict[str, Any]:
        """Revoke admin token `name` for good (audited as `token_revoke`): a request
        with it then gets 401. A token cannot revoke itself (409: use another token or
        `fieldpass-hq tokens revoke`); a token already revoked is 409, an unknown name
        404."""
        t = now()
        return documents.token_doc(hq.revoke_token(name, t, actor), t)
