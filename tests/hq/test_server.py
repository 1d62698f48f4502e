"""The HTTP API over real HTTP: ``fieldpass-hq serve`` (uvicorn) on a free loopback port,
driven with httpx. The device's own online path against this server is in
tests/test_online.py; here are the server's promises: the flow, the seat rule under
concurrency, bad input refused with a code and no change, a SIGKILL mid-activation, the
audit trail, and no secret in the server's log. Each runs on both database engines
(SQLite, PostgreSQL: tests/engines.py)."""

import base64
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.wire import armor, cbor, device_msg, license_key
from agent.wire.device_key import DeviceKey
from agent.wire.keys import Keyring
from agent.wire.machine_file import open_machine_file
from agent.wire.signed_time import verify_time, verify_time_v1
from tests.engines import Engine, connect, snapshot, url_of

from .conftest import Online, fingerprint
from .server import Server, hq_cli, hq_json, prepare_home, start_server

DB = "hq.sqlite3"


def post(url: str, path: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=30, **kw)


def device_body(key: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"license_key": key, "fingerprint": fingerprint(n), **extra}


def keyring(url: str) -> Keyring:
    doc = httpx.get(url + "/v1/keys", timeout=10).json()
    return Keyring.loads(doc["keyring"].encode())


def new_key(home: Path) -> str:
    return str(hq_json(home, "licenses", "create", "--plan", "std")["key"])


def db_snapshot(home: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read directly (a second client of the database)."""
    return snapshot(home)


def test_the_whole_device_flow_over_http(online: Online) -> None:
    key = online.new_license()
    ring = keyring(online.url)
    assert httpx.get(online.url + "/healthz", timeout=10).json()["status"] == "ok"

    res = post(online.url, "/v1/activate", device_body(key, 1))
    assert res.status_code == 201, res.text
    act = res.json()
    assert act["created"] is True and act["serial"] == 1
    claims = open_machine_file(
        armor.unarmor(act["machine_file"], armor.MACHINE_FILE), ring, key, fingerprint(1)
    )
    assert claims.activation_id == act["activation_id"]
    assert claims.expires_at - claims.issued_at == 365 * 86400

    # the same device again is the same seat, with a newer file
    again = post(online.url, "/v1/activate", device_body(key, 1)).json()
    assert again["activation_id"] == act["activation_id"] and again["created"] is False
    assert again["serial"] == 2

    # renewal without a seat, with a TTL capped by the plan
    short = post(online.url, "/v1/machine-file", device_body(key, 1, ttl_s=7 * 86400)).json()
    assert short["serial"] == 3 and short["expires_at"] - short["issued_at"] == 7 * 86400
    longest = post(online.url, "/v1/machine-file", device_body(key, 1, ttl_s=999 * 86400)).json()
    assert longest["expires_at"] - longest["issued_at"] == 365 * 86400

    # validate: status and a signed time for this device and this nonce
    before = int(time.time())
    v = post(online.url, "/v1/validate", device_body(key, 1, nonce="n-1")).json()
    assert v["valid"] is True and v["code"] == "valid" and v["serial"] == 4
    t, status = verify_time_v1(base64.b64decode(v["signed_time"]), ring, fingerprint(1), "n-1")
    assert status == "active" and before - 1 <= t <= int(time.time()) + 1

    # another device's renewal is refused; an unknown device validates as not activated
    other = post(online.url, "/v1/machine-file", device_body(key, 2))
    assert other.status_code == 404 and other.json()["error"]["code"] == "activation_not_found"
    assert post(online.url, "/v1/validate", device_body(key, 2)).json()["code"] == (
        "activation_not_found"
    )

    # deactivate frees the seat; renewing after it is refused
    off = post(online.url, "/v1/deactivate", device_body(key, 1))
    assert off.status_code == 200 and off.json()["live"] is False
    gone = post(online.url, "/v1/machine-file", device_body(key, 1))
    assert gone.json()["error"]["code"] == "activation_not_found"


def test_license_states_reach_devices_with_stable_codes(online: Online) -> None:
    key = online.new_license()
    lic = license_key.license_id(key)
    assert post(online.url, "/v1/activate", device_body(key, 1)).status_code == 201

    def admin(action: str) -> None:
        res = post(online.url, f"/v1/licenses/{lic}/{action}", None, headers=online.admin)
        assert res.status_code == 200, res.text

    admin("suspend")
    refused = post(online.url, "/v1/machine-file", device_body(key, 1))
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "license_suspended")
    assert post(online.url, "/v1/validate", device_body(key, 1)).json()["code"] == (
        "license_suspended"
    )
    admin("reinstate")
    assert post(online.url, "/v1/machine-file", device_body(key, 1)).status_code == 200
    admin("revoke")
    for path in ("/v1/activate", "/v1/machine-file"):
        res = post(online.url, path, device_body(key, 3))
        assert (res.status_code, res.json()["error"]["code"]) == (403, "license_revoked")
    v = post(online.url, "/v1/validate", device_body(key, 1, nonce="x")).json()
    assert v["valid"] is False and v["code"] == "license_revoked"
    _, status = verify_time_v1(
        base64.b64decode(v["signed_time"]), keyring(online.url), fingerprint(1), "x"
    )
    assert status == "revoked"  # the device acts on this signed status, not on "code"

    expired = online.new_license(expires_at=int(time.time()) + 2)
    time.sleep(3)
    res = post(online.url, "/v1/activate", device_body(expired, 1))
    assert (res.status_code, res.json()["error"]["code"]) == (403, "license_expired")

    unknown = post(online.url, "/v1/activate", device_body("FP-AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", 1))
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "license_not_found")


def race(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """Send every body to /v1/activate at once: all threads wait on one barrier."""
    barrier = threading.Barrier(len(bodies))

    def one(body: dict[str, Any]) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            return client.post(url + "/v1/activate", json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def racing_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, hq_engine: Engine
) -> Iterator[Server]:
    """A server with one process, and with two processes sharing the database."""
    home = tmp_path_factory.mktemp("race") / "hq"
    hq_engine.configure(home)
    prepare_home(home, seats=5)
    server = start_server(home, "--workers", str(request.param))
    try:
        yield server
    finally:
        server.stop()


def test_a_hundred_and_twenty_devices_race_for_five_seats(
    racing_server: Server,
) -> None:
    server = racing_server
    key = new_key(server.home)
    results = race(server.url, [device_body(key, n) for n in range(120)])
    won = [r for r in results if r.status_code == 201]
    lost = [r for r in results if r.status_code != 201]
    assert len(won) == 5
    assert {(r.status_code, r.json()["error"]["code"]) for r in lost} == {
        (409, "seat_limit_reached")
    }
    live = db_snapshot(server.home)["activations"]
    lic = license_key.license_id(key)
    assert len([a for a in live if a[1] == lic]) == 5
    assert {a[0] for a in live if a[1] == lic} == {r.json()["activation_id"] for r in won}
    seats_used = {row[0]: row[7] for row in db_snapshot(server.home)["licenses"]}
    assert seats_used[lic] == 5  # the count the database keeps agrees


def test_one_device_activating_thirty_times_at_once_is_one_seat(
    racing_server: Server,
) -> None:
    server = racing_server
    key = new_key(server.home)
    results = race(server.url, [device_body(key, 7)] * 30)
    assert {r.status_code for r in results} == {201}
    assert len({r.json()["activation_id"] for r in results}) == 1
    assert sorted(r.json()["serial"] for r in results) == list(range(1, 31))
    assert sum(r.json()["created"] for r in results) == 1


BAD_BODIES: list[tuple[str, str, bytes, dict[str, str], int]] = [
    # (id, path, raw body, extra headers, expected status)
    ("truncated-json", "/v1/activate", b'{"license_key": "FP-', {}, 400),
    ("not-json", "/v1/activate", b"\xff\xfe garbage", {}, 400),
    ("a-list", "/v1/activate", b"[]", {}, 422),
    ("a-string", "/v1/machine-file", b'"hello"', {}, 422),
    ("null", "/v1/validate", b"null", {}, 422),
    ("empty", "/v1/activate", b"", {}, 422),
    (
        "missing-field",
        "/v1/activate",
        b'{"license_key": "FP-AAAAA-AAAAA-AAAAA-AAAAA-AAAAA"}',
        {},
        422,
    ),
    (
        "fingerprint-int",
        "/v1/activate",
        b'{"license_key": "FP-AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", "fingerprint": 7}',
        {},
        422,
    ),
    (
        "key-list",
        "/v1/activate",
        b'{"license_key": ["x"], "fingerprint": "' + b"a" * 64 + b'"}',
        {},
        422,
    ),
    (
        "fingerprint-upper",
        "/v1/deactivate",
        b'{"license_key": "FP-AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", "fingerprint": "' + b"A" * 64 + b'"}',
        {},
        422,
    ),
    (
        "ttl-string",
        "/v1/machine-file",
        b'{"license_key": "KEY", "fingerprint": "FP", "ttl_s": "10"}',
        {},
        422,
    ),
    (
        "ttl-bool",
        "/v1/machine-file",
        b'{"license_key": "KEY", "fingerprint": "FP", "ttl_s": true}',
        {},
        422,
    ),
    (
        "ttl-huge",
        "/v1/machine-file",
        b'{"license_key": "KEY", "fingerprint": "FP", "ttl_s": 1' + b"0" * 400 + b"}",
        {},
        422,
    ),
    (
        "unknown-field",
        "/v1/activate",
        b'{"license_key": "KEY", "fingerprint": "FP", "seats": 1000}',
        {},
        422,
    ),
    ("deep-nesting", "/v1/activate", b"[" * 5000 + b"]" * 5000, {}, 400),
    ("huge-body", "/v1/activate", b'{"license_key": "' + b"A" * 1_000_000 + b'"}', {}, 413),
]


def _fill(raw: bytes, key: str) -> bytes:
    return raw.replace(b'"KEY"', f'"{key}"'.encode()).replace(b'"FP"', b'"' + b"1" * 64 + b'"')


@pytest.fixture(scope="module")
def seated(online: Online) -> str:
    """A license with one device activated, so a refused call has something to damage."""
    key = online.new_license()
    assert post(online.url, "/v1/activate", device_body(key, 1)).status_code == 201
    return key


@pytest.mark.parametrize(
    ("path", "raw", "headers", "status"),
    [b[1:] for b in BAD_BODIES],
    ids=[b[0] for b in BAD_BODIES],
)
def test_bad_input_is_a_4xx_with_a_code_and_changes_nothing(
    online: Online, seated: str, path: str, raw: bytes, headers: dict[str, str], status: int
) -> None:
    before = db_snapshot(online.server.home)
    res = httpx.post(
        online.url + path,
        content=_fill(raw, seated),
        headers={"Content-Type": "application/json", **headers},
        timeout=30,
    )
    assert res.status_code == status, res.text
    assert res.json()["error"]["code"] == "invalid_request"
    assert seated not in res.text
    assert db_snapshot(online.server.home) == before


def test_a_declared_length_over_the_limit_is_refused_before_the_body(online: Online) -> None:
    """A client announcing 100 MB gets 413 at once; the server never waits for the body."""
    host, port = online.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # headers only: the server must answer without waiting for a byte of the body
        sock.sendall(
            b"POST /v1/activate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        answer = b""
        while b'"invalid_request"' not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"invalid_request"' in answer


def test_a_chunked_body_over_the_limit_is_refused_while_streaming(online: Online) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"license_key": "'
        for _ in range(100):
            yield b"A" * 1024
        yield b'"}'

    res = httpx.post(
        online.url + "/v1/activate",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert res.status_code == 413 and res.json()["error"]["code"] == "invalid_request"


def test_admin_needs_a_valid_token(online: Online) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eDp5"}):
        res = httpx.get(online.url + "/v1/licenses", headers=headers, timeout=10)
        assert (res.status_code, res.json()["error"]["code"]) == (401, "unauthorized")
    res = post(online.url, "/v1/licenses", {"plan": "std"}, headers={"Authorization": "Bearer x"})
    assert res.status_code == 401
    assert (
        httpx.get(online.url + "/v1/licenses", headers=online.admin, timeout=10).status_code == 200
    )
    bad_id = httpx.post(
        online.url + "/v1/licenses/lic_../suspend", headers=online.admin, timeout=10
    )
    assert bad_id.status_code in (404, 422) and "error" in bad_id.json()
    wrong_method = httpx.delete(online.url + "/v1/licenses", headers=online.admin, timeout=10)
    assert wrong_method.status_code == 405
    assert set(wrong_method.headers["Allow"].split(", ")) == {"GET", "POST"}


@pytest.mark.parametrize("bad", ["nl\n", "nl\r\n", "a\nb", "nl\u2028"])
def test_the_api_refuses_a_name_with_a_newline(online: Online, bad: str) -> None:
    plan = {"offline_ttl_s": 86400, "seats": 1}
    for body in ({"name": bad, **plan}, {"name": "p-nl", "product": bad, **plan}):
        res = post(online.url, "/v1/plans", body, headers=online.admin)
        assert res.status_code == 422, res.text
    lic = {"plan": "std", "entitlements": [{"feature": bad}]}
    assert post(online.url, "/v1/licenses", lic, headers=online.admin).status_code == 422
    names = {p["name"] for p in httpx.get(online.url + "/v1/plans", headers=online.admin).json()}
    assert not [n for n in names if not n.isprintable()]


def test_a_returned_device_gets_no_file_over_http_until_its_seat_frees(online: Online) -> None:
    """A device that gave its license back without a TPM (the receipt HQ recorded; its
    seat frees at its file's expiry and grace) is refused a renewal and a reactivation
    with 409 ``activation_returned`` (a copy of its data put back must not outlive the
    seat); once the operator frees the seat, the device activates anew."""
    from provisioning.models import Actor, ReturnRecord
    from provisioning.services import HQ

    key = online.new_license()
    act = post(online.url, "/v1/activate", device_body(key, 1)).json()
    now = int(time.time())
    hq = HQ(online.server.home)
    try:
        with hq.store.write() as tx:  # what a receipt records for a device without a TPM
            rec = ReturnRecord(
                act["activation_id"], 1, now, now, "http", "-", act["expires_at"], None
            )
            tx.insert_return(rec)
        for path in ("/v1/machine-file", "/v1/activate"):
            res = post(online.url, path, device_body(key, 1))
            error = res.json()["error"]
            assert (res.status_code, error["code"]) == (409, "activation_returned"), res.text
            assert f"fieldpass-hq deactivate {act['activation_id']} --reason" in error["message"]
        assert hq.get_activation(act["activation_id"]).serial == 1  # nothing issued
        hq.deactivate(now, Actor("test", "local"), activation_id=act["activation_id"], reason="t")
    finally:
        hq.store.close()
    fresh = post(online.url, "/v1/activate", device_body(key, 1))
    assert fresh.status_code == 201 and fresh.json()["created"] is True
    assert fresh.json()["activation_id"] != act["activation_id"]


def _keyed_activation(
    online: Online, key: str, n: int, device: DeviceKey | None = None, counter: int | None = None
) -> tuple[DeviceKey, str]:
    """A device activated as ``fieldpass activate`` does (its own key, self-signed;
    ``counter``: its state bound to its TPM counter)."""
    device = device or DeviceKey.generate()
    msg = device_msg.sign(
        device,
        "activate",
        {"activation_id": "", "fingerprint": fingerprint(n), "at": int(time.time()),
         "agent_version": "test", "license_id": license_key.license_id(key),
         "device_key": device.public_key, "counter": counter, "nonce": f"n{n}",
         "device_name": "", "formats": [1, 2]},
    )  # fmt: skip
    body = {"license_key": key, "request": base64.b64encode(msg).decode()}
    res = post(online.url, "/v1/activate", body)
    assert res.status_code == 201, res.text
    return device, str(res.json()["activation_id"])


def _receipt(device: DeviceKey, activation_id: str, n: int) -> bytes:
    now = int(time.time())
    return device_msg.sign(
        device,
        "receipt",
        {"activation_id": activation_id, "fingerprint": fingerprint(n), "at": now,
         "agent_version": "test", "serial": 1, "returned_at": now, "reason": "returned",
         "device_key": None, "proof": None},
    )  # fmt: skip


def test_hostile_receipts_get_a_documented_status_and_change_nothing(online: Online) -> None:
    """``POST /v1/receipt`` with another device's activation (of this license or
    another), a stranger's key, a cut, oversized or deeply nested message: each refused
    with a one-line error whose status the route's OpenAPI document names; no return is
    recorded and no seat freed. The device's own receipt then frees once; a replay is
    409 ``conflict``."""
    key, other_key = online.new_license(), online.new_license()
    a, a_id = _keyed_activation(online, key, 1)
    _, b_id = _keyed_activation(online, key, 2)
    _, c_id = _keyed_activation(online, other_key, 3)
    nested = b"\x81" * 500 + b"\x00"
    hostile = {
        "names another device's activation": _receipt(a, b_id, 2),
        "names another activation, its own device": _receipt(a, b_id, 1),
        "names another license's activation": _receipt(a, c_id, 3),
        "signed by a stranger": _receipt(DeviceKey.generate(), a_id, 1),
        "cut short": _receipt(a, a_id, 1)[:-7],
        "oversized": b"\xa0" * 3000,
        "nested": nested,
        "nested inside a signature": cbor.dumps(
            {"kid": a.kid, "msg": nested, "sig": a.sign(b"fieldpass/device/" + nested)}
        ),
    }
    spec = httpx.get(online.url + "/openapi.json", timeout=10).json()
    documented = {int(s) for s in spec["paths"]["/v1/receipt"]["post"]["responses"]}
    before = db_snapshot(online.server.home)
    for what, data in hostile.items():
        res = post(online.url, "/v1/receipt", {"request": base64.b64encode(data).decode()})
        error = res.json()["error"]
        assert res.status_code in documented - {200}, (what, res.status_code, res.text)
        assert error["code"] and "\n" not in error["message"], what
    after = db_snapshot(online.server.home)
    for table in ("returns", "activations", "licenses"):
        assert after[table] == before[table], table
    own = {"request": base64.b64encode(_receipt(a, a_id, 1)).decode()}
    assert post(online.url, "/v1/receipt", own).status_code == 200
    again = post(online.url, "/v1/receipt", own)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "conflict")
    assert [r[0] for r in db_snapshot(online.server.home)["returns"]].count(a_id) == 1


def test_a_receipt_replayed_after_the_device_activated_anew_is_the_one_hq_holds(
    online: Online,
) -> None:
    """A device bound to its TPM gives its license back (the seat frees at once) and
    activates anew with the same device key (a new activation): its kept copy of the
    old receipt, sent again (its daemon, a laptop's report), is answered as before the
    new activation, 409 ``conflict`` (HQ holds it: the device drops its copy), not as a
    receipt naming another activation than its key's; nothing changes."""
    key = online.new_license()
    device, old_id = _keyed_activation(online, key, 1, counter=5)
    receipt = {"request": base64.b64encode(_receipt(device, old_id, 1)).decode()}
    taken = post(online.url, "/v1/receipt", receipt)
    assert taken.status_code == 200 and taken.json()["freed"] is True, taken.text
    _, new_id = _keyed_activation(online, key, 1, device=device, counter=6)
    assert new_id != old_id
    before = db_snapshot(online.server.home)
    again = post(online.url, "/v1/receipt", receipt)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "conflict"), again.text
    after = db_snapshot(online.server.home)
    for table in ("returns", "activations", "licenses"):
        assert after[table] == before[table], table


def test_the_answers_that_settle_a_receipt_carry_hqs_signed_acknowledgement_of_it(
    online: Online,
) -> None:
    """``POST /v1/receipt``: HQ takes a receipt (200), holds it already (409
    ``conflict``), or has nothing left to free because the operator freed the seat by
    hand (404 ``activation_not_found``): each answer carries ``ack``, HQ's signed status
    bound to ``ack_nonce`` of that very receipt, which verifies against HQ's keyring for
    that device and activation, and for no other receipt. A refusal that settles nothing
    (another device's receipt, 403) carries none. Before, no answer was signed."""
    from agent.daemon.topics import ack_nonce
    from agent.wire.errors import WireError

    ring = keyring(online.url)
    key = online.new_license()
    a, a_id = _keyed_activation(online, key, 1, counter=5)
    b, b_id = _keyed_activation(online, key, 2)
    taken_receipt, freed_receipt = _receipt(a, a_id, 1), _receipt(b, b_id, 2)
    hq_cli(online.server.home, "deactivate", b_id, "--reason", "freed by hand, ticket 7")

    def ack(res: httpx.Response, receipt: bytes, n: int, act: str) -> str:
        token = base64.b64decode(res.json()["ack"])
        lic = license_key.license_id(key)
        for other in (receipt + b"x", b""):  # for this very receipt only
            with pytest.raises(WireError):
                verify_time(token, ring, fingerprint(n), ack_nonce(other), license_id=lic,
                            activation_id=act)  # fmt: skip
        nonce = ack_nonce(receipt)
        signed = verify_time(token, ring, fingerprint(n), nonce, license_id=lic, activation_id=act)
        return signed.status

    body = {"request": base64.b64encode(taken_receipt).decode()}
    taken = post(online.url, "/v1/receipt", body)
    assert taken.status_code == 200 and taken.json()["freed"] is True, taken.text
    assert ack(taken, taken_receipt, 1, a_id) == "deactivated"
    again = post(online.url, "/v1/receipt", body)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "conflict"), again.text
    assert ack(again, taken_receipt, 1, a_id) == "deactivated"
    freed = post(online.url, "/v1/receipt", {"request": base64.b64encode(freed_receipt).decode()})
    assert (freed.status_code, freed.json()["error"]["code"]) == (404, "activation_not_found")
    assert ack(freed, freed_receipt, 2, b_id) == "deactivated"
    foreign = post(
        online.url, "/v1/receipt", {"request": base64.b64encode(_receipt(a, b_id, 2)).decode()}
    )
    assert foreign.status_code in (401, 403) and "ack" not in foreign.json(), foreign.text


def test_the_audit_log_says_who_when_and_from_where(online: Online) -> None:
    key = online.new_license()
    lic = license_key.license_id(key)
    t0 = int(time.time())
    post(online.url, "/v1/activate", device_body(key, 1))
    post(online.url, "/v1/machine-file", device_body(key, 1))
    post(online.url, f"/v1/licenses/{lic}/suspend", None, headers=online.admin)
    post(online.url, f"/v1/licenses/{lic}/reinstate", None, headers=online.admin)
    post(online.url, "/v1/deactivate", device_body(key, 1))
    post(online.url, f"/v1/licenses/{lic}/revoke", None, headers=online.admin)
    res = httpx.get(
        online.url + "/v1/audit",
        params={"license_id": lic, "limit": 50},
        headers=online.admin,
        timeout=10,
    )
    events = sorted(res.json(), key=lambda e: e["id"])
    assert [e["action"] for e in events] == [
        "license_create",
        "activate",
        "renew",
        "suspend",
        "reinstate",
        "deactivate",
        "revoke",
    ]
    for e in events:
        assert e["source"] == "127.0.0.1" and t0 - 1 <= e["at"] <= int(time.time()) + 1
    assert {e["actor"] for e in events if e["action"] in ("activate", "renew", "deactivate")} == {
        "device"
    }
    assert {e["actor"] for e in events if e["action"] in ("suspend", "revoke")} == {"token:tests"}
    # the CLI reads the same log
    assert "reinstate" in hq_cli(online.server.home, "audit", "--license", lic)
    # and it is append-only in the database itself
    with connect(online.server.home) as conn:
        for statement in ("DELETE FROM audit", "UPDATE audit SET actor = 'x'"):
            with pytest.raises(Exception, match="append-only"):
                conn.execute(statement)
        if url_of(online.server.home) is not None:
            with pytest.raises(Exception, match="append-only"):
                conn.execute("TRUNCATE audit")


def test_no_secret_in_the_server_log(online: Online, seated: str) -> None:
    key = online.new_license()
    post(online.url, "/v1/activate", device_body(key, 1))
    post(online.url, "/v1/activate", {"license_key": key, "fingerprint": "bad"})
    log = online.server.log.read_text()
    assert "/v1/activate" in log  # the access log is on
    for secret in (key, seated, online.token):
        assert secret not in log
    assert "Traceback" not in log


def activate_until_killed(
    url: str, key: str, first: int, stop: threading.Event, answered: set[str]
) -> None:
    """Activate devices first, first+16, ... until the server goes away; collect the
    activation ids the server answered (set.add is atomic under the GIL)."""
    i = first
    with httpx.Client(timeout=10) as c:
        while not stop.is_set():
            try:
                r = c.post(url + "/v1/activate", json=device_body(key, i))
            except httpx.TransportError:
                return
            if r.status_code == 201:
                answered.add(r.json()["activation_id"])
            i += 16


def test_sigkill_mid_activation_leaves_no_half_activation(
    tmp_path: Path, hq_engine: Engine
) -> None:
    """Activations stream in from 16 clients while the server is SIGKILLed at a random
    moment, five times over: every answered activation is in the database after the
    restart (synchronous=FULL), and every activation in it is whole (a serial, an
    issued file's expiry, its audit entry) with the seat limit kept."""
    home = tmp_path / "hq"
    hq_engine.configure(home)
    prepare_home(home, seats=100_000)
    key = new_key(home)
    rng = random.Random()
    answered: set[str] = set()
    n = 0
    for _ in range(5):
        server = start_server(home)
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=activate_until_killed, args=(server.url, key, n + k, stop, answered)
            )
            for k in range(16)
        ]
        before = len(answered)
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30  # a loaded machine: let the first answers come
        while len(answered) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        server.kill()
        stop.set()
        for t in threads:
            t.join(timeout=30)
        n += 16 * 1000
    snap = db_snapshot(home)
    acts = {row[0]: row for row in snap["activations"]}
    assert answered and answered <= set(acts)
    audited = {row[6] for row in snap["audit"] if row[4] == "activate"}
    assert audited == set(acts)
    for row in acts.values():
        _id, _lic, _fp, serial, created, issued, expires, _off = row[:8]
        assert serial >= 1 and issued >= created and expires > issued
    if url_of(home) is None:
        conn = sqlite3.connect(home / DB)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()
    seats_used = {row[0]: row[7] for row in snap["licenses"]}
    assert seats_used[license_key.license_id(key)] == len(acts)
    # and the restarted server goes on serving the same license
    server = start_server(home)
    try:
        res = post(server.url, "/v1/activate", device_body(key, 1))
        assert res.status_code in (201, 409)
    finally:
        server.stop()


def test_the_access_log_can_be_left_to_the_proxy(tmp_path: Path, hq_engine: Engine) -> None:
    home = tmp_path / "hq"
    hq_engine.configure(home)
    prepare_home(home)
    server = start_server(home, "--no-access-log")
    try:
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        assert post(server.url, "/v1/activate", {}).status_code == 422
    finally:
        server.stop()
    log = server.log.read_text()
    assert "Uvicorn running" in log or "Application startup complete" in log
    assert "/healthz" not in log and "/v1/activate" not in log
