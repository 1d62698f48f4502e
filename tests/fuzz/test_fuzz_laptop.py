"""Hostile payloads on every route of the real laptop (``fieldpass-hq field serve``), over
raw sockets: any method, path, head and body hypothesis draws (JSON of any shape and
depth, signed-looking CBOR, wrong license keys for the bundle's real devices, broken
lengths and headers). For each: the laptop answers within its bounds (an HTTP answer,
4xx with the error JSON unless the request was a valid one; never 5xx but the documented
503 of /v1/validate, which a laptop cannot answer), stays up, and in
the end its report holds nothing from the bad input and its console no traceback.
Usage reports and receipts signed by strangers' keys that register themselves (the laptop
cannot check their proof: only HQ holds the license key) may be carried, but at most a
few keys per activation, and HQ's import records nothing from them.

A fixed seed in ``make test``; ``FIELDPASS_FUZZ=long`` (``make fuzz``): twenty times the
examples on random seeds."""

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.jsonin import JsonError, loads_object
from agent.wire import device_msg
from agent.wire.device_key import DeviceKey
from tests.conftest import HQ
from tests.laptop import Laptop, Site, exchange, laptop, make_site, status_of

LONG = os.environ.get("FIELDPASS_FUZZ", "") == "long"
FUZZ = settings(
    derandomize=not LONG,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def examples(n: int) -> settings:
    return settings(FUZZ, max_examples=n * (20 if LONG else 1))


ROUTES = (
    "/healthz",
    "/v1/challenge",
    "/v1/machine-file",
    "/v1/validate",
    "/v1/status",
    "/v1/report",
    "/v1/receipt",
    "/v1/activate",
    "/v1/deactivate",
)
OTHER_PATHS = ("/", "/v1/", "/v1/status/", "/v1/status?x=1", "//v1/status", "*", "/%00", "/v1/x")
METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "FOO")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    where = tmp_path_factory.mktemp("fuzz-site")
    return make_site(HQ(where / "hq-home"), where)


@pytest.fixture(scope="module")
def served(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Laptop]:
    report = tmp_path_factory.mktemp("fuzz-laptop") / "report"
    limits = ("--header-timeout", "3", "--body-timeout", "3")
    with laptop(site.bundle, report, *limits) as lp:
        yield lp
    assert "Traceback" not in lp.stderr and "internal error" not in lp.stderr, lp.stderr
    doc = lp.report()
    assert doc["pickups"] == [] and doc["served_unconfirmed"] == []  # nothing from bad input
    assert doc["usage_reports"] == [] and doc["receipts"] == []
    revoked = site.entries()[site.revoked_fingerprint]["activation_id"]
    assert set(doc["unidentified_revocation_requests"]) <= {revoked}


def hostile_strategies(site: Site) -> dict[str, st.SearchStrategy[object]]:
    json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
    any_json = st.recursive(
        json_leaf,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
        ),
        max_leaves=24,
    )
    envelope = st.fixed_dictionaries(
        {
            "kid": st.text(max_size=30) | st.sampled_from(["fpd_0000000000000000"]),
            "msg": st.binary(max_size=300),
            "sig": st.binary(max_size=80),
        }
    ).map(cbor2.dumps)
    signed_like = (envelope | st.binary(max_size=600)).map(lambda b: base64.b64encode(b).decode())
    fingerprint = st.sampled_from([*site.fingerprints, site.revoked_fingerprint]) | st.text(
        max_size=70
    )
    license_key = st.from_regex(r"FP(-[A-HJ-NP-Z2-9]{5}){5}", fullmatch=True) | st.text(max_size=40)
    fields = st.fixed_dictionaries(
        {},
        optional={
            "request": signed_like | any_json | device_messages(site, carry_key=False),
            "license_key": license_key,
            "fingerprint": fingerprint,
            "nonce": st.text(max_size=200),
            "ttl_s": st.integers() | st.text(max_size=5),
            "activation_id": st.text(max_size=30),
            "extra": any_json,
        },
    )
    return {"any_json": any_json, "fields": fields}


def device_messages(site: Site, carry_key: bool) -> st.SearchStrategy[str]:
    """Well-formed usage reports and receipts (base64) naming the bundle's devices, each
    signed by a fresh stranger's key, carrying it (with a made-up proof) or not."""
    fingerprint = st.sampled_from([*site.fingerprints, site.revoked_fingerprint])
    report = st.fixed_dictionaries(
        {
            "seq": st.integers(0, 2**53),
            "counters": st.dictionaries(
                st.sampled_from(["boots", "operating_s", "units"]), st.integers(0, 2**40)
            ),
            "challenge": st.none() | st.text("abc", min_size=1, max_size=10),
        }
    ).map(lambda f: ("report", f))
    receipt = st.fixed_dictionaries(
        {
            "serial": st.integers(0, 2**53),
            "returned_at": st.integers(1_600_000_000, 2_000_000_000),
            "reason": st.sampled_from(["returned", "x"]),
        }
    ).map(lambda f: ("receipt", f))

    def signed(kind_fields: tuple[str, dict[str, object]], fp: str, proof: bytes) -> str:
        kind, fields = kind_fields
        key = DeviceKey.generate()
        data = device_msg.sign(
            key,
            kind,
            {
                "activation_id": site.entries()[fp]["activation_id"],
                "fingerprint": fp,
                "at": 1_800_000_000,
                "agent_version": "9",
                "device_key": key.public_key if carry_key else None,
                "proof": proof if carry_key else None,
                **fields,
            },
        )
        return base64.b64encode(data).decode()

    return st.builds(signed, report | receipt, fingerprint, st.binary(min_size=32, max_size=32))


def body_strategy(site: Site) -> st.SearchStrategy[bytes]:
    s = hostile_strategies(site)
    as_json = st.one_of(s["fields"], s["any_json"]).map(lambda d: json.dumps(d).encode())
    bombs = st.builds(
        lambda n, open_, close: open_ * n + close * n,
        st.integers(1, 20_000),
        st.sampled_from([b"[", b'{"a":']),
        st.sampled_from([b"]", b"}", b""]),
    )
    return st.one_of(as_json, as_json, bombs, st.binary(max_size=2_000))


def valid(method: str, path: str, body: bytes) -> bool:
    """The two requests a stranger may get a 200 for."""
    if (method, path) == ("GET", "/healthz"):
        return True
    if (method, path) != ("POST", "/v1/challenge"):
        return False
    try:
        loads_object(body, max_bytes=16 * 1024, max_depth=2)  # a flat JSON object
    except JsonError:
        return False
    return True


@given(data=st.data())
@examples(300)
def test_hostile_requests_on_every_route(site: Site, served: Laptop, data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(METHODS), "method")
    path = data.draw(st.sampled_from(ROUTES) | st.sampled_from(OTHER_PATHS), "path")
    body = data.draw(body_strategy(site), "body")
    head = f"{method} {path} HTTP/1.1\r\nHost: laptop\r\nContent-Length: {len(body)}\r\n\r\n"
    answer = exchange(served.port, head.encode() + body, timeout_s=30)
    assert served.proc.poll() is None
    status = status_of(answer)
    assert status is not None, answer[:200]
    if valid(method, path, body):
        assert status in (200, 429), answer[:300]
        return
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] and "\n" not in error["message"]
    if (path, status) == ("/v1/validate", 503):  # the laptop cannot sign HQ's time
        assert error["code"] == "hq_unreachable"
    else:
        assert 400 <= status < 500, answer[:300]


HEADER_NAMES = st.sampled_from(
    [b"Content-Length", b"Transfer-Encoding", b"Host", b"Expect", b"Connection", b"X-A"]
) | st.binary(min_size=1, max_size=20)
HEADER_VALUES = (
    st.integers(-(10**20), 10**20).map(lambda n: str(n).encode())
    | st.sampled_from([b"chunked", b"100-continue", b"close", b"", b" 5", b"5,5", b"0x10"])
    | st.binary(max_size=40)
)


@given(
    line=st.one_of(
        st.sampled_from([b"POST /v1/status HTTP/1.1", b"GET /healthz HTTP/1.0", b"POST / HTTP/2"]),
        st.binary(max_size=80),
    ),
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6),
    separator=st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n "]),
    body=st.binary(max_size=300),
)
@examples(300)
def test_hostile_heads(
    served: Laptop, line: bytes, headers: list[tuple[bytes, bytes]], separator: bytes, body: bytes
) -> None:
    head = line + separator + b"".join(n + b": " + v + separator for n, v in headers) + separator
    answer = exchange(served.port, head + body, timeout_s=30)
    status = status_of(answer)
    # an answer (or, for a request the peer left incomplete, a closed connection), never 5xx
    assert status is None or status == 200 or 400 <= status < 500, answer[:300]
    assert served.proc.poll() is None


def test_the_laptop_still_serves_after_the_fuzz(served: Laptop) -> None:
    assert served.alive()


@given(
    route=st.sampled_from(["/v1/report", "/v1/receipt"]),
    request=st.data(),
)
@examples(40)
def test_self_registering_strangers_are_bounded_and_never_recorded_at_hq(
    site: Site, registering: Laptop, route: str, request: st.DataObject
) -> None:
    """A message signed by a key it carries, for a device the bundle names no key for,
    is what a device that never registered its key sends: the laptop cannot tell a
    stranger's from it, so it may carry it (a few keys per activation at most), and HQ
    refuses it at import (the proof does not verify)."""
    body = {"request": request.draw(device_messages(site, carry_key=True), "request")}
    answer = exchange(registering.port, _post(route, json.dumps(body).encode()), timeout_s=30)
    assert status_of(answer) in (200, 401, 409, 429), answer[:300]
    assert registering.proc.poll() is None


@pytest.fixture(scope="module")
def registering(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Laptop]:
    report = tmp_path_factory.mktemp("fuzz-registering") / "report"
    with laptop(site.bundle, report) as lp:
        yield lp
    assert "Traceback" not in lp.stderr, lp.stderr
    doc = lp.report()
    carried = doc["usage_reports"] + doc["receipts"]
    assert carried  # the laptop could not tell them from a registering device's
    per_activation: dict[str, int] = {}
    for r in doc["usage_reports"]:
        per_activation[r["activation_id"]] = per_activation.get(r["activation_id"], 0) + 1
    assert max(per_activation.values(), default=0) <= 4  # MAX_UNVERIFIED_KEYS
    imported: Any = site.hq.json("field", "import", str(report))
    refused = 0
    for name in ("usage_reports", "receipts"):
        assert imported[name]["accepted"] == 0, imported[name]
        refused += sum(imported[name]["refused"].values())
    assert refused == len(carried)
    shown: Any = site.hq.json("usage", "show")
    assert shown == []
    audit: Any = site.hq.json("audit", "--limit", "10000")
    assert not [e for e in audit if e["action"] in ("return", "device_key_register")]


def _post(route: str, body: bytes) -> bytes:
    head = f"POST {route} HTTP/1.1\r\nHost: laptop\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body
