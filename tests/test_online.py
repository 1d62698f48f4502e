"""The device's online path against the real HQ server (uvicorn on a free loopback
port): activation, renewal, validation with fallback, revocation kept offline,
deactivation, and HQ's signed time re-anchoring the clock."""

import itertools
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.answering_server import AnsweringServer
from tests.conftest import HQ, DeviceRoot, Signer
from tests.hq.server import Server, start_server


@pytest.fixture
def server(hq: HQ) -> Iterator[Server]:
    hq.setup(seats=2)
    srv = start_server(hq.home)
    try:
        yield srv
    finally:
        srv.stop()


def license_key(hq: HQ) -> str:
    return str(hq.json("licenses", "create", "--plan", "industrial")["key"])


def online_device(make_device: Callable[..., DeviceRoot], hq: HQ, url: str) -> DeviceRoot:
    device = make_device()
    hq.image(device)
    device.write_config(f'[online]\nserver = "{url}"\ntimeout_s = 2\n')
    return device


def test_activate_refresh_prepare_offline_deactivate(
    hq: HQ, server: Server, make_device: Callable[..., DeviceRoot]
) -> None:
    key = license_key(hq)
    robot = online_device(make_device, hq, server.url)
    activated = robot.run("activate", key)
    assert activated.returncode == 0, activated.stderr
    assert key not in activated.stdout + activated.stderr
    assert robot.check().returncode == 0
    assert robot.verdict()["serial"] == 1
    assert robot.run("refresh").returncode == 0
    assert robot.check().returncode == 0 and robot.verdict()["serial"] == 2
    assert robot.run("prepare-offline", "--days", "30").returncode == 0
    robot.check()
    assert robot.verdict()["days_left"] == 30
    assert robot.run("prepare-offline").returncode == 0
    robot.check()
    assert robot.verdict()["days_left"] == 365  # the longest the plan allows
    assert robot.run("deactivate").returncode == 0
    assert robot.check().returncode == 30
    # the seat is free again: two more devices fit a two-seat license
    for _ in range(2):
        assert online_device(make_device, hq, server.url).run("activate", key).returncode == 0
    third = online_device(make_device, hq, server.url).run("activate", key)
    assert third.returncode == 77
    assert "seat_limit_reached" in third.stderr


def test_revocation_seen_online_and_kept_offline(
    hq: HQ, server: Server, make_device: Callable[..., DeviceRoot]
) -> None:
    key = license_key(hq)
    robot = online_device(make_device, hq, server.url)
    assert robot.run("activate", key).returncode == 0
    assert robot.run("check", "--online").returncode == 0
    lic = str(hq.json("licenses", "show", key)["id"])
    hq.run("licenses", "revoke", lic, "--yes")
    revoked = robot.run("check", "--online")
    assert revoked.returncode == 32, revoked.stdout + revoked.stderr
    server.stop()
    offline = robot.check()
    assert offline.returncode == 32  # recorded: offline too
    offline_online = robot.run("check", "--online")
    assert offline_online.returncode == 32
    assert "unreachable" in offline_online.stderr


def test_suspend_then_reinstate(
    hq: HQ, server: Server, make_device: Callable[..., DeviceRoot]
) -> None:
    key = license_key(hq)
    robot = online_device(make_device, hq, server.url)
    assert robot.run("activate", key).returncode == 0
    lic = str(hq.json("licenses", "show", key)["id"])
    hq.run("licenses", "suspend", lic)
    assert robot.run("check", "--online").returncode == 32
    assert robot.check().returncode == 32
    hq.run("licenses", "reinstate", lic)
    assert robot.run("check", "--online").returncode == 0
    assert robot.check().returncode == 0


def test_unreachable_and_hanging_server_fall_back_to_offline(
    hq: HQ, server: Server, make_device: Callable[..., DeviceRoot]
) -> None:
    key = license_key(hq)
    robot = online_device(make_device, hq, server.url)
    assert robot.run("activate", key).returncode == 0
    # a server that accepts and never answers: the 2 s timeout, then the offline verdict
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        hang.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(hang.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = hang.getsockname()[1]
        robot.write_config(f'[online]\nserver = "http://127.0.0.1:{port}"\ntimeout_s = 2\n')
        result = robot.run("check", "--online")
        assert result.returncode == 0
        assert "offline verdict" in result.stderr
        refresh = robot.run("refresh")
        assert refresh.returncode == 69
        assert refresh.stderr.count("\n") == 1
    finally:
        stop.set()
        thread.join()
        for s in held:
            s.close()
        hang.close()
    # nothing listening at all
    robot.write_config('[online]\nserver = "http://127.0.0.1:9"\ntimeout_s = 2\n')
    assert robot.run("check", "--online").returncode == 0


def test_hq_signed_time_reanchors_a_clock_once_set_ahead(
    hq: HQ, server: Server, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    key = license_key(hq)
    robot = online_device(make_device, hq, server.url)
    assert robot.run("activate", key).returncode == 0
    assert robot.check(faketime="+3000d").returncode == 20  # the clock was set to 2035
    assert robot.check().returncode == 40  # the true time now looks rolled back
    healed = robot.run("check", "--online")
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert robot.check().returncode == 0


class _Spoofer:
    """Someone on the local link answering as HQ, without HQ's key."""

    def __init__(self, status: int, body: bytes) -> None:
        import http.server

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.status, self.body = status, body
        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b'{"status": "revoked", "valid": false}'),
        (200, b'{"status": "revoked", "signed_time": "AAAA"}'),
        (403, b'{"error": {"code": "license_revoked", "message": "revoked"}}'),
        (200, b"not json"),
    ],
)
def test_unsigned_or_forged_answers_change_nothing(
    hq: HQ, server: Server, make_device: Callable[..., DeviceRoot], status: int, body: bytes
) -> None:
    key = license_key(hq)
    robot = online_device(make_device, hq, server.url)
    assert robot.run("activate", key).returncode == 0
    spoof = _Spoofer(status, body)
    try:
        robot.write_config(f'[online]\nserver = "{spoof.url}"\ntimeout_s = 2\n')
        result = robot.run("check", "--online")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "offline verdict" in result.stderr
        assert robot.check().returncode == 0
    finally:
        spoof.close()


def test_a_forged_active_answer_cannot_lift_a_revocation(
    hq: HQ, server: Server, make_device: Callable[..., DeviceRoot]
) -> None:
    key = license_key(hq)
    robot = online_device(make_device, hq, server.url)
    assert robot.run("activate", key).returncode == 0
    hq.run("licenses", "revoke", str(hq.json("licenses", "show", key)["id"]), "--yes")
    assert robot.run("check", "--online").returncode == 32
    spoof = _Spoofer(200, b'{"status": "active", "valid": true}')
    try:
        robot.write_config(f'[online]\nserver = "{spoof.url}"\ntimeout_s = 2\n')
        assert robot.run("check", "--online").returncode == 32
    finally:
        spoof.close()


def test_servers_are_tried_in_turn(
    hq: HQ, server: Server, make_device: Callable[..., DeviceRoot]
) -> None:
    key = license_key(hq)
    robot = online_device(make_device, hq, server.url)
    assert robot.run("activate", key).returncode == 0
    robot.write_config(
        f'[online]\nserver = "http://127.0.0.1:9"\nservers = ["{server.url}"]\ntimeout_s = 2\n'
    )
    assert robot.run("refresh").returncode == 0
    assert robot.check().returncode == 0 and robot.verdict()["serial"] == 2
    assert robot.run("check", "--online").returncode == 0


# -- hostile answers: bounded in size and depth, the offline verdict stands --------------

DEEP = b"[" * 120_000  # far under the size cap, far over any depth json can recurse


@pytest.mark.parametrize("status", [200, 400, 403, 503])
@pytest.mark.parametrize("body", [DEEP, b'{"error": ' * 20_000, b'{"revocation": ' + DEEP])
def test_deeply_nested_answers_leave_the_offline_verdict(
    device: DeviceRoot, signer: Signer, answering_server: AnsweringServer, status: int, body: bytes
) -> None:
    signer.provision(device)
    device.write_config(f'[online]\nserver = "{answering_server.url}"\ntimeout_s = 5\n')
    assert device.check().returncode == 0
    (device.verdict_dir / "verdict.json").write_text('{"verdict": "stale"}')
    answering_server.answer_all(status, body)
    result = device.run("check", "--online", "--json")
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert "offline verdict" in result.stderr
    assert device.verdict()["verdict"] == "valid"  # the files were rewritten
    assert "/v1/validate" in answering_server.asked


@pytest.mark.parametrize("status", [200, 400])
def test_refresh_against_a_deep_answer_is_one_line(
    device: DeviceRoot, signer: Signer, answering_server: AnsweringServer, status: int
) -> None:
    signer.provision(device)
    device.write_config(f'[online]\nserver = "{answering_server.url}"\ntimeout_s = 5\n')
    stored = device.machine_file.read_bytes()
    answering_server.answer_all(status, DEEP)
    result = device.run("refresh", "--json")
    assert result.returncode == (69 if status == 200 else 77), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert device.machine_file.read_bytes() == stored


def test_garbled_http_is_unreachable_never_a_traceback(device: DeviceRoot, signer: Signer) -> None:
    """A peer that speaks no HTTP at all (http.client raises its own exceptions)."""
    signer.provision(device)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()
    # http.client raises its own exceptions (BadStatusLine, LineTooLong, IncompleteRead)
    answers = [
        b"HELLO WORLD\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70_000 + b"\r\n\r\n",
        b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"a"',
    ]
    garbage = itertools.cycle(answers)

    def garble() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.recv(65536)
            conn.sendall(next(garbage))
            conn.close()

    thread = threading.Thread(target=garble, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        device.write_config(f'[online]\nserver = "http://127.0.0.1:{port}"\ntimeout_s = 3\n')
        for _ in answers:
            result = device.run("check", "--online")
            assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
            refresh = device.run("refresh")
            assert refresh.returncode == 69 and refresh.stderr.count("\n") == 1, refresh.stderr
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_prepare_offline_says_what_was_granted(
    hq: HQ, server: Server, make_device: Callable[..., DeviceRoot]
) -> None:
    key = license_key(hq)
    robot = online_device(make_device, hq, server.url)
    assert robot.run("activate", key).returncode == 0
    capped = robot.run("prepare-offline", "--days", "400")
    assert capped.returncode == 0, capped.stderr
    assert "HQ granted 365 days of offline validity, not the 400 asked" in capped.stdout
    doc = json.loads(robot.run("prepare-offline", "--days", "400", "--json").stdout)
    assert (doc["granted_days"], doc["asked_days"], doc["capped"]) == (365, 400, True)
    asked = json.loads(robot.run("prepare-offline", "--days", "30", "--json").stdout)
    assert (asked["granted_days"], asked["capped"]) == (30, False)
