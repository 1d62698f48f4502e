"""What HQ sends every browser page along with it (the console under ``/console/``,
the API documentation at ``/docs``): a strict Content-Security-Policy,
no framing, no sniffing, no referrer, and no caching of the console's pages.

``BrowserHeaders`` is an ASGI middleware that adds them by path; the API's own routes
(``/v1/...``) pass through untouched, at the cost of one prefix test. The console runs
no script at all (``script-src`` is absent, so ``default-src 'none'`` forbids every
one); the documentation runs only the bundled Swagger UI, from this server.
Nothing here reads or logs a request.
"""

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONSOLE_PREFIX = "/console"
DOCS_PREFIX = "/docs"

_COMMON = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
# The console: its own stylesheet and forms, nothing else; no script, no frame, no
# request to any other host.
CONSOLE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# Swagger UI: its bundle and our initializer from this server, the API document from
# this server (connect-src), its inline SVG icons (data:).
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


def _policy(path: str) -> tuple[str, bool] | None:
    """(CSP, no-store) for a browser page's path, None for the API's."""
    if path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/"):
        return CONSOLE_CSP, not path.startswith(CONSOLE_PREFIX + "/static/")
    if path == DOCS_PREFIX or path.startswith(DOCS_PREFIX + "/"):
        return DOCS_CSP, False
    return None


class BrowserHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy = _policy(scope["path"]) if scope["type"] == "http" else None
        if policy is None:
            await self.app(scope, receive, send)
            return
        csp, no_store = policy

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["content-security-policy"] = csp
                for name, value in _COMMON.items():
                    headers[name] = value
                if no_store:
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, with_headers)
