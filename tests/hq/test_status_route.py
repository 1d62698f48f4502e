"""HQ's ``POST /v1/status`` against the real ``fieldpass-hq serve`` and the real
``fieldpass``: after an install over HTTP (``refresh``, and the daemon's HTTP transport)
the device sends its status signed by its own key over a challenge; HQ verifies it and
records the contact; a replayed, forged or foreign status is refused. Through the
recording proxy of test_device_protocol.py, which sees every request."""

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent import asks
from agent.config import load
from agent.device import Device
from agent.wire import device_msg
from agent.wire.device_key import DeviceKey
from tests.conftest import HQ, DeviceRoot
from tests.hq import test_device_protocol as protocol
from tests.hq.server import Server
from tests.hq.test_device_protocol import Proxy, activated, new_key
from tests.mqtt.conftest import Daemon, wait_for

# the fixtures of the device-protocol tests: HQ's CLI, its server, the recording proxy
hqc, server, proxy = protocol.hqc, protocol.server, protocol.proxy


def activation(hqc: HQ, key: str) -> dict[str, object]:
    from agent.wire.license_key import license_id

    return hqc.json("licenses", "show", license_id(key))["activations"][0]  # type: ignore[index, no-any-return]


def signed_status(device: DeviceRoot, challenge: str) -> str:
    dev = Device(load(str(device.path)))
    with dev.writer_lock():
        payload = asks.status(dev, {"verdict": "valid", "challenge": challenge}, int(time.time()))
    return base64.b64encode(payload).decode()


def test_a_refresh_ends_with_the_device_status_that_hq_records(
    hqc: HQ,
    proxy: Proxy,
    server: Server,
    device: DeviceRoot,
) -> None:
    key = new_key(hqc)
    activated(hqc, device, proxy.url, key)
    assert device.run("refresh").returncode == 0
    paths = [p for p, _ in proxy.bodies]
    renewed = len(paths) - 1 - paths[::-1].index("/v1/machine-file")
    assert paths[renewed + 1 : renewed + 3] == ["/v1/challenge", "/v1/status"]  # then usage
    recorded = proxy.bodies[renewed + 2][1]
    assert key.encode() not in recorded  # signed by the device key, never the license key
    fields = device.signed(base64.b64decode(json.loads(recorded)["request"]), "status")
    assert fields["serial"] == 2 and fields["verdict"] == "valid"
    # HQ verified it and spent its challenge: the same status again is a replay
    replay = httpx.post(server.url + "/v1/status", content=recorded, headers=_json())
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "challenge_invalid"


def test_a_status_hq_cannot_verify_is_refused(
    hqc: HQ,
    server: Server,
    device: DeviceRoot,
) -> None:
    key = new_key(hqc)
    activated(hqc, device, server.url, key)

    def challenge() -> str:
        return str(httpx.post(server.url + "/v1/challenge", json={}).json()["challenge"])

    good = base64.b64decode(signed_status(device, challenge()))
    flipped = base64.b64encode(good[:-1] + bytes([good[-1] ^ 1])).decode()
    stranger = device_msg.sign(
        DeviceKey.generate(),
        "status",
        {
            **{k: v for k, v in device.signed(good, "status").items()},
            "challenge": challenge(),
        },
    )
    cases = {
        "a forged signature": (flipped, 401),
        "a key HQ does not know": (base64.b64encode(stranger).decode(), 401),
        "no signed message": (base64.b64encode(b"\xa0").decode(), 422),
    }
    for what, (request, status) in cases.items():
        res = httpx.post(server.url + "/v1/status", json={"request": request})
        assert res.status_code == status, (what, res.text)
        assert res.json()["error"]["code"], what
    for body in ({}, {"request": "not base64!"}, {"request": "AAAA", "extra": 1}):
        assert httpx.post(server.url + "/v1/status", json=body).status_code == 422
    ok = httpx.post(server.url + "/v1/status", json={"request": signed_status(device, challenge())})
    assert (
        ok.status_code == 200
        and ok.json()["activation_id"] == activation(hqc, key)["activation_id"]
    )


@pytest.fixture
def daemon(device: DeviceRoot) -> Iterator[Daemon]:
    d = Daemon(device)
    yield d
    if d.running():
        d.stop()


def test_the_http_daemon_sends_its_status_after_an_install(
    hqc: HQ,
    proxy: Proxy,
    device: DeviceRoot,
    daemon: Daemon,
    tmp_path: Path,
) -> None:
    key = new_key(hqc)
    hqc.image(device)
    machine, key_file = tmp_path / "first.machine", tmp_path / "key"
    hqc.run(
        "activate", key, "--fingerprint", device.fingerprint, "-o", str(machine), faketime="-300d"
    )
    key_file.write_text(key + "\n")
    assert device.run("install", str(machine), "--license-key-file", str(key_file)).returncode == 0
    device.write_config(
        f'[online]\nserver = "{proxy.url}"\ntimeout_s = 5\n'
        "[daemon]\nbackoff_min_ms = 100\nbackoff_max_ms = 1000\nrenew_timeout_s = 5\n"
    )
    daemon.start()
    wait_for(lambda: device.verdict().get("serial") == 2, 30, "the renewal over HTTP")

    def status_after_the_file() -> bool:
        paths = [p for p, _ in proxy.bodies]
        return (
            "/v1/machine-file" in paths and "/v1/status" in paths[paths.index("/v1/machine-file") :]
        )

    wait_for(status_after_the_file, 30, "the status after the install")
    status = [b for p, b in proxy.bodies if p == "/v1/status"][-1]
    fields = device.signed(base64.b64decode(json.loads(status)["request"]), "status")
    assert fields["serial"] == 2
    assert daemon.stop() == 0
    assert activation(hqc, key)["device_key_id"]  # registered by the renewal


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}
