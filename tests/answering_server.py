"""A real HTTP server on 127.0.0.1 (a free port) that answers whatever a test sets:
hostile bodies, any status, per path. It stands for a broken or malicious HQ, or a
technician's laptop; it records the paths it was asked. Stopped at the end of the test.
"""

import http.server
import threading
from collections.abc import Iterator

import pytest

Answer = tuple[int, bytes]


class AnsweringServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers: dict[str, Answer] = {}
        self.default: Answer = (503, b'{"error": {"code": "down", "message": "down"}}')
        self.asked: list[str] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, path: str, status: int, body: bytes) -> None:
        with self.lock:
            self.answers[path] = (status, body)

    def answer_all(self, status: int, body: bytes) -> None:
        with self.lock:
            self.answers.clear()
            self.default = (status, body)

    def for_path(self, path: str) -> Answer:
        """The answer for ``path``. ``/v1/challenge`` gets a good challenge unless a test
        set one for it: the hostile answers are meant for the request that follows."""
        with self.lock:
            self.asked.append(path)
            if path == "/v1/challenge" and path not in self.answers:
                return (200, b'{"challenge": "test-challenge", "expires_in": 300}')
            return self.answers.get(path, self.default)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: AnsweringServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(min(length, 1 << 20))
        status, body = self.server.for_path(self.path)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the device stopped reading a hostile answer at its bound, as it must


def start() -> AnsweringServer:
    server = AnsweringServer()
    server.thread.start()
    return server


@pytest.fixture
def answering_server() -> Iterator[AnsweringServer]:
    server = start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
