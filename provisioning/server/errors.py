"""Every error of the HQ HTTP API as ``{"error": {"code", "message"}}``: HQ's refusals
with their stable code and status (``provisioning.errors``), request validation (400
for bad JSON, 422 for bad fields), Starlette's own (404, 405 with a whole ``Allow``),
and anything unexpected as a 500 that names the exception type only. ``error_body`` is
the same document as bytes, for the answers the connection itself gives (``protocol``).

A message never holds a request body, a license key or a traceback.
"""

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import HQError


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def error_response(status: int, code: str, message: str, *, close: bool = False) -> JSONResponse:
    """The error document; ``close``: and the connection is closed after it (a refusal
    before the whole body was read, so no unread byte is taken for the next request)."""
    headers = {"Connection": "close"} if close else None
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _allowed_methods(app: FastAPI, path: str) -> str:
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(path):
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HQError)
    async def hq_error(_: Request, exc: HQError) -> JSONResponse:
        return error_response(exc.http_status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_request", "the body is not valid JSON")
        where = [".".join(str(p) for p in e.get("loc", ())[1:]) or "body" for e in errors]
        return error_response(422, "invalid_request", "invalid fields: " + ", ".join(where[:10]))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        response = error_response(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods
            response.headers["Allow"] = _allowed_methods(request.app, request.url.path)
        return response

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal_error", f"internal error ({type(exc).__name__})")
