"""ASGI middleware of the HQ HTTP API: ``RequestBody``, between the connection and every
route. It reads a request's body whole, within bounds, before any route (or JSON parser)
sees a byte of it, and refuses, closing the connection:

- a body over ``MAX_BODY_BYTES``: 413 (a declared ``Content-Length`` over it before a
  byte of the body is read);
- a body that is not whole within ``body_timeout_s`` of the end of the head: 408;
- a body in a media type the API document does not declare (it declares
  ``application/json``, optionally ``; charset=utf-8``; the console's forms under
  ``/console/`` are ``application/x-www-form-urlencoded``): 415 ``unsupported_media_type``;
  and one that is not text in UTF-8 (UTF-16 or UTF-32, a byte-order mark, NUL): 400;
- a body shorter than declared (the client closed the connection before its end):
  nothing runs and nothing answers, as there is no one left to read an answer.

Never logs or keeps a body beyond the request that sent it.
"""

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response
from .limits import BODY_TIMEOUT_S, MAX_BODY_BYTES

MEDIA_TYPE = "application/json"
CHARSET = "utf-8"
FORM_TYPE = "application/x-www-form-urlencoded"  # the console's forms, nowhere else
CONSOLE_PATH = "/console"


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _in_console(path: str) -> bool:
    return path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")


def media_type_accepted(value: bytes, path: str = "") -> bool:
    """``application/json`` (a console path: the form type), with no parameter but
    ``charset=utf-8`` (either case, spaces and quotes tolerated)."""
    kind, *params = value.decode("latin-1").split(";")
    if kind.strip().lower() != (FORM_TYPE if _in_console(path) else MEDIA_TYPE):
        return False
    for param in params:
        if not param.strip():
            continue
        name, _, charset = param.partition("=")
        if name.strip().lower() != "charset" or _unquote(charset).lower() != CHARSET:
            return False
    return True


def check_head(headers: list[tuple[bytes, bytes]], max_bytes: int, path: str = "") -> None:
    """Refuse, from the headers alone, a body too large or in another media type."""
    lengths = [v for n, v in headers if n == b"content-length"]
    for value in lengths:
        if not value.isdigit() or int(value) > max_bytes:
            raise Refused(413, "invalid_request", f"body larger than {max_bytes} bytes")
    has_body = any(n == b"transfer-encoding" for n, _ in headers) or any(
        int(v) > 0 for v in lengths
    )
    types = [v for n, v in headers if n == b"content-type"]
    if has_body and (len(types) != 1 or not media_type_accepted(types[0], path)):
        kind = FORM_TYPE if _in_console(path) else MEDIA_TYPE
        raise Refused(
            415,
            "unsupported_media_type",
            f"the body must be {kind} (charset {CHARSET}), in one Content-Type header",
        )


async def read_body(receive: Receive, max_bytes: int) -> bytes | None:
    """The whole body, or None when the client went away before its end."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: the body is not whole
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise Refused(413, "invalid_request", f"body larger than {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def check_text(body: bytes) -> None:
    """JSON text is UTF-8 with no byte-order mark (RFC 8259) and holds no NUL byte (which
    would also make ``json.loads`` take the bytes for UTF-16 or UTF-32)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        ok = False
    else:
        ok = not body.startswith(b"\xef\xbb\xbf") and b"\x00" not in body
    if not ok:
        raise Refused(400, "invalid_request", "the body is not JSON text in UTF-8")


class RequestBody:
    """Read, bound and check each request's body before the app sees it (module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_BODY_BYTES,
        timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_head(scope.get("headers", []), self.max_bytes, scope.get("path", ""))
            try:
                async with asyncio.timeout(self.timeout_s):
                    body = await read_body(receive, self.max_bytes)
            except TimeoutError:
                raise Refused(
                    408, "request_timeout", f"request body not received within {self.timeout_s} s"
                ) from None
            if body is None:
                return
            check_text(body)
        except Refused as e:
            await error_response(e.status, e.code, e.message, close=True)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
