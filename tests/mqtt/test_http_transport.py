"""The daemon's second transport: HQ's HTTP device API (the real ``fieldpass-hq serve``),
for a device with a server and no broker."""

import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import FIELDPASS_HQ, HQ, DeviceRoot, clean_env
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
