"""The laptop (``fieldpass-hq field serve``) against hostile and slow clients, over real
sockets (issue 13): every request bounded in size, nesting and time, answered 4xx with
the error JSON and never a traceback, and no client, slow or hostile, stops it serving
the others. Bad bundles are bad input (exit 65) with a sentence.

Clients come from several 127.x.y.z source addresses: to the laptop, several hosts."""

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HQ, DeviceRoot
from tests.laptop import (
    Laptop,
    Site,
    connect,
    error_code,
    exchange,
    laptop,
    make_site,
    post,
    read_answer,
    status_of,
)

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    where = tmp_path_factory.mktemp("site")
    return make_site(HQ(where / "hq-home"), where)


@pytest.fixture
def served(site: Site, tmp_path: Path) -> Iterator[Laptop]:
    with laptop(site.bundle, tmp_path / "site.report", "--header-timeout", "3") as lp:
        yield lp
    assert "Traceback" not in lp.stderr, lp.stderr


def test_a_body_of_unknown_length_is_refused_before_it_is_read(served: Laptop) -> None:
    before = served.proc_status()["VmRSS"]
    head = b"POST /v1/machine-file HTTP/1.1\r\nHost: laptop\r\nContent-Length: -1\r\n\r\n"
    sent = 0
    with connect(served.port) as s:
        s.settimeout(30)
        try:
            s.sendall(head)
            while sent < 40 * MIB:
                s.sendall(b"x" * MIB)
                sent += MIB
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the laptop answered and stopped reading
        answer = read_answer(s, 30)
    assert sent < 40 * MIB, "the laptop read a body of unknown length to its end"
    if answer:  # the answer can be lost to the reset of a body it would not read
        assert status_of(answer) == 400 and error_code(answer) == "invalid_request"
    assert served.alive()
    assert served.proc_status()["VmRSS"] - before < 8 * 1024  # kB: nothing was kept


MALFORMED = {
    "a length that is no number": (
        b"POST /v1/machine-file HTTP/1.1\r\nHost: l\r\nContent-Length: abc\r\n\r\n{}",
        400,
    ),
    "a negative length": (
        b"POST /v1/status HTTP/1.1\r\nHost: l\r\nContent-Length: -5\r\n\r\n{}",
        400,
    ),
    "two lengths": (
        b"POST /v1/status HTTP/1.1\r\nHost: l\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        400,
    ),
    "no length": (b"POST /v1/challenge HTTP/1.1\r\nHost: l\r\n\r\n{}", 411),
    "a chunked body": (
        b"POST /v1/challenge HTTP/1.1\r\nHost: l\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n",
        411,
    ),
    "another transfer coding": (  # h11 hints 501: the peer's fault all the same
        b"POST /v1/challenge HTTP/1.1\r\nHost: l\r\nTransfer-Encoding: gzip\r\n\r\n{}",
        411,
    ),
    "a length over the limit": (
        b"POST /v1/machine-file HTTP/1.1\r\nHost: l\r\nContent-Length: 99999999\r\n\r\n{",
        413,
    ),
    "a head over the limit": (
        b"POST /v1/challenge HTTP/1.1\r\nHost: l\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n",
        431,
    ),
    "garbage": (b"\x00\xff garbage \r\n\r\n", 400),
    "nested arrays": (post("/v1/machine-file", b"[" * 16_000), 400),
    "nested in a field": (
        post("/v1/validate", b'{"request": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"),
        400,
    ),
    "nested objects": (post("/v1/status", b'{"a":' * 2_000 + b"1" + b"}" * 2_000), 400),
    "not UTF-8": (post("/v1/challenge", b'{"a": "\xff\xfe"}'), 400),
    "not an object": (post("/v1/challenge", b'["challenge"]'), 400),
    "a huge number": (post("/v1/machine-file", b'{"fingerprint": ' + b"9" * 5_000 + b"}"), 400),
    "an unknown route": (post("/v1/../../etc/passwd", b"{}"), 404),
    "another method": (
        b"PUT /v1/machine-file HTTP/1.1\r\nHost: l\r\nContent-Length: 2\r\n\r\n{}",
        405,
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_request_gets_an_answer_never_a_traceback(served: Laptop, case: str) -> None:
    request, status = MALFORMED[case]
    answer = exchange(served.port, request)
    assert status_of(answer) == status, answer[:300]
    assert error_code(answer)  # the error JSON
    assert served.alive()
    served.stop()
    assert "Traceback" not in served.stderr and "Error" not in served.stderr, served.stderr
    assert served.report()["served_unconfirmed"] == [] and served.report()["pickups"] == []


def test_a_truncated_request_is_never_handled(site: Site, served: Laptop) -> None:
    fp = site.fingerprints[0]
    body = json.dumps({"license_key": site.key, "fingerprint": fp}).encode()
    whole = exchange(served.port, post("/v1/machine-file", body))
    assert status_of(whole) == 200  # the complete request of an agent of 0.1.0 is served
    lp2 = site.fingerprints[1]
    body = json.dumps({"license_key": site.key, "fingerprint": lp2}).encode()
    head = post("/v1/machine-file", b"").replace(b"Content-Length: 0", b"Content-Length: 500")
    assert exchange(served.port, head + body) == b""  # closed before the 500 bytes came
    served.stop()
    served_to = [r["fingerprint"] for r in served.report()["served_unconfirmed"]]
    assert served_to == [fp]


def test_slow_clients_never_stop_the_laptop_serving_a_device(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    from tests.test_field import activated_fleet, on_site

    _, (robot,) = activated_fleet(hq, make_device, 1, tmp_path)
    bundle = tmp_path / "b"
    hq.run("field", "export", "--all", "-o", str(bundle))
    limits = ("--header-timeout", "4", "--body-timeout", "4")
    with laptop(bundle, tmp_path / "r", *limits) as lp:
        slow = []
        for i in range(300):  # ten hosts, thirty connections each
            s = connect(lp.port, f"127.0.0.{2 + i % 10}")
            if i % 3 == 0:
                s.sendall(b"POST /v1/machine-file HTTP/1.1\r\nHost: l\r\n")  # a head, unended
            elif i % 3 == 1:
                s.sendall(post("/v1/machine-file", b"").replace(b": 0", b": 900") + b'{"a')
            slow.append(s)  # else: connected, says nothing
        on_site(robot, lp.url)
        renewed = robot.run("refresh")
        assert renewed.returncode == 0, renewed.stderr
        assert lp.proc_status()["Threads"] <= 4  # not a thread per connection
        for s in slow:  # each cut off at its deadline, with an answer
            answer = read_answer(s, 30)
            assert status_of(answer) == 408 and error_code(answer) == "request_timeout"
            s.close()
        assert lp.alive()
    assert [p["fingerprint"] for p in lp.report()["pickups"]] == [robot.fingerprint]


def test_one_host_cannot_take_every_connection(served: Laptop) -> None:
    held = [connect(served.port, "127.0.0.2") for _ in range(50)]  # accepted in order
    refused = connect(served.port, "127.0.0.2")
    answer = read_answer(refused, 10)
    assert status_of(answer) == 429 and error_code(answer) == "busy"
    other = exchange(served.port, b"GET /healthz HTTP/1.1\r\nHost: l\r\n\r\n", "127.0.0.3")
    assert status_of(other) == 200
    for s in [*held, refused]:
        s.close()


def test_a_flood_of_challenges_from_one_host_leaves_others_theirs(served: Laptop) -> None:
    asks = [exchange(served.port, post("/v1/challenge", b"{}"), "127.0.0.4") for _ in range(70)]
    statuses = [status_of(a) for a in asks]
    assert statuses.count(200) == 64 and statuses[-1] == 429
    mine = exchange(served.port, post("/v1/challenge", b"{}"), "127.0.0.5")
    assert status_of(mine) == 200


BAD_BUNDLES: dict[str, Callable[[dict[str, Any]], object]] = {
    "no devices": lambda b: b.pop("devices"),
    "a device without fingerprint": lambda b: b["devices"][0].pop("fingerprint"),
    "a dict where the list belongs": lambda b: b.update(devices={"a": 1}),
    "a list where an entry belongs": lambda b: b["devices"].__setitem__(0, [1]),
    "a time that is a word": lambda b: b.update(created_at="yesterday"),
    "a serial that is text": lambda b: b["devices"][0].update(serial="12"),
    "a newline in a text": lambda b: b.update(created_by="eve\nfield_pickup"),
    "an armor of another kind": lambda b: b["devices"][0].update(machine_file="hello"),
    "a device twice": lambda b: b["devices"].append(b["devices"][0]),
    "a bad device key": lambda b: b["devices"][0].update(device_key="AAAA"),
    "a year 2100 expiry": lambda b: b["devices"][0].update(expires_at=4_102_444_801),
}


@pytest.mark.parametrize("case", sorted(BAD_BUNDLES))
def test_a_malformed_bundle_is_bad_input(site: Site, tmp_path: Path, case: str) -> None:
    doc = json.loads(site.bundle.read_text())
    BAD_BUNDLES[case](doc)
    bad = tmp_path / "bad.bundle"
    bad.write_text(json.dumps(doc))
    result = site.hq.run("field", "serve", str(bad), "--duration", "1", check=False)
    assert result.returncode == 65, result.stderr
    assert result.stderr.startswith("fieldpass-hq: error: ") and result.stderr.count("\n") == 1
    assert str(bad) in result.stderr and "please report it" not in result.stderr


def test_a_deeply_nested_or_huge_bundle_is_bad_input(site: Site, tmp_path: Path) -> None:
    nested = tmp_path / "nested.bundle"
    nested.write_text(
        '{"format": "fieldpass-field-bundle", "devices": ' + "[" * 50_000 + "]" * 50_000 + "}"
    )
    huge = tmp_path / "huge.bundle"
    with huge.open("wb") as f:
        f.truncate(65 * MIB)
    for path, words in ((nested, "nested"), (huge, "larger than 64 MiB")):
        result = site.hq.run("field", "serve", str(path), "--duration", "1", check=False)
        assert result.returncode == 65 and words in result.stderr, result.stderr


def test_a_busy_port_is_said_in_one_line(site: Site, served: Laptop) -> None:
    args = ("field", "serve", str(site.bundle), "--port", str(served.port), "--duration", "1")
    result = site.hq.run(*args, check=False)
    assert result.returncode == 69 and "the port is in use" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1


def test_a_fingerprint_list_is_read_with_a_bound(site: Site, tmp_path: Path) -> None:
    """``field export --fingerprints`` reads at most 16 MiB, of a file or of an endless
    stream, and says so in one line."""
    big = tmp_path / "site.txt"
    with big.open("wb") as f:
        f.truncate(17 * MIB)
    for source in (big, Path("/dev/zero")):
        args = ("field", "export", "--fingerprints", str(source), "-o", str(tmp_path / "b"))
        result = site.hq.run(*args, check=False)
        assert result.returncode == 2 and "larger than 16 MiB" in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and not (tmp_path / "b").exists()
