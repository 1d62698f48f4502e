"""Several ``fieldpass-hq serve`` processes sharing one PostgreSQL, as replicas on
several hosts would: the seat rule, the serials, return receipts and the plan's return
limit, and the audit log hold across them
(the database's row lock, no lock in any process), and each answers ``/healthz`` and
``/readyz`` for a load balancer."""

import base64
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.wire import device_msg, license_key
from agent.wire.device_key import DeviceKey
from tests.engines import snapshot
from tests.pg_server import Postgres

from .conftest import fingerprint
from .server import Server, hq_cli, hq_json, prepare_home, start_server

REPLICAS = 3
DEVICES = 300
SEATS = 5


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: Postgres
) -> Iterator[list[Server]]:
    """Three servers, each with its own home (as on its own host: the same signing key
    and license-key secret copied into it) and one shared database."""
    base = tmp_path_factory.mktemp("replicas")
    url = postgres_server.database()
    homes = [base / f"host{n}" for n in range(REPLICAS)]
    for home in homes:
        home.mkdir()
        (home / "hq.toml").write_text(f'[database]\nurl = "{url}"\n')
    prepare_home(homes[0], seats=SEATS)
    for home in homes[1:]:
        (home / "keys").mkdir(mode=0o700)
        for seed in (homes[0] / "keys").iterdir():
            (home / "keys" / seed.name).write_bytes(seed.read_bytes())
        secret = homes[0] / "license-keys.secret"
        (home / secret.name).write_bytes(secret.read_bytes())
    servers = [start_server(home) for home in homes]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_three_replicas_race_three_hundred_devices_for_five_seats(
    replicas: list[Server],
) -> None:
    key = str(hq_json(replicas[0].home, "licenses", "create", "--plan", "std")["key"])
    barrier = threading.Barrier(DEVICES)

    def one(n: int) -> tuple[int, httpx.Response]:
        url = replicas[n % REPLICAS].url
        with httpx.Client(timeout=120) as client:
            barrier.wait()
            res = client.post(
                url + "/v1/activate", json={"license_key": key, "fingerprint": fingerprint(n)}
            )
            return n, res

    with ThreadPoolExecutor(DEVICES) as pool:
        results = list(pool.map(one, range(DEVICES)))
    won = [(n, r) for n, r in results if r.status_code == 201]
    lost = [r for _, r in results if r.status_code != 201]
    assert len(won) == SEATS
    assert {(r.status_code, r.json()["error"]["code"]) for r in lost} == {
        (409, "seat_limit_reached")
    }
    assert len({n % REPLICAS for n, _ in won}) >= 1
    snap = snapshot(replicas[0].home)
    lic = license_key.license_id(key)
    rows = {a[0]: a for a in snap["activations"] if a[1] == lic}
    answered = {r.json()["activation_id"]: (n, r.json()) for n, r in won}
    assert set(rows) == set(answered)  # every 201 has its row, and nothing else does
    for act_id, (n, doc) in answered.items():
        assert rows[act_id][2] == fingerprint(n) and rows[act_id][3] == doc["serial"] == 1
    audited = [a for a in snap["audit"] if a[4] == "activate" and a[5] == lic]
    assert sorted(a[6] for a in audited) == sorted(answered)  # one audit line each
    assert {row[0]: row[7] for row in snap["licenses"]}[lic] == SEATS


def test_one_device_on_every_replica_at_once_gets_one_seat_and_serials_in_order(
    replicas: list[Server],
) -> None:
    key = str(hq_json(replicas[0].home, "licenses", "create", "--plan", "std")["key"])
    body: dict[str, Any] = {"license_key": key, "fingerprint": fingerprint(7)}
    barrier = threading.Barrier(30)

    def one(n: int) -> httpx.Response:
        with httpx.Client(timeout=120) as client:
            barrier.wait()
            return client.post(replicas[n % REPLICAS].url + "/v1/activate", json=body)

    with ThreadPoolExecutor(30) as pool:
        results = list(pool.map(one, range(30)))
    assert {r.status_code for r in results} == {201}
    assert len({r.json()["activation_id"] for r in results}) == 1
    assert sorted(r.json()["serial"] for r in results) == list(range(1, 31))


def test_every_replica_is_live_and_ready(replicas: list[Server]) -> None:
    for server in replicas:
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        ready = httpx.get(server.url + "/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_readyz_says_not_ready_when_the_database_is_gone(tmp_path: Path) -> None:
    """A server whose PostgreSQL stops: /healthz (the process) stays 200, /readyz
    turns 503 without naming the database; when it is back, ready again."""
    pg = Postgres().start()
    try:
        home = tmp_path / "hq"
        home.mkdir()
        (home / "hq.toml").write_text(f'[database]\nurl = "{pg.database()}"\n')
        prepare_home(home)
        server = start_server(home)
        try:
            assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
            pg.terminate()
            gone = httpx.get(server.url + "/readyz", timeout=60)
            assert gone.status_code == 503 and gone.json()["error"]["code"] == "not_ready"
            assert pg.password not in gone.text and str(pg.port) not in gone.text
            assert httpx.get(server.url + "/healthz", timeout=60).status_code in (200, 503)
            pg.spawn()
            deadline = time.monotonic() + 60
            while httpx.get(server.url + "/readyz", timeout=60).status_code != 200:
                assert time.monotonic() < deadline, "not ready again after the restart"
                time.sleep(0.5)
        finally:
            server.stop()
        assert pg.password not in server.log.read_text()
    finally:
        pg.stop()


def test_postgresql_crashing_mid_activation_loses_nothing_answered(tmp_path: Path) -> None:
    """Activations stream in while PostgreSQL itself stops dead (immediate shutdown:
    no checkpoint, WAL buffers not written, as in a crash), three times: after each
    restart every activation answered 201 is there, whole, with its audit line. (A
    commit answered before its WAL flush would be lost here.)"""
    import random

    pg = Postgres().start()
    try:
        home = tmp_path / "hq"
        home.mkdir()
        (home / "hq.toml").write_text(f'[database]\nurl = "{pg.database()}"\n')
        prepare_home(home, seats=100_000)
        key = str(hq_json(home, "licenses", "create", "--plan", "std")["key"])
        server = start_server(home, "--workers", "2")
        answered: set[str] = set()
        rng = random.Random()
        try:
            for round_ in range(3):
                stop, streaming = threading.Event(), threading.Event()

                def stream(first: int, stop: threading.Event = stop,
                           streaming: threading.Event = streaming) -> None:  # fmt: skip
                    n = first
                    with httpx.Client(timeout=60) as client:
                        while not stop.is_set():
                            try:
                                res = client.post(
                                    server.url + "/v1/activate",
                                    json={"license_key": key, "fingerprint": fingerprint(n)},
                                )
                            except httpx.TransportError:
                                continue
                            if res.status_code == 201:
                                answered.add(res.json()["activation_id"])
                                streaming.set()
                            n += 16

                threads = [
                    threading.Thread(target=stream, args=(round_ * 10**6 + k,)) for k in range(16)
                ]
                for t in threads:
                    t.start()
                assert streaming.wait(60)
                time.sleep(rng.uniform(0.05, 0.5))
                assert pg.proc is not None
                pg.proc.send_signal(signal.SIGQUIT)  # immediate shutdown
                pg.proc.wait(30)
                stop.set()
                pg.spawn()  # the server's pool reconnects; waiting requests go on
                for t in threads:
                    t.join(90)
        finally:
            server.stop()
        snap = snapshot(home)
        acts = {a[0] for a in snap["activations"]}
        assert answered and answered <= acts
        assert {a[6] for a in snap["audit"] if a[4] == "activate"} == acts
        assert {r[0]: r[7] for r in snap["licenses"]}[license_key.license_id(key)] == len(acts)
    finally:
        pg.stop()


def _signed_activation(key: str, device: DeviceKey, fp: str) -> str:
    """What ``fieldpass activate`` sends in ``request``: the device's self-signed
    message, bound to its TPM counter."""
    msg = device_msg.sign(
        device,
        "activate",
        {"activation_id": "", "fingerprint": fp, "at": int(time.time()),
         "agent_version": "test", "license_id": license_key.license_id(key),
         "device_key": device.public_key, "counter": 7, "nonce": secrets.token_hex(8),
         "device_name": "", "formats": [1, 2]},
    )  # fmt: skip
    return base64.b64encode(msg).decode()


def test_a_relayed_swap_sent_to_every_replica_at_once_takes_its_receipt_once(
    replicas: list[Server],
) -> None:
    """A laptop whose relay timed out runs it again (it is safe, it says) while HQ is
    still answering the first: every copy of the same swap, on every replica at once,
    is answered as the same swap run again is, the receipt taken and audited once."""
    key = str(hq_json(replicas[0].home, "licenses", "create", "--plan", "std")["key"])
    old = DeviceKey.generate()
    first = httpx.post(
        replicas[0].url + "/v1/activate",
        json={"license_key": key, "request": _signed_activation(key, old, fingerprint(1))},
        timeout=60,
    )
    assert first.status_code == 201, first.text
    old_act = first.json()["activation_id"]
    now = int(time.time())
    receipt = device_msg.sign(
        old,
        "receipt",
        {"activation_id": old_act, "fingerprint": fingerprint(1), "at": now,
         "agent_version": "test", "serial": 1, "returned_at": now, "reason": "returned",
         "device_key": None, "proof": None},
    )  # fmt: skip
    body = {
        "license_key": key,
        "request": _signed_activation(key, DeviceKey.generate(), fingerprint(2)),
        "receipts": [base64.b64encode(receipt).decode()],
    }
    copies = 12
    barrier = threading.Barrier(copies)

    def one(n: int) -> httpx.Response:
        with httpx.Client(timeout=120) as client:
            barrier.wait()
            return client.post(replicas[n % REPLICAS].url + "/v1/activate", json=body)

    with ThreadPoolExecutor(copies) as pool:
        results = list(pool.map(one, range(copies)))
    assert [r.status_code for r in results] == [201] * copies, {r.text for r in results}
    assert len({r.json()["activation_id"] for r in results}) == 1
    taken = [r.json()["receipts"] for r in results]
    assert all(t[0]["activation_id"] == old_act and t[0]["freed"] for t in taken)
    assert sorted(t[0]["taken_before"] for t in taken) == [False] + [True] * (copies - 1)
    snap = snapshot(replicas[0].home)
    assert [r[0] for r in snap["returns"]].count(old_act) == 1
    assert [(a[4], a[6]) for a in snap["audit"]].count(("return", old_act)) == 1


def test_receipts_raced_on_every_replica_free_once_and_keep_the_return_limit(
    replicas: list[Server],
) -> None:
    """Four TPM-bound devices of one license (a plan allowing one return a year) each
    post their receipt three times, on every replica at once: one receipt is taken
    (200, its seat freed, one return row, one ``return`` audit line); the copies of it
    are 409 ``conflict``, every other receipt 409 ``return_limit_reached``; the seats
    the database counts agree with the live activations."""
    home = replicas[0].home
    hq_cli(home, "plans", "create", "ret", "--offline-ttl", "365d", "--seats", "4")
    hq_cli(home, "usage", "terms", "ret", "--returns-per-year", "1")
    key = str(hq_json(home, "licenses", "create", "--plan", "ret")["key"])
    now = int(time.time())
    bodies = []
    for n in range(4):
        device = DeviceKey.generate()
        res = httpx.post(
            replicas[0].url + "/v1/activate",
            json={"license_key": key, "request": _signed_activation(key, device, fingerprint(n))},
            timeout=60,
        )
        assert res.status_code == 201, res.text
        receipt = device_msg.sign(
            device,
            "receipt",
            {"activation_id": res.json()["activation_id"], "fingerprint": fingerprint(n),
             "at": now, "agent_version": "test", "serial": 1, "returned_at": now,
             "reason": "returned", "device_key": None, "proof": None},
        )  # fmt: skip
        bodies += [{"request": base64.b64encode(receipt).decode()}] * 3
    barrier = threading.Barrier(len(bodies))

    def one(n: int) -> httpx.Response:
        with httpx.Client(timeout=120) as client:
            barrier.wait()
            return client.post(replicas[n % REPLICAS].url + "/v1/receipt", json=bodies[n])

    with ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(one, range(len(bodies))))
    taken = [r for r in results if r.status_code == 200]
    assert len(taken) == 1 and taken[0].json()["freed"] is True
    winner = taken[0].json()["activation_id"]
    codes = sorted((r.status_code, r.json()["error"]["code"]) for r in results if r not in taken)
    assert codes == [(409, "conflict")] * 2 + [(409, "return_limit_reached")] * 9
    snap = snapshot(home)
    lic = license_key.license_id(key)
    mine = {a[0] for a in snap["activations"] if a[1] == lic}
    assert [r[0] for r in snap["returns"] if r[0] in mine] == [winner]
    assert [a[6] for a in snap["audit"] if a[4] == "return" and a[6] in mine] == [winner]
    live = [a for a in snap["activations"] if a[1] == lic and a[7] is None]
    assert {r[0]: r[7] for r in snap["licenses"]}[lic] == len(live) == 3


def test_a_due_return_raced_on_every_replica_frees_its_seat_once(
    replicas: list[Server],
) -> None:
    """A device without a TPM gave its license back, and its seat's time came
    (``frees_at`` past): twelve new devices activate on every replica at once, for a
    license of two seats. The first to hold the license's lock frees the returned seat
    (one ``return_freed`` audit line) and takes it; one more takes the other seat; the
    rest are refused ``seat_limit_reached``; the seats the database counts agree."""
    from provisioning.models import Actor, Plan
    from provisioning.services import HQ

    from .fleet import SeedDevice

    home = replicas[0].home
    hq = HQ(home)
    try:
        day, then = 86400, int(time.time()) - 10 * 86400
        plan = f"due{time.monotonic_ns()}"
        hq.create_plan(Plan(plan, "default", day, 0, 2, None, then), Actor("test", "local"))
        key = hq.create_license(plan, [], None, then, Actor("test", "local")).license_key
        returned = SeedDevice(hq, key, fingerprint(900), then)
        returned.give_back(then + 3600, "http")  # frees at its file's expiry: 9 days ago
        act_id = returned.act.id
    finally:
        hq.store.close()
    racers = 12
    barrier = threading.Barrier(racers)

    def one(n: int) -> httpx.Response:
        body = {
            "license_key": key,
            "request": _signed_activation(key, DeviceKey.generate(), fingerprint(901 + n)),
        }
        with httpx.Client(timeout=120) as client:
            barrier.wait()
            return client.post(replicas[n % REPLICAS].url + "/v1/activate", json=body)

    with ThreadPoolExecutor(racers) as pool:
        results = list(pool.map(one, range(racers)))
    codes = sorted(r.status_code for r in results)
    assert codes == [201] * 2 + [409] * (racers - 2), {r.text for r in results}
    snap = snapshot(home)
    lic = license_key.license_id(key)
    freed = [a for a in snap["audit"] if a[4] == "return_freed" and a[5] == lic]
    assert [a[6] for a in freed] == [act_id]
    live = [a for a in snap["activations"] if a[1] == lic and a[7] is None]
    assert {r[0]: r[7] for r in snap["licenses"]}[lic] == len(live) == 2
