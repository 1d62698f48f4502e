"""The console's security promises over real HTTP (httpx against ``fieldpass-hq serve``
on free loopback ports): sessions kept in the database and good on every replica,
ended by logout or by revoking their token; the cookie's attributes, Secure over TLS;
CSRF on every form; no license key but once and never a private key; every action in
the audit log under the operator's name; the headers of browser pages; and pages that
keep working with 10,000 activations.
"""

import re
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.wire import license_key

from . import fleet
from .server import Server, hq_cli, start_server

LOGIN = "/console/login"
CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


def login(client: httpx.Client, token: str) -> httpx.Response:
    page = client.get(LOGIN)
    csrf = CSRF.search(page.text)
    assert csrf is not None
    return client.post(LOGIN, data={"csrf": csrf.group(1), "token": token, "next": "/console/"})


def csrf_of(client: httpx.Client, path: str = "/console/") -> str:
    found = CSRF.search(client.get(path).text)
    assert found is not None
    return found.group(1)


def audit_rows(home: Path, action: str) -> list[tuple[object, ...]]:
    sql = "SELECT actor, license_id, detail FROM audit WHERE action = ?"
    return fleet.stored(home, sql, action)


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[Server, fleet.Fleet]]:
    home = tmp_path / "hq"
    seeded = fleet.seed(home, int(time.time()))
    server = start_server(home)
    try:
        yield server, seeded
    finally:
        server.stop()


def client(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)


def test_a_session_lives_in_the_database_for_every_replica(
    seeded: tuple[Server, fleet.Fleet],
) -> None:
    a, world = seeded
    b = start_server(a.home)  # a second replica over the same database
    try:
        with client(a) as at_a, client(b) as at_b:
            assert login(at_a, world.token).status_code == 303
            at_b.cookies = at_a.cookies
            assert at_b.get("/console/").status_code == 200  # the replica knows it
            out = at_b.post("/console/logout", data={"csrf": csrf_of(at_b)})
            assert out.status_code == 303
            gone = at_a.get("/console/")  # and the first knows it ended
            assert gone.status_code == 303 and gone.headers["location"].startswith(LOGIN)
    finally:
        b.stop()
    rows = fleet.stored(a.home, "SELECT id_hash, ended_at FROM console_sessions")
    assert len(rows) == 1 and rows[0][1] is not None
    assert all(c.value != rows[0][0] for c in at_a.cookies.jar)  # only its hash is stored


def test_revoking_the_token_ends_its_sessions(seeded: tuple[Server, fleet.Fleet]) -> None:
    server, world = seeded
    with client(server) as c:
        login(c, world.token)
        assert c.get("/console/licenses").status_code == 200
        hq_cli(server.home, "tokens", "revoke", fleet.TOKEN_NAME)
        again = c.get("/console/licenses")
        assert again.status_code == 303 and again.headers["location"].startswith(LOGIN)
        refused = login(c, world.token)
        assert refused.status_code == 401 and "was revoked" in refused.text


def test_the_session_cookie(seeded: tuple[Server, fleet.Fleet]) -> None:
    server, world = seeded
    with client(server) as c:
        res = login(c, world.token)
    cookie = next(h for h in res.headers.get_list("set-cookie") if h.startswith("fieldpass_"
                  "console="))  # fmt: skip
    attributes = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= set(attributes)
    assert attributes["samesite"].strip().lower() == "samesite=strict"
    assert attributes["path"].strip() == "Path=/console"
    assert 0 < int(attributes["max-age"].split("=")[1]) <= 8 * 3600
    assert "secure" not in attributes  # plain HTTP on loopback: a Secure cookie is not sent


def test_the_session_cookie_is_secure_over_tls(tmp_path: Path) -> None:
    home = tmp_path / "hq"
    world = fleet.seed(home, int(time.time()))
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
         "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(cert))
    port_server = start_server(home, "--tls-cert", str(cert), "--tls-key", str(key), tls=context)
    try:
        with httpx.Client(base_url=port_server.url, verify=context, timeout=30) as c:
            res = login(c, world.token)
            assert res.status_code == 303
            cookie = next(h for h in res.headers.get_list("set-cookie") if "console=" in h)
            assert "Secure" in cookie and "HttpOnly" in cookie
    finally:
        port_server.stop()


def test_every_form_needs_its_csrf_token(seeded: tuple[Server, fleet.Fleet]) -> None:
    server, world = seeded
    lic = world.licenses["spread"]
    forms = [
        f"/console/licenses/{lic}/suspend",
        f"/console/licenses/{lic}/revoke",
        f"/console/licenses/{lic}/seats",
        f"/console/licenses/{lic}/bundle",
        "/console/licenses/new",
        "/console/sites/north/bundle",
        "/console/tokens",
        "/console/tokens/ops-alice/revoke",
        "/console/keys",
        "/console/plans/std",
        "/console/logout",
    ]
    before = fleet.stored(server.home, "SELECT COUNT(*) FROM audit")
    with client(server) as c, client(server) as other:
        login(c, world.token)
        login(other, world.token)
        theirs = csrf_of(other)
        for path in forms:
            for data in ({"seats": "5"}, {"seats": "5", "csrf": theirs}, {"csrf": ""}):
                res = c.post(path, data=data)
                assert res.status_code == 403, (path, data, res.status_code)
                assert "CSRF" in res.text
    after = fleet.stored(server.home, "SELECT COUNT(*) FROM audit")
    assert after[0][0] == before[0][0] + 2  # the two logins, nothing else
    with client(server) as c:  # the login form too, before any session
        c.get(LOGIN)
        res = c.post(LOGIN, data={"csrf": "0" * 64, "token": world.token})
        assert res.status_code == 403


def test_without_a_session_a_page_or_a_form_goes_to_the_login(
    seeded: tuple[Server, fleet.Fleet],
) -> None:
    server, world = seeded
    with client(server) as c:
        for path in ("/console/", "/console/licenses?plan=std", "/console/keys"):
            res = c.get(path)
            assert res.status_code == 303
            assert res.headers["location"].startswith(LOGIN + "?next=")
        res = c.post(f"/console/licenses/{world.licenses['spread']}/suspend", data={"csrf": "x"})
        assert res.status_code == 303 and res.headers["location"].startswith(LOGIN)
        c.cookies.set("fieldpass_console", "not-a-session", path="/console")
        assert c.get("/console/").status_code == 303
        page = c.get(LOGIN, params={"next": "https://elsewhere.example/"})
        csrf = CSRF.search(page.text)
        assert csrf is not None
        res = c.post(
            LOGIN,
            data={
                "csrf": csrf.group(1),
                "token": world.token,
                "next": "https://elsewhere.example/",
            },
        )
        assert res.headers["location"] == "/console/"  # never a redirect off the console
    assert fleet.stored(server.home, "SELECT status FROM licenses WHERE id = ?",
                        world.licenses["spread"]) == [("active",)]  # fmt: skip


def test_a_license_key_is_shown_once_and_a_private_key_never(
    seeded: tuple[Server, fleet.Fleet],
) -> None:
    server, world = seeded
    seeds = [p.read_text().strip() for p in (server.home / "keys").glob("*.seed")]
    assert seeds
    with client(server) as c:
        login(c, world.token)
        created = c.post(
            "/console/licenses/new", data={"csrf": csrf_of(c), "plan": "std", "expires": ""}
        )
        assert created.status_code == 200 and created.headers["cache-control"] == "no-store"
        key = re.search(r'id="license-key">([^<]+)<', created.text)
        assert key is not None and fleet.is_license_key(key.group(1))
        lic = license_key.license_id(key.group(1))
        (stored,) = fleet.stored(server.home, "SELECT license_key FROM licenses WHERE id = ?", lic)
        # the new license's row, its key sealed (storage/sealing.py), never in clear
        assert str(stored[0]).startswith("sealed1:") and key.group(1) not in str(stored[0])
        pages = [
            "/console/", "/console/licenses", "/console/activations", "/console/sites",
            "/console/sites/north", "/console/audit", "/console/plans", "/console/keys",
            "/console/tokens", f"/console/licenses/{lic}", f"/console/licenses/{lic}/revoke",
            f"/console/licenses/{world.licenses['soon']}", "/console/keys/keyring", "/docs",
            "/console/usage", f"/console/licenses/{world.licenses['metered']}",
        ]  # fmt: skip
        seen = "".join(c.get(p).text for p in pages)
        seen += c.post("/console/sites/north/bundle", data={"csrf": csrf_of(c)}).text
        for k in [*world.keys.values(), key.group(1)]:
            assert k not in seen
            assert k.replace("-", "") not in seen.replace("-", "")
        for s in seeds:
            assert s not in seen


def test_console_actions_are_audited_under_the_operators_name(
    seeded: tuple[Server, fleet.Fleet],
) -> None:
    server, world = seeded
    me = f"console:{fleet.TOKEN_NAME}"
    lic = world.licenses["spread"]
    with client(server) as c:
        login(c, world.token)
        csrf = csrf_of(c)

        def post(path: str, **fields: str) -> httpx.Response:
            return c.post(path, data={"csrf": csrf, **fields})

        assert post(f"/console/licenses/{lic}/seats", seats="120").status_code == 303
        too_few = post(f"/console/licenses/{lic}/seats", seats="3")
        assert too_few.status_code == 409 and "12 seats in use" in too_few.text
        plan = {"seats": "150", "offline_ttl": "180d", "grace": "14d", "warn": "ttl/3"}
        assert post("/console/plans/std", **plan).status_code == 303
        bundle = post("/console/sites/south/bundle")
        assert bundle.status_code == 200
        assert bundle.headers["content-disposition"] == 'attachment; filename="south.bundle"'
        assert len(bundle.json()["devices"]) == world.sites["south"]
        act = str(
            fleet.stored(
                server.home,
                "SELECT activation_id FROM sites WHERE site = 'north' ORDER BY activation_id",
            )[0][0]
        )
        machine = post(f"/console/activations/{act}/machine-file")
        assert machine.status_code == 200 and "BEGIN FIELDPASS MACHINE FILE" in machine.text
        assert post(f"/console/activations/{act}/leave-site").status_code == 303
        assert post(f"/console/activations/{act}/deactivate").status_code == 303
        made = post("/console/tokens", name="ci-2", expires="30d")
        token = re.search(r'id="token-value">(fphq_[^<]+)<', made.text)
        assert made.status_code == 200 and token is not None
        bearer = {"Authorization": f"Bearer {token.group(1)}"}
        assert httpx.get(server.url + "/v1/tokens", headers=bearer).status_code == 200
        too_long = post("/console/tokens", name="ci-3", expires="1000d")
        assert too_long.status_code == 422 and "at the latest" in too_long.text
        assert post("/console/tokens/ci-2/revoke").status_code == 303
        mine = post(f"/console/tokens/{fleet.TOKEN_NAME}/revoke")
        assert mine.status_code == 409  # an operator does not lock themselves out
        assert post("/console/keys").status_code == 303  # publish a successor
        kids = fleet.stored(server.home, "SELECT kid FROM signing_keys ORDER BY created_at")
        old_kid, new_kid = (str(r[0]) for r in kids)
        assert post(f"/console/keys/{old_kid}/retire").status_code == 409  # it signs
        assert post(f"/console/keys/{new_kid}/activate").status_code == 303
        assert post(f"/console/keys/{old_kid}/retire").status_code == 303
    plan_detail = "plan=std seats=100->150 offline_ttl=365d->180d grace=30d->14d warn=30d->ttl/3"
    for action, detail in [
        ("license_seats", "seats=120 limit=120 (plan std: 100)"),
        ("plan_update", plan_detail),
        ("site_remove", "north"),
        ("deactivate", None),
        ("token_create", None),
        ("token_revoke", "name=ci-2"),
        ("key_generate", f"kid={new_kid} standby"),
        ("key_activate", f"kid={new_kid}"),
        ("key_retire", f"kid={old_kid}"),
        ("renew", None),
    ]:
        rows = [r for r in audit_rows(server.home, action) if r[0] == me]
        assert rows, action
        if detail is not None:
            assert detail in {r[2] for r in rows}, (action, rows)
    renewed = [r for r in audit_rows(server.home, "renew") if r[0] == me]
    assert len(renewed) == world.sites["south"] + 1  # the bundle's devices and one file
    signing = fleet.stored(server.home, "SELECT kid FROM signing_keys WHERE active = 1")
    assert signing == [(new_kid,)]


def test_browser_pages_carry_a_strict_policy_and_the_api_does_not(
    seeded: tuple[Server, fleet.Fleet],
) -> None:
    server, world = seeded
    with client(server) as c:
        login(c, world.token)
        page = c.get("/console/")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
        assert "<script" not in page.text and "style=" not in page.text
        css = c.get("/console/static/console.css")
        assert css.status_code == 200 and "no-store" not in css.headers.get("cache-control", "")
        docs = c.get("/docs")
        assert "script-src 'self'" in docs.headers["content-security-policy"]
        assert "<script>" not in docs.text  # no inline script
        for src in re.findall(r'(?:src|href)="([^"]+)"', docs.text):
            assert src.startswith("/"), src  # every asset from this server
            assert c.get(src).status_code == 200, src
        assert c.get("/redoc").status_code == 404
        api = c.get("/healthz")
        assert "content-security-policy" not in api.headers


def test_pages_keep_working_with_ten_thousand_activations(tmp_path: Path) -> None:
    """A fleet of 10,000 devices: every list pages through it (how fast is the
    benchmark's: tests/bench/bench_console.py)."""
    home = tmp_path / "hq"
    world = fleet.seed(home, int(time.time()))
    bulk_license, big = fleet.bulk(home, 10_000)
    server = start_server(home)
    try:
        with client(server) as c:
            login(c, world.token)
            first = c.get("/console/activations")
            assert first.status_code == 200
            total = big + sum(world.verdicts.values())
            assert f"1–100 of {total}" in first.text
            assert first.text.count("<tr data-activation=") == 100
            last = c.get("/console/activations", params={"offset": str(total - 5)})
            assert last.text.count("<tr data-activation=") == 5
            assert 'rel="next"' not in last.text
            for path in ("/console/", "/console/licenses", "/console/sites",
                         "/console/activations?within=30d&sort=seen&order=desc",
                         f"/console/licenses/{bulk_license}", "/console/usage",
                         "/console/usage?view=meters", "/console/usage.csv"):  # fmt: skip
                assert c.get(path).status_code == 200, path
            overview = c.get("/console/")
            assert f'<span id="devices-total">{total}</span>' in overview.text
    finally:
        server.stop()
