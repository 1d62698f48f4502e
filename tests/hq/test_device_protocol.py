"""The device key protocol against a real ``fieldpass-hq serve`` and the real
``fieldpass``: the license key travels once (activation), every later request is signed
by the device's own key over a single-use challenge, and signed answers name the license
and activation they are about (issues 11 and 13). A recording proxy between the device
and HQ sees every byte the device sends, as someone on the site network would.
"""

import base64
import http.server
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.wire import license_key
from tests.conftest import HQ, DeviceRoot
from tests.hq.server import Server, start_server


class Proxy(http.server.ThreadingHTTPServer):
    """Forwards to HQ and keeps every request body (127.0.0.1, free port). With
    ``answer`` set, answers /v1/validate itself: a hostile server on the path."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.bodies: list[tuple[str, bytes]] = []
        self.answer: dict[str, object] | None = None
        super().__init__(("127.0.0.1", 0), _Forward)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(http.server.BaseHTTPRequestHandler):
    server: Proxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.bodies.append((self.path, body))
        if self.path == "/v1/validate" and self.server.answer is not None:
            self._reply(200, json.dumps(self.server.answer).encode())
            return
        req = urllib.request.Request(
            self.server.upstream + self.path,
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                self._reply(r.status, r.read())
        except urllib.error.HTTPError as e:
            self._reply(e.code, e.read())

    def _reply(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def hqc(tmp_path: Path) -> HQ:
    """The real ``fieldpass-hq`` CLI on a home of its own (tests/hq's ``hq`` runs the
    CLI in process)."""
    return HQ(tmp_path / "hq-home")


@pytest.fixture
def server(hqc: HQ) -> Iterator[Server]:
    hqc.setup(seats=5)
    s = start_server(hqc.home)
    yield s
    s.stop()


@pytest.fixture
def proxy(server: Server) -> Iterator[Proxy]:
    p = Proxy(server.url)
    t = threading.Thread(target=p.serve_forever, daemon=True)
    t.start()
    yield p
    p.shutdown()
    p.server_close()


def new_key(hqc: HQ) -> str:
    return str(hqc.json("licenses", "create", "--plan", "industrial")["key"])


def activated(hqc: HQ, device: DeviceRoot, url: str, key: str) -> None:
    hqc.image(device)
    device.write_config(f'[online]\nserver = "{url}"\n')
    done = device.run("activate", key, "--server", url)
    assert done.returncode == 0, done.stderr


def test_the_license_key_travels_once_then_every_request_is_signed(
    hqc: HQ, proxy: Proxy, device: DeviceRoot
) -> None:
    key = new_key(hqc)
    activated(hqc, device, proxy.url, key)
    for args in (("refresh",), ("check", "--online"), ("prepare-offline", "--days", "30")):
        result = device.run(*args)
        assert result.returncode == 0, (args, result.stderr)
    paths = [p for p, _ in proxy.bodies]
    assert paths.count("/v1/activate") == 1 and "/v1/challenge" in paths
    with_key = [p for p, b in proxy.bodies if key.encode() in b]
    assert with_key == ["/v1/activate"]  # after activation, never again
    assert all(device.machine_id.encode() not in b for _, b in proxy.bodies)
    status = json.loads(device.run("status", "--json").stdout)
    assert status["verdict"] == "valid" and status["serial"] == 3
    # HQ recorded the device's key and what its agent reads
    lic = license_key.license_id(key)
    act = hqc.json("licenses", "show", lic)["activations"][0]  # type: ignore[index]
    assert act["device_key_id"].startswith("fpd_") and act["claims_format"] == 2
    assert act["last_channel"] == "http"


def test_a_recorded_request_cannot_be_replayed(
    hqc: HQ, proxy: Proxy, server: Server, device: DeviceRoot
) -> None:
    activated(hqc, device, proxy.url, new_key(hqc))
    assert device.run("check", "--online").returncode == 0
    recorded = [b for p, b in proxy.bodies if p == "/v1/validate"][-1]
    replay = httpx.post(server.url + "/v1/validate", content=recorded, headers=_json())
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "challenge_invalid"
    renewal = [b for p, b in proxy.bodies if p == "/v1/activate"][-1]
    assert b"request" in renewal


def test_a_device_with_a_key_cannot_be_asked_about_with_the_license_key(
    hqc: HQ, server: Server, device: DeviceRoot
) -> None:
    key = new_key(hqc)
    activated(hqc, device, server.url, key)
    for path in ("/v1/validate", "/v1/machine-file", "/v1/deactivate"):
        legacy = {"license_key": key, "fingerprint": device.fingerprint}
        res = httpx.post(server.url + path, json=legacy)
        assert res.status_code == 403, path
        assert res.json()["error"]["code"] == "signed_request_required"
    # and a request signed by another key is refused
    from agent.wire import device_msg
    from agent.wire.device_key import DeviceKey

    challenge = httpx.post(server.url + "/v1/challenge", json={}).json()["challenge"]
    forged = device_msg.sign(
        DeviceKey.generate(),
        "validate",
        {
            "activation_id": "",
            "fingerprint": device.fingerprint,
            "at": 0,
            "agent_version": "x",
            "nonce": "n",
            "challenge": challenge,
        },
    )
    res = httpx.post(
        server.url + "/v1/validate", json={"request": base64.b64encode(forged).decode()}
    )
    assert res.status_code == 401 and res.json()["error"]["code"] == "device_unauthenticated"


def test_a_status_obtained_under_another_license_does_not_lift_a_revocation(
    hqc: HQ, server: Server, proxy: Proxy, make_device: object, tmp_path: Path
) -> None:
    """The holder of license B activates a seat on the victim's fingerprint and gets a
    signed "active" from HQ; replayed to the victim (whose license A is suspended), it
    names license B's activation: refused."""
    victim = make_device()  # type: ignore[operator]
    key_a, key_b = new_key(hqc), new_key(hqc)
    activated(hqc, victim, proxy.url, key_a)
    hqc.run("licenses", "suspend", license_key.license_id(key_a))
    assert victim.run("check", "--online").returncode == 32
    # the attacker: a device root of their own with the victim's fingerprint source
    attacker = make_device(victim.machine_id)  # type: ignore[operator]
    activated(hqc, attacker, server.url, key_b)
    assert attacker.run("check", "--online").returncode == 0
    from agent import asks
    from agent.config import load
    from agent.device import Device

    dev = Device(load(str(attacker.path)))
    challenge = httpx.post(server.url + "/v1/challenge", json={}).json()["challenge"]
    with dev.writer_lock():
        signed = asks.validate(dev, 0, challenge=challenge, nonce="anything")
    answer = httpx.post(
        server.url + "/v1/validate", json={"request": base64.b64encode(signed).decode()}
    ).json()
    assert answer["status"] == "active"
    proxy.answer = answer  # the hostile server on the victim's path replays it
    result = victim.run("check", "--online")
    assert result.returncode == 32, result.stdout
    assert "does not verify" in result.stderr


def test_reactivation_with_another_device_key_needs_the_operator(
    hqc: HQ, server: Server, device: DeviceRoot
) -> None:
    key = new_key(hqc)
    activated(hqc, device, server.url, key)
    # the data partition is wiped (no TPM): a new device key, the same fingerprint
    for path in device.state_dir.iterdir():
        if path.is_file():
            path.unlink()
    refused = device.run("activate", key, "--server", server.url)
    assert refused.returncode == 77 and "device_key_mismatch" in refused.stderr
    act = hqc.json("licenses", "show", license_key.license_id(key))["activations"][0]  # type: ignore[index]
    hqc.run("activations", "reset-key", str(act["activation_id"]))
    again = device.run("activate", key, "--server", server.url)
    assert again.returncode == 0, again.stderr
    assert device.check().returncode == 0
    audit = hqc.run("audit", "--json").stdout
    assert "device_key_reset" in audit


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}


def test_activation_over_plain_http_is_refused_off_this_machine_and_warned_on_it(
    hqc: HQ, server: Server, device: DeviceRoot
) -> None:
    key = new_key(hqc)
    hqc.image(device)
    far = device.run("activate", key, "--server", "http://192.0.2.10:8750", timeout=30)
    assert far.returncode == 64 and "https://" in far.stderr
    assert key not in far.stderr and not (device.state_dir / "license.key").exists()
    near = device.run("activate", key, "--server", server.url)
    assert near.returncode == 0 and "clear text" in near.stderr


def test_a_device_on_one_license_activated_on_another_is_told_which_holds_its_key(
    hqc: HQ, server: Server, device: DeviceRoot, tmp_path: Path
) -> None:
    """One device key holds one live activation. Activating a device that runs on
    license A with license B's key is refused as device_key_in_use (it used to surface
    as the database's own UNIQUE constraint message), and nothing changes; the device
    is not told which activation and license hold its key, HQ's operator is. Given
    back (no TPM), its seat waits: the refusal says so, and to the operator until when.
    Once that time has come, license B activates it, though no activation of license A
    came to free the seat (seats of returns free when their license next counts them)."""
    key_a, key_b = new_key(hqc), new_key(hqc)
    activated(hqc, device, server.url, key_a)
    act_a = str(device.verdict()["activation_id"])
    lic_a = license_key.license_id(key_a)
    refused = device.run("activate", key_b, "--server", server.url)
    assert refused.returncode == 77, refused.stderr
    assert "device_key_in_use" in refused.stderr and "give it back first" in refused.stderr
    assert act_a not in refused.stderr and lic_a not in refused.stderr
    assert "UNIQUE" not in refused.stderr and "constraint" not in refused.stderr
    assert device.check().returncode == 0 and device.verdict()["activation_id"] == act_a
    lic_b = hqc.json("licenses", "show", license_key.license_id(key_b))
    assert lic_b["activations"] == []  # type: ignore[index]
    request, answer = tmp_path / "b.request", tmp_path / "b.machine"
    assert device.run("request", "-o", str(request)).returncode == 0
    by_hand = hqc.run("activate", key_b, "--request", str(request), check=False)
    assert (
        by_hand.returncode == 1 and f"live activation {act_a} of license {lic_a}" in by_hand.stderr
    )
    assert device.run("return", "--yes").returncode == 0
    waits = device.run("activate", key_b, "--server", server.url)  # the receipt goes first
    assert waits.returncode == 77, waits.stderr
    assert "device_key_in_use" in waits.stderr and "gave back holds its key" in waits.stderr
    assert act_a not in waits.stderr
    assert device.run("request", "-o", str(request)).returncode == 0
    by_hand = hqc.run("activate", key_b, "--request", str(request), check=False)
    assert by_hand.returncode == 1 and f"{act_a} was given back" in by_hand.stderr
    assert "frees on" in by_hand.stderr
    later = hqc.json(
        "activate", key_b, "--request", str(request), "-o", str(answer), faketime="+800d"
    )
    assert later["activation_id"] != act_a
    shown = hqc.json("licenses", "show", lic_a)
    (gone,) = shown["activations"]  # type: ignore[index]
    assert gone["activation_id"] == act_a and gone["deactivated_at"] is not None
    audit = json.loads(hqc.run("audit", "--json").stdout)
    assert [e["activation_id"] for e in audit if e["action"] == "return_freed"] == [act_a]


def test_a_validation_never_answers_as_an_acknowledgement(
    hqc: HQ, server: Server, device: DeviceRoot
) -> None:
    """HQ's acknowledgement of a receipt is its signed status bound to ``ack/`` and the
    receipt's digest; a validation names its own nonce. One naming an acknowledgement's
    nonce is refused, so no status HQ signs for a validation stands in for one (a
    review found the device key's holder could have asked for one)."""
    from agent import asks
    from agent.config import load
    from agent.device import Device

    activated(hqc, device, server.url, new_key(hqc))
    dev = Device(load(str(device.path)))
    for nonce, status in (("ack/" + "0" * 64, 422), ("a" * 32, 200)):
        challenge = httpx.post(server.url + "/v1/challenge", json={}).json()["challenge"]
        with dev.writer_lock():
            signed = asks.validate(dev, 0, challenge=challenge, nonce=nonce)
        answer = httpx.post(
            server.url + "/v1/validate", json={"request": base64.b64encode(signed).decode()}
        )
        assert answer.status_code == status, answer.text
