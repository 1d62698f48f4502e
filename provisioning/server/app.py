"""The HQ HTTP API's app: the routes (``device``, ``admin``, ``reports``, ``health``,
``fleet``, the ``console`` and the offline ``docs``) over one
``HQ``, reading JSON as ``routing`` does, the error handlers, the request-body
middleware, and an OpenAPI document that lists, on every operation, the errors any
request may get before its route runs.

``create_app`` builds it; ``app_from_env`` is the factory uvicorn's workers call. No
path is redirected (a trailing slash is a 404, never a redirect built from ``Host``).
"""

import logging
import os
import traceback
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..services import HQ
from . import admin, console, device, docs, fleet, health, reports
from .errors import error_response, install_error_handlers
from .headers import BrowserHeaders
from .limits import MAX_BODY_BYTES, Limits, process_limits
from .middleware import RequestBody
from .routing import JsonRoute

HOME_ENV = "FIELDPASS_HQ_HOME"

# What any request may get, whatever its route: from the connection (``protocol``), the
# body's middleware, or the server.
CONNECTION_ERRORS = {
    400: "A malformed HTTP request, malformed JSON, or a body that is not UTF-8.",
    408: "The request's head or body did not arrive in time (serve --header-timeout, "
    "--body-timeout).",
    413: f"The body is larger than {MAX_BODY_BYTES} bytes.",
    415: "The body is not application/json (charset utf-8).",
    431: "The request's head (request line and headers) is too large.",
    503: "The server has too many connections, HQ has no signing key, or its storage failed.",
}

log = logging.getLogger("uvicorn.error")


class _App(FastAPI):
    def openapi(self) -> dict[str, Any]:
        schema = super().openapi()
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.setdefault("responses", {})
                for status, what in CONNECTION_ERRORS.items():
                    responses.setdefault(str(status), {"description": what, "content": error})
        return schema


def create_app(home: Path, *, database: str | None = None, limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits()
    hq = HQ(home, database=database)
    app = _App(
        title="Fieldpass HQ",
        version=__version__,
        description="Activations, renewals and validation for Fieldpass devices; admin API.",
        redirect_slashes=False,
        docs_url=None,  # server/docs.py serves /docs from the package
        redoc_url=None,
    )
    app.state.hq = hq
    app.router.route_class = JsonRoute
    install_error_handlers(app)
    device.add_routes(app, hq)
    admin.add_routes(app, hq)
    reports.add_routes(app, hq)
    health.add_routes(app, hq)
    fleet.add_routes(app, hq)
    console.add_routes(app, hq)
    docs.add_routes(app)
    app.add_middleware(RequestBody, max_bytes=MAX_BODY_BYTES, timeout_s=limits.body_timeout_s)
    app.add_middleware(BrowserHeaders)
    return app


_OURS = (str(Path(__file__).parents[1]), str(Path(__file__).parents[2] / "agent"))


def _where(e: BaseException) -> str:
    """`` at FILE:LINE`` of the innermost frame, and of the innermost frame of this
    project's code when the raise was in a library's."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return ""
    places = [frames[-1]]
    ours = [f for f in frames if f.filename.startswith(_OURS)]
    if ours and ours[-1] is not frames[-1]:
        places.append(ours[-1])
    return " at " + ", from ".join(f"{Path(f.filename).name}:{f.lineno}" for f in places)


class OneLineErrors:
    """The outermost layer. An exception a route let through has had its answer (a 500
    with the error JSON, from the handlers); Starlette raises it again for the server to
    log, and uvicorn would log a traceback. Here it is one line naming the exception's
    type and where it was raised, never its text (which may hold data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:
            where = _where(e)
            log.error(
                "internal error (%s%s) in %s %s: please report it",
                type(e).__name__,
                where,
                scope.get("method"),
                scope.get("path"),
            )
            if not started:
                name = type(e).__name__
                await error_response(500, "internal_error", f"internal error ({name})", close=True)(
                    scope, receive, send
                )


def app_from_env() -> ASGIApp:
    """Factory for uvicorn workers: the home comes from $FIELDPASS_HQ_HOME, the bounds
    from ``limits.LIMITS_ENV``, the database as configured (``config.database``:
    $FIELDPASS_HQ_DATABASE first)."""
    return OneLineErrors(create_app(Path(os.environ[HOME_ENV]), limits=process_limits()))
