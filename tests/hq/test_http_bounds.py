"""The HQ HTTP server against hostile clients, over raw sockets to a real ``fieldpass-hq
serve``: a body shorter than declared runs nothing; slow and idle clients are cut off at
the bounds (``serve --header-timeout``, ``--body-timeout``, ``--keep-alive-timeout``,
``--max-connections``) while well-behaved clients go on being served; a head too large is
refused; no redirect is built from ``Host``; a body in another media type than the API
document's is refused. Every refusal is the error JSON, nothing refused changes the
database, and the server's log holds no traceback."""

import json
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Online
from .server import Server, hq_json, prepare_home, start_server
from .test_server import db_snapshot, device_body

# Generous: each bound below is 2 s; a cut-off must happen well within this.
CUT_OFF_WITHIN_S = 30
JSON = {"Content-Type": "application/json"}
BOUNDS = ("--header-timeout", "2", "--body-timeout", "2", "--keep-alive-timeout", "2")


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def connect(url: str) -> socket.socket:
    return socket.create_connection(address(url), timeout=CUT_OFF_WITHIN_S)


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return answer
        if not chunk:
            return answer
        answer += chunk


def error_of(answer: bytes) -> tuple[int, str]:
    """(status, error code) of a raw HTTP answer holding the error JSON."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), answer
    return status, str(json.loads(body)["error"]["code"])


def head(path: str, length: int | None = None, *, chunked: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: hq", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with 2-second bounds, a key, a 5-seat plan and a token."""
    home = tmp_path_factory.mktemp("bounded") / "hq"
    prepare_home(home, seats=5)
    server = start_server(home, *BOUNDS)
    try:
        yield server
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()


def new_license(server: Server) -> str:
    return str(hq_json(server.home, "licenses", "create", "--plan", "std")["key"])


def test_a_body_shorter_than_declared_is_not_executed(online: Online) -> None:
    """Content-Length 500, a complete JSON body of ~134 bytes, then the socket closed:
    no activation and no audit row (the middleware once took the disconnect for the end
    of the body). The same for a chunked body cut before its last chunk."""
    key = online.new_license()
    before = db_snapshot(online.server.home)
    body = json.dumps(device_body(key, 1)).encode()
    assert len(body) < 500
    with connect(online.url) as sock:
        sock.sendall(head("/v1/activate", 500) + body)
        sock.shutdown(socket.SHUT_WR)
        assert read_to_close(sock) == b""  # nobody is left to read an answer
    with connect(online.url) as sock:
        chunked = head("/v1/activate", chunked=True)
        sock.sendall(chunked + b"%x\r\n" % len(body) + body + b"\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert read_to_close(sock) == b""
    # the old code wrote the activation within milliseconds of the disconnect; a whole
    # request on another connection, answered, and a second's grace are well past that
    assert httpx.get(online.url + "/healthz", timeout=10).status_code == 200
    time.sleep(1)
    assert db_snapshot(online.server.home) == before
    # and the same body, whole, is executed
    res = httpx.post(online.url + "/v1/activate", content=body, headers=JSON, timeout=30)
    assert res.status_code == 201, res.text


class Attacker:
    """Many connections held open on one selector: ``idle`` send nothing, ``slow_head``
    send a request head one header line at a time, ``slow_body`` a head then their body one
    byte at a time (each byte keeps the connection busy, so only a whole-request bound cuts
    it). Records what the server answered to each before closing it."""

    def __init__(self, url: str, idle: int, slow_head: int, slow_body: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.kind: dict[socket.socket, str] = {}
        self.answers: dict[str, list[bytes]] = {"idle": [], "slow_head": [], "slow_body": []}
        self.received: dict[socket.socket, bytes] = {}
        for kind, count in (("idle", idle), ("slow_head", slow_head), ("slow_body", slow_body)):
            for _ in range(count):
                sock = connect(url)
                if kind == "slow_head":
                    sock.sendall(b"POST /v1/activate HTTP/1.1\r\nHost: hq\r\n")
                elif kind == "slow_body":
                    sock.sendall(head("/v1/activate", 4096) + b"{")
                sock.setblocking(False)
                self.kind[sock] = kind
                self.received[sock] = b""
                self.selector.register(sock, selectors.EVENT_READ)

    @property
    def open(self) -> int:
        return len(self.kind)

    def dribble(self) -> None:
        for sock, kind in list(self.kind.items()):
            try:
                if kind == "slow_head":
                    sock.send(b"X-Slow: 1\r\n")
                elif kind == "slow_body":
                    sock.send(b" ")
            except (BlockingIOError, OSError):
                pass  # closed by the server: collected in ``collect``

    def collect(self, timeout_s: float) -> None:
        for key, _ in self.selector.select(timeout_s):
            sock: Any = key.fileobj
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            if chunk:
                self.received[sock] += chunk
                continue
            self.answers[self.kind.pop(sock)].append(self.received.pop(sock))
            self.selector.unregister(sock)
            sock.close()

    def close(self) -> None:
        for sock in list(self.kind):
            sock.close()
        self.selector.close()


def test_slow_and_idle_clients_are_cut_off_while_others_are_served(
    tmp_path: Path,
) -> None:
    """1,000 idle, 300 slow-head and 300 slow-body connections at once against 2-second
    bounds: each is closed (the slow ones with 408 and the error JSON) while devices and
    an admin keep being served throughout, and the server serves on after it."""
    home = tmp_path / "hq"
    token = prepare_home(home, seats=5)
    server = start_server(home, *BOUNDS)
    key = new_license(server)
    attacker = Attacker(server.url, idle=1000, slow_head=300, slow_body=300)
    served = 0
    try:
        deadline = time.monotonic() + CUT_OFF_WITHIN_S
        with httpx.Client(timeout=CUT_OFF_WITHIN_S) as client:
            while attacker.open and time.monotonic() < deadline:
                attacker.dribble()
                attacker.collect(0.2)
                ok = client.get(server.url + "/healthz")
                valid = client.post(server.url + "/v1/validate", json=device_body(key, 1))
                audit = client.get(
                    server.url + "/v1/audit", headers={"Authorization": f"Bearer {token}"}
                )
                assert (ok.status_code, valid.status_code, audit.status_code) == (200, 200, 200)
                served += 3
        assert attacker.open == 0, f"{attacker.open} connections still open"
        assert served >= 3
        assert set(attacker.answers["idle"]) == {b""}  # closed without a word
        for kind in ("slow_head", "slow_body"):
            answers = attacker.answers[kind]
            assert len(answers) == 300
            assert {error_of(a) for a in answers} == {(408, "request_timeout")}, kind
        res = httpx.post(server.url + "/v1/activate", json=device_body(key, 2), timeout=30)
        assert res.status_code == 201, res.text
    finally:
        attacker.close()
        server.stop()
    log = server.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log


def test_an_idle_kept_alive_connection_is_closed(bounded: Server) -> None:
    with connect(bounded.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: hq\r\n\r\n")
        answer = read_to_close(sock)  # the answer, then, 2 s idle later, the close
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'"version":"0.1.0"}')


def test_empty_lines_after_an_answer_do_not_keep_a_connection_open(bounded: Server) -> None:
    """The parser skips empty lines between requests; each one cancelled uvicorn's
    keep-alive timer, so a line a second held the connection for ever."""
    with connect(bounded.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: hq\r\n\r\n")
        deadline = time.monotonic() + CUT_OFF_WITHIN_S
        try:
            while time.monotonic() < deadline:
                sock.sendall(b"\r\n")
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            pytest.fail("the connection is still open")


def test_a_client_that_never_reads_its_answers_is_dropped(bounded: Server) -> None:
    """Pipelined requests whose answers (the API document, tens of KiB each) are never
    read fill the buffers; the server waits --body-timeout for the client to read, then
    drops the connection instead of holding it (and a task) for ever."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(address(bounded.url))
        sock.setblocking(False)
        request = b"GET /openapi.json HTTP/1.1\r\nHost: hq\r\n\r\n"
        deadline = time.monotonic() + CUT_OFF_WITHIN_S
        while time.monotonic() < deadline:
            try:
                sock.send(request * 50)
            except BlockingIOError:
                pass  # the server reads no more until it could answer
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.2)
        else:
            pytest.fail("a client that never reads still holds its connection")
    assert httpx.get(bounded.url + "/healthz", timeout=10).status_code == 200


def test_a_body_that_stops_short_gets_408_and_changes_nothing(bounded: Server) -> None:
    key = new_license(bounded)
    before = db_snapshot(bounded.home)
    body = json.dumps(device_body(key, 1)).encode()
    with connect(bounded.url) as sock:
        sock.sendall(head("/v1/activate", len(body) + 10) + body)  # and then silence
        assert error_of(read_to_close(sock)) == (408, "request_timeout")
    assert db_snapshot(bounded.home) == before


def test_a_head_too_large_gets_431(bounded: Server) -> None:
    # in one piece, and streamed header by header (never ending)
    with connect(bounded.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: hq\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
        assert error_of(read_to_close(sock)) == (431, "request_header_fields_too_large")
    with connect(bounded.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: hq\r\n")
        try:
            for n in range(2000):
                sock.sendall(b"X-Header-%d: %s\r\n" % (n, b"b" * 64))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert error_of(read_to_close(sock)) == (431, "request_header_fields_too_large")


def test_a_malformed_request_gets_the_error_json(bounded: Server) -> None:
    with connect(bounded.url) as sock:
        sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")
        assert error_of(read_to_close(sock)) == (400, "invalid_request")


def test_beyond_max_connections_a_request_gets_503(tmp_path: Path) -> None:
    home = tmp_path / "hq"
    prepare_home(home)
    server = start_server(home, "--max-connections", "5")
    held: list[socket.socket] = []
    try:
        held = [connect(server.url) for _ in range(6)]
        with connect(server.url) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: hq\r\n\r\n")
            assert error_of(read_to_close(sock)) == (503, "server_busy")
        for sock in held:
            sock.close()
        held = []
        deadline = time.monotonic() + CUT_OFF_WITHIN_S
        while time.monotonic() < deadline:  # the server sees the closes, then serves
            if httpx.get(server.url + "/healthz", timeout=10).status_code == 200:
                break
            time.sleep(0.1)
        else:
            pytest.fail("still busy after the connections closed")
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_no_redirect_is_built_from_the_host_header(online: Online) -> None:
    for path in ("/v1/plans/", "/healthz/", "/v1/licenses/"):
        res = httpx.get(
            online.url + path,
            headers={"Host": "evil.example", **online.admin},
            timeout=10,
            follow_redirects=False,
        )
        assert (res.status_code, res.json()["error"]["code"]) == (404, "not_found"), path
        assert "location" not in res.headers
        assert "evil.example" not in res.text


REFUSED_MEDIA: list[tuple[str, dict[str, str], bytes, int]] = [
    # (id, headers, body, status): the body holds a valid /v1/activate request
    ("no-content-type", {}, b"BODY", 415),
    ("text-plain", {"Content-Type": "text/plain"}, b"BODY", 415),
    ("form", {"Content-Type": "application/x-www-form-urlencoded"}, b"BODY", 415),
    ("vendor-json", {"Content-Type": "application/vnd.api+json"}, b"BODY", 415),
    ("json-suffix", {"Content-Type": "application/problem+json"}, b"BODY", 415),
    ("utf-16-charset", {"Content-Type": "application/json; charset=utf-16"}, b"BODY", 415),
    ("other-parameter", {"Content-Type": "application/json; version=2"}, b"BODY", 415),
    ("utf-16", JSON, b"UTF-16", 400),
    ("utf-16-be", JSON, b"UTF-16-BE", 400),
    ("utf-32", JSON, b"UTF-32", 400),
    ("utf-8-bom", JSON, b"BOM", 400),
    ("nul", JSON, b"NUL", 400),
    ("latin-1", JSON, b"LATIN-1", 400),
    ("duplicate-key", JSON, b"DUPLICATE", 400),
    ("nan", JSON, b"NAN", 400),
]
CODE = {400: "invalid_request", 415: "unsupported_media_type"}


def _media_body(kind: bytes, key: str) -> bytes:
    doc = device_body(key, 9)
    text = json.dumps(doc)
    encoded = {
        b"BODY": text.encode(),
        b"UTF-16": text.encode("utf-16"),
        b"UTF-16-BE": text.encode("utf-16-be"),
        b"UTF-32": text.encode("utf-32"),
        b"BOM": b"\xef\xbb\xbf" + text.encode(),
        b"NUL": b"\x00" + text.encode(),
        b"LATIN-1": json.dumps({**doc, "x": "\u00e9"}, ensure_ascii=False).encode("latin-1"),
        b"DUPLICATE": text[:-1].encode() + b', "fingerprint": "' + b"2" * 64 + b'"}',
        b"NAN": text[:-1].encode() + b', "ttl_s": NaN}',
    }
    return encoded[kind]


@pytest.mark.parametrize(
    ("headers", "kind", "status"),
    [m[1:] for m in REFUSED_MEDIA],
    ids=[m[0] for m in REFUSED_MEDIA],
)
def test_a_body_the_api_document_does_not_declare_is_refused(
    online: Online, headers: dict[str, str], kind: bytes, status: int
) -> None:
    key = online.new_license()
    before = db_snapshot(online.server.home)
    res = httpx.post(
        online.url + "/v1/activate", content=_media_body(kind, key), headers=headers, timeout=30
    )
    assert res.status_code == status, res.text
    assert res.json()["error"]["code"] == CODE[status]
    if status == 415:  # refused before the body was read: the connection is not reused
        assert res.headers["connection"] == "close"
    assert db_snapshot(online.server.home) == before


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON; charset=UTF-8", 'application/json;charset="utf-8"'],
)
def test_json_in_utf8_is_accepted_with_its_declared_media_type(
    online: Online, content_type: str
) -> None:
    key = online.new_license()
    body = json.dumps(device_body(key, 3)).encode()
    res = httpx.post(
        online.url + "/v1/activate", content=body, headers={"Content-Type": content_type}
    )
    assert res.status_code == 201, res.text


def test_a_number_is_an_integer_when_it_has_no_fraction(online: Online) -> None:
    """The document's JSON Schema ``integer`` admits 3.0 and 3e0; the server does too,
    and still refuses a fraction, a boolean and a string where an integer belongs."""
    for seats, status in ((b"3.0", 201), (b"3e0", 201), (b"3.5", 422), (b"true", 422)):
        name = f"plan-{seats.decode().replace('.', '_')}"
        body = b'{"name": "%s", "offline_ttl_s": 8.64e4, "seats": %s}' % (name.encode(), seats)
        res = httpx.post(
            online.url + "/v1/plans", content=body, headers={**JSON, **online.admin}, timeout=10
        )
        assert res.status_code == status, (seats, res.text)
        if status == 201:
            assert (res.json()["seats"], res.json()["offline_ttl_s"]) == (3, 86400)


def test_the_api_document_lists_the_refusals_of_every_operation(online: Online) -> None:
    doc = httpx.get(online.url + "/openapi.json", timeout=10).json()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            statuses = set(operation["responses"])
            assert {"400", "408", "413", "415", "431", "503"} <= statuses, (method, path)
            body = operation.get("requestBody", {}).get("content", {})
            assert set(body) <= {"application/json"}, (method, path)
    refusal = doc["paths"]["/v1/activate"]["post"]["responses"]["415"]
    assert refusal["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
