"""The daemon's second transport: HQ's HTTP device API (the real ``fieldpass-hq serve``),
for a device with a server and no broker."""

import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.answering_server import AnsweringServer
from tests.conftest import FIELDPASS_HQ, HQ, DeviceRoot, Signer, clean_env
from tests.mqtt.conftest import Daemon, free_port, wait_for


@pytest.fixture
def server_url(hq: HQ, tmp_path: Path) -> Iterator[str]:
    hq.setup()
    port = free_port()
    log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen(
        [FIELDPASS_HQ, "--home", str(hq.home), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=log,
        env=clean_env(),
    )

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(up, 20, "fieldpass-hq serve")
    yield f"http://127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)


def test_http_transport_renews_and_learns_a_revocation(
    hq: HQ,
    server_url: str,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
    tmp_path: Path,
) -> None:
    robot = make_device()
    hq.image(robot)
    robot.write_config(
        f'[online]\nserver = "{server_url}"\ntimeout_s = 5\n'
        "[daemon]\nbackoff_min_ms = 100\nbackoff_max_ms = 1000\nrenew_timeout_s = 5\n"
    )
    out = tmp_path / "first.machine"
    key = _license_key(hq)
    doc = hq.json("activate", key, "--fingerprint", robot.fingerprint, "-o", str(out),
                  faketime="-300d")  # fmt: skip
    (tmp_path / "key").write_text(key + "\n")
    result = robot.run("install", str(out), "--license-key-file", str(tmp_path / "key"))
    assert result.returncode == 0, result.stderr
    daemon = daemons(robot)
    daemon.start()
    wait_for(lambda: robot.verdict().get("serial") == 2, 20, "the renewal over HTTP")
    daemon.wait_log("state RENEWING -> CONNECTED")
    assert daemon.stop() == 0
    hq.run("licenses", "revoke", str(doc["license_id"]), "--yes")
    daemon.start()
    wait_for(lambda: robot.verdict().get("verdict") == "revoked", 20, "the revocation")
    assert daemon.stop() == 0
    assert robot.check().returncode == 32


def _license_key(hq: HQ) -> str:
    doc = hq.json("licenses", "create", "--plan", "industrial")
    return str(doc["key"])


# -- the technician's laptop over HTTP, and servers that cannot serve ------------------


def test_run_and_refresh_both_renew_from_the_laptop(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    """The real `fieldpass-hq field serve` answers /v1/validate with 503 (it cannot sign
    HQ's time): the daemon still asks it for the renewal, due or not; refresh too."""
    from tests.test_field import laptop

    key = hq.setup(seats=4)
    due, fresh, by_refresh = make_device(), make_device(), make_device()
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    for robot, ago in ((due, "-300d"), (fresh, None), (by_refresh, None)):
        hq.image(robot)
        out = tmp_path / f"{robot.path.name}.machine"
        doc = hq.json("activate", key, "--fingerprint", robot.fingerprint, "-o", str(out),
                      faketime=ago)  # fmt: skip
        assert robot.run("install", str(out), "--license-key-file", str(key_file)).returncode == 0
    license_id = str(doc["license_id"])
    bundle, report = tmp_path / "site.bundle", tmp_path / "site.report"
    hq.run("field", "export", "--license", license_id, "-o", str(bundle))
    with laptop(hq, bundle, report) as (url, _proc):
        for robot in (due, fresh, by_refresh):
            robot.write_config(
                f'[online]\nserver = "http://127.0.0.1:9"\nservers = ["{url}"]\ntimeout_s = 2\n'
                "[daemon]\nbackoff_min_ms = 100\nbackoff_max_ms = 500\nrenew_timeout_s = 5\n"
            )
        for robot in (due, fresh):
            once = robot.run("run", "--once", timeout=60)
            assert once.returncode == 0, once.stderr
            assert robot.check().returncode == 0
            assert robot.verdict()["serial"] == 2, once.stderr  # the bundle's renewal
        refreshed = by_refresh.run("refresh")
        assert refreshed.returncode == 0, refreshed.stderr
        assert by_refresh.check().returncode == 0 and by_refresh.verdict()["serial"] == 2


def test_once_gives_up_with_69_when_no_server_can_serve(
    make_device: Callable[..., DeviceRoot],
    signer: Signer,
    answering_server: AnsweringServer,
) -> None:
    robot = make_device()
    signer.provision(robot)
    answering_server.answer_all(503, b'{"error": {"code": "down", "message": "down"}}')
    robot.write_config(
        f'[online]\nserver = "http://127.0.0.1:9"\nservers = ["{answering_server.url}"]\n'
        "timeout_s = 2\n[daemon]\nbackoff_min_ms = 100\nbackoff_max_ms = 300\n"
    )
    stored = robot.machine_file.read_bytes()
    once = robot.run("run", "--once", timeout=60)
    assert once.returncode == 69, once.stderr
    assert "no broker or server reachable" in once.stderr
    assert robot.machine_file.read_bytes() == stored
    assert answering_server.asked.count("/v1/machine-file") >= 1  # it did ask
    robot.write_config(
        '[online]\nserver = "http://127.0.0.1:9"\nservers = ["http://127.0.0.1:7"]\ntimeout_s = 2\n'
    )
    assert robot.run("run", "--once", timeout=60).returncode == 69


def test_retries_back_off_with_jitter_up_to_the_ceiling(
    make_device: Callable[..., DeviceRoot],
    signer: Signer,
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    robot = make_device()
    signer.provision(robot)
    robot.write_config(
        '[online]\nserver = "http://127.0.0.1:9"\nservers = ["http://127.0.0.1:7"]\n'
        "timeout_s = 1\n[daemon]\nbackoff_min_ms = 50\nbackoff_max_ms = 400\n"
    )
    daemon = daemons(robot)
    daemon.start()
    wait_for(lambda: daemon.text().count("retrying in") >= 8, 30, "eight retries")
    assert daemon.stop() == 0
    delays = [
        float(line.split("retrying in ")[1].split(" s")[0])
        for line in daemon.text().splitlines()
        if "retrying in" in line
    ]
    assert all(d <= 0.4 for d in delays), delays  # the ceiling, backoff_max_ms
    assert all(d >= 0.2 for d in delays[3:]), delays  # doubled to the ceiling, jitter >= 1/2
    assert delays[0] < 0.2  # it started from backoff_min_ms
