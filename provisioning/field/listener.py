"""The laptop's HTTP/1.1 listener: one asyncio loop (one thread) and h11, every peer
bounded, so that one slow or hostile client never stops the laptop serving the others.

- At most ``max_connections`` open connections, ``max_per_address`` from one address:
  beyond, 503 (429 for one address) at once, and the connection is closed.
- A request's head (request line and headers, at most ``MAX_HEAD_BYTES``) must arrive
  within ``header_timeout_s`` of the connection's opening; its body must be declared
  with ``Content-Length`` (no chunked bodies), at most ``MAX_BODY_BYTES`` (refused before
  a byte of it is read) and arrive within ``body_timeout_s`` of the head. A body shorter
  than declared is never handled.
- One request per connection, answered with ``Connection: close``: no idle keep-alive.
  The answer must be taken within ``WRITE_TIMEOUT_S``.

A complete request goes to ``handler(method, path, body, client_address)``, which
returns ``(status, JSON document)``; handlers are quick (no I/O, no waiting) and run on
the loop's thread. Every failure is an answer ``{"error": {"code", "message"}}`` (4xx
for the peer's fault; 500 and one line on stderr for a bug), never a traceback. Never
logs a request: bodies of agents of 0.1.0 hold their license key.
"""

import asyncio
import json
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import h11

from .. import listening

BACKLOG = 1024
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 16 * 1024
WRITE_TIMEOUT_S = 10.0
LINGER_S = 2.0  # after an answer, how long the rest of a refused body is read and dropped
LINGER_BYTES = 1024 * 1024
READ_CHUNK = 64 * 1024

Document = dict[str, object]
Handler = Callable[[str, str, bytes, str], tuple[int, Document]]


@dataclass(frozen=True)
class Limits:
    """The bounds on the laptop's peers (``field serve --header-timeout`` ...)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    max_connections: int = 1000
    max_per_address: int = 50


CannotListen = listening.CannotListen


class Refusal(Exception):
    """An answer to give instead of handling the request: the peer's fault."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _Gone(Exception):
    """The peer closed the connection before its request was complete: nothing to do."""


def error(status: int, code: str, message: str) -> tuple[int, Document]:
    return status, {"error": {"code": code, "message": message}}


def one_line_error(e: BaseException, what: str) -> str:
    """``internal error (Type at file:line) in WHAT: please report it``: the type and
    where, never the exception's text (which may hold data)."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"internal error ({type(e).__name__}{where}) in {what}: please report it"


class Listener:
    """Serves ``handler`` on ``host:port`` within ``limits`` on a thread of its own."""

    def __init__(self, host: str, port: int, handler: Handler, limits: Limits) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        self.limits = limits
        self.open = 0
        self.by_address: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._loop_error)
        self.server: asyncio.Server | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        """Listen (``InvalidRequest`` for a bad ``--host``, ``CannotListen`` for a busy
        port) and serve on the listener's thread."""
        sock = listening.listen(self.host, self.port, BACKLOG)
        listening.allow_open_files(self.limits.max_connections + 64)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._connection, sock=sock, limit=READ_CHUNK)
        )
        self.thread.start()

    def stop(self) -> None:
        """Stop listening; connections still open are dropped."""

        async def close() -> None:
            if self.server is not None:
                self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            # Let each connection run its cancellation (its writer closed) while the loop
            # still runs: a task left pending would be closed by the garbage collector
            # after the loop, and its cleanup fail on a closed loop.
            await asyncio.wait(tasks, timeout=5) if tasks else None

        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        """What asyncio would print as a traceback (a failed accept when the process is
        out of file descriptors): one line."""
        e = context.get("exception")
        what = str(context.get("message", "the listener"))[:80]
        if isinstance(e, asyncio.CancelledError):
            return  # a connection dropped when the laptop stops
        if isinstance(e, BaseException):
            print(f"fieldpass-hq: {one_line_error(e, 'the listener')}", file=sys.stderr)
        else:
            print(f"fieldpass-hq: listener: {what}", file=sys.stderr)

    # -- one connection -------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if self.open >= self.limits.max_connections:
            busy = error(503, "busy", "the laptop serves too many connections: retry later")
            await self._answer(reader, writer, busy, linger=False)
            return
        if self.by_address.get(address, 0) >= self.limits.max_per_address:
            busy = error(429, "busy", "too many connections from this address: retry later")
            await self._answer(reader, writer, busy, linger=False)
            return
        self.open += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        try:
            answer = await self._answer_for(reader, address)
            if answer is None:
                writer.transport.abort()
            else:
                await self._answer(reader, writer, answer, linger=True)
        except Exception as e:  # a bug: one line, the connection dropped
            print(f"fieldpass-hq: {one_line_error(e, 'a connection')}", file=sys.stderr)
            writer.transport.abort()
        finally:
            self.open -= 1
            left = self.by_address[address] - 1
            if left:
                self.by_address[address] = left
            else:
                del self.by_address[address]

    async def _answer_for(
        self, reader: asyncio.StreamReader, address: str
    ) -> tuple[int, Document] | None:
        """The answer to the connection's request; None if the peer left before its
        request was complete (nothing was handled)."""
        try:
            method, path, body = await self._request(reader)
        except Refusal as r:
            return error(r.status, r.code, r.message)
        except _Gone:
            return None
        return self._handle(method, path, body, address)

    def _handle(self, method: str, path: str, body: bytes, address: str) -> tuple[int, Document]:
        try:
            return self.handler(method, path, body, address)
        except Exception as e:
            print(f"fieldpass-hq: {one_line_error(e, method + ' ' + path)}", file=sys.stderr)
            return error(500, "internal_error", f"internal error ({type(e).__name__})")

    async def _request(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
        """(method, path, body) of one complete request within the bounds."""
        loop = asyncio.get_running_loop()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        deadline = loop.time() + self.limits.header_timeout_s
        request: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint
                if status == 501:  # h11's word for a Transfer-Encoding it does not read
                    raise Refusal(411, "invalid_request", _NO_LENGTH) from None
                status = status if 400 <= status < 500 else 400  # the peer's fault: 4xx
                raise Refusal(status, "invalid_request", _protocol_message(status)) from None
            if event is h11.NEED_DATA:
                conn.receive_data(await self._read(reader, deadline - loop.time(), request))
            elif isinstance(event, h11.Request):
                request = event
                _check_head(event)
                deadline = loop.time() + self.limits.body_timeout_s
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES:
                    raise _too_large()
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                method = request.method.decode("ascii", "replace")
                path = request.target.decode("ascii", "replace")
                return method, path, bytes(body)
            else:  # ConnectionClosed, or anything h11 adds later
                raise _Gone

    async def _read(
        self, reader: asyncio.StreamReader, timeout_s: float, request: h11.Request | None
    ) -> bytes:
        what = "head" if request is None else "body"
        if timeout_s <= 0:
            raise Refusal(408, "request_timeout", f"the request's {what} did not arrive in time")
        try:
            data = await asyncio.wait_for(reader.read(READ_CHUNK), timeout_s)
        except TimeoutError:
            raise Refusal(
                408, "request_timeout", f"the request's {what} did not arrive in time"
            ) from None
        except (ConnectionError, OSError):
            raise _Gone from None
        if not data:
            raise _Gone
        return data

    async def _answer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        answer: tuple[int, Document],
        *,
        linger: bool,
    ) -> None:
        """Write the answer and close: after a refusal, what the peer still sends is read
        (for at most LINGER_S, LINGER_BYTES) so that the answer is not lost to a reset."""
        status, doc = answer
        writer.write(_response(status, doc))
        try:
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
            if writer.can_write_eof():
                writer.write_eof()
            if linger:
                await asyncio.wait_for(_drop(reader), LINGER_S)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # the peer does not read: drop it
            else:
                writer.close()


async def _drop(reader: asyncio.StreamReader) -> None:
    dropped = 0
    while dropped < LINGER_BYTES:
        chunk = await reader.read(READ_CHUNK)
        if not chunk:
            return
        dropped += len(chunk)


def _check_head(request: h11.Request) -> None:
    size = len(request.method) + len(request.target) + 12
    size += sum(len(name) + len(value) + 4 for name, value in request.headers.raw_items())
    if size > MAX_HEAD_BYTES:  # h11 bounds a head that arrives in parts, this one whole
        raise Refusal(431, "invalid_request", _protocol_message(431))
    headers = {name.lower(): value for name, value in request.headers}
    if b"transfer-encoding" in headers:
        raise Refusal(411, "invalid_request", _NO_LENGTH)
    length = headers.get(b"content-length")
    if length is None:
        if request.method == b"POST":
            raise Refusal(411, "invalid_request", "a POST must have a Content-Length")
        return
    if int(length) > MAX_BODY_BYTES:  # h11 checked it is digits
        raise _too_large()


_NO_LENGTH = "a body must be sent with a Content-Length"


def _too_large() -> Refusal:
    return Refusal(413, "invalid_request", f"the body is larger than {MAX_BODY_BYTES} bytes")


def _protocol_message(status: int) -> str:
    if status == 431:
        return f"the request's head is larger than {MAX_HEAD_BYTES} bytes"
    return "malformed HTTP request"


def _response(status: int, doc: Document) -> bytes:
    body = json.dumps(doc).encode()
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Status"
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        "Server: fieldpass-field\r\n\r\n"
    )
    return head.encode("ascii") + body
