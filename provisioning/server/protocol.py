"""The HTTP/1.1 connection of the HQ server: uvicorn's httptools protocol with the bounds
uvicorn itself does not keep (``limits``). A request's head (request line and headers)
must arrive within ``header_timeout_s`` of the connection's opening, or of the request's
first byte on a kept-alive connection, and within ``MAX_HEAD_BYTES``; a process serves at
most ``max_connections`` connections. Beyond, the client gets the API's error JSON (408,
431, 503) and the connection is closed; a connection that sent nothing at all is closed
without an answer. A client that leaves its answers unread until they fill the
transport's buffer has ``body_timeout_s`` to read again, then its connection is dropped.
A request uvicorn cannot parse gets the error JSON too (400) in place of uvicorn's plain
text.

The body's bounds are ``middleware``'s (it runs inside the app, which a head never
reaches); an idle connection between requests is uvicorn's ``timeout_keep_alive``.
Never reads a request beyond counting its bytes; logs nothing per connection, so that a
flood of bad clients does not flood the log.
"""

import asyncio
from http import HTTPStatus
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import error_body, error_response
from .limits import MAX_HEAD_BYTES, process_limits


async def _busy(scope: Scope, receive: Receive, send: Send) -> None:
    limit = process_limits().max_connections
    message = f"the server has {limit} connections open; retry later"
    await error_response(503, "server_busy", message, close=True)(scope, receive, send)


async def _head_too_large(scope: Scope, receive: Receive, send: Send) -> None:
    message = f"request head larger than {MAX_HEAD_BYTES} bytes"
    response = error_response(431, "request_header_fields_too_large", message, close=True)
    await response(scope, receive, send)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = process_limits()
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes received since the head timer was armed
        self._head_size = 0  # the current head's request target and headers, as parsed
        self._head_begun = False  # a byte of the current request's head has arrived
        self._write_timer: asyncio.TimerHandle | None = None

    # the deadline of a head: armed at the connection's opening, at the first byte after
    # an answer and at a request's first byte, disarmed when its headers are complete or
    # the connection is gone
    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._head_timed_out
            )

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_begun = False

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined request's head is late while an answer is on its way: close
            # after that answer
            self.cycle.keep_alive = False
        elif self._head_begun:
            seconds = self.limits.header_timeout_s
            self._refuse(408, "request_timeout", f"request head not received within {seconds} s")
        else:
            self.transport.close()

    # the deadline of a client that does not read: armed when the answers it has not
    # read fill the transport's buffer, disarmed when it reads again
    def _disarm_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        self.transport.abort()  # nothing more can be said to a client that does not read

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer the error JSON from the connection itself and close it."""
        body = error_body(code, message)
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        self._disarm_head_timer()

    # uvicorn's protocol interface
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._disarm_write_timer()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(
                self.limits.body_timeout_s, self._write_timed_out
            )

    def resume_writing(self) -> None:
        self._disarm_write_timer()
        super().resume_writing()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
            # any byte between two requests starts the next head's deadline, even bytes
            # the parser skips (empty lines), which would otherwise keep the connection
            # open for ever by cancelling uvicorn's keep-alive timer
            self._arm_head_timer()
        if self._head_timer is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._head_timer is not None
            and self._head_bytes > MAX_HEAD_BYTES
            and not self.transport.is_closing()
        ):
            self._refuse(
                431,
                "request_header_fields_too_large",
                f"request head larger than {MAX_HEAD_BYTES} bytes",
            )

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "invalid_request", "malformed HTTP request")

    # httptools' parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()
        self._head_begun = True
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        if self._head_size > MAX_HEAD_BYTES:  # a whole head that came in one piece
            answer = _head_too_large
        elif len(self.connections) > self.limits.max_connections:
            answer = _busy
        else:
            super().on_headers_complete()
            return
        self.app = answer  # this request only: its cycle keeps the app it started with
        try:
            super().on_headers_complete()
        finally:
            self.app = self.config.loaded_app
