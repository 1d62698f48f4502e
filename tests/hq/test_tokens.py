"""Admin tokens (services/tokens.py, cli/tokens.py, the /v1/tokens routes): created with
an expiry, listed without the token, revoked; an expired or revoked token gets 401 with
a message that says which and why, and every change is in the audit log."""

import sqlite3
from pathlib import Path

import httpx
import pytest

from provisioning.errors import Unauthorized
from provisioning.models import Actor
from provisioning.services import HQ
from provisioning.services.tokens import DEFAULT_TOKEN_TTL_S
from tests.conftest import faketime_env

from .conftest import Run
from .server import hq_cli, prepare_home, start_server

DAY = 86400


def test_create_list_revoke_at_the_command_line(hq: Run, home: Path) -> None:
    made = hq("tokens", "create", "ops-console", "--json")
    assert made.code == 0, made.err
    doc = made.json()
    token = doc["token"]
    assert doc["status"] == "active"
    assert doc["expires_at"] - doc["created_at"] == DEFAULT_TOKEN_TTL_S == 90 * DAY
    assert hq("tokens", "create", "ci", "--expires", "never").code == 0
    assert hq("tokens", "create", "short", "--expires", "12h").code == 0
    assert hq("tokens", "create", "x", "--expires", "soon").code == 2
    listed = {t["name"]: t for t in hq("tokens", "list", "--json").json()}
    assert set(listed) == {"ops-console", "ci", "short"}
    assert listed["ci"]["expires_at"] is None
    assert listed["short"]["expires_at"] - listed["short"]["created_at"] == 12 * 3600
    text = hq("tokens", "list").out
    assert token not in text and token not in hq("tokens", "list", "--json").out
    assert "ops-console" in text and "never" in text

    revoked = hq("tokens", "revoke", "ops-console", "--json")
    assert revoked.code == 0 and revoked.json()["status"] == "revoked"
    again = hq("tokens", "revoke", "ops-console")
    assert again.code == 1 and "revoked at" in again.err
    assert hq("tokens", "revoke", "nobody").code == 3
    reuse = hq("tokens", "create", "ops-console")
    assert reuse.code == 1 and "never reused" in reuse.err
    assert {t["name"]: t["status"] for t in hq("tokens", "list", "--json").json()} == {
        "ops-console": "revoked",
        "ci": "active",
        "short": "active",
    }
    actions = [(e["action"], e["detail"]) for e in hq("audit", "--json").json()]
    assert ("token_revoke", "name=ops-console") in actions
    assert sum(1 for a, _ in actions if a == "token_create") == 3
    # the database keeps a hash, never the token
    conn = sqlite3.connect(home / "hq.sqlite3")
    dump = "\n".join(conn.iterdump())
    conn.close()
    assert token not in dump


def test_the_service_refuses_expired_and_revoked_tokens(tmp_path: Path) -> None:
    hq = HQ(tmp_path / "hq")
    actor = Actor("cli:test", "local")
    now = 1_900_000_000
    short, _ = hq.create_token("short", now, actor, 3600)
    forever, info = hq.create_token("forever", now, actor, None)
    assert info.expires_at is None
    assert hq.check_token(short, now + 3599) == "short"
    with pytest.raises(Unauthorized, match="token 'short' expired at 2030-03-17T18:46:40Z"):
        hq.check_token(short, now + 3600)
    assert hq.check_token(forever, now + 100 * 365 * DAY) == "forever"
    hq.revoke_token("forever", now + 10, actor)
    with pytest.raises(Unauthorized, match="token 'forever' was revoked at"):
        hq.check_token(forever, now + 11)
    with pytest.raises(Unauthorized, match="invalid or missing"):
        hq.check_token(short + "x", now)


def test_list_and_revoke_over_http_then_401(tmp_path: Path) -> None:
    home = tmp_path / "hq"
    admin_token = prepare_home(home)  # named "tests"
    other = hq_cli(home, "tokens", "create", "console").strip()
    server = start_server(home)
    try:
        url = server.url
        auth = {"Authorization": f"Bearer {admin_token}"}
        listed = httpx.get(url + "/v1/tokens", headers=auth, timeout=10)
        assert listed.status_code == 200
        assert {t["name"]: t["status"] for t in listed.json()} == {
            "tests": "active",
            "console": "active",
        }
        assert other not in listed.text and admin_token not in listed.text
        itself = httpx.delete(url + "/v1/tokens/tests", headers=auth, timeout=10)
        assert itself.status_code == 409 and "cannot revoke itself" in itself.text
        gone = httpx.delete(url + "/v1/tokens/console", headers=auth, timeout=10)
        assert gone.status_code == 200 and gone.json()["status"] == "revoked"
        refused = httpx.get(
            url + "/v1/plans", headers={"Authorization": f"Bearer {other}"}, timeout=10
        )
        assert refused.status_code == 401
        error = refused.json()["error"]
        assert error["code"] == "unauthorized" and "'console' was revoked" in error["message"]
        twice = httpx.delete(url + "/v1/tokens/console", headers=auth, timeout=10)
        assert twice.status_code == 409
        unknown = httpx.delete(url + "/v1/tokens/nobody", headers=auth, timeout=10)
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "token_not_found")
        bad = httpx.delete(url + "/v1/tokens/bad%0Aname", headers=auth, timeout=10)
        assert bad.status_code == 422
        events = httpx.get(url + "/v1/audit", headers=auth, timeout=10).json()
        revoke = [e for e in events if e["action"] == "token_revoke"]
        assert [(e["actor"], e["detail"]) for e in revoke] == [("token:tests", "name=console")]
        # the API document names both routes
        spec = httpx.get(url + "/openapi.json", timeout=10).json()
        assert "get" in spec["paths"]["/v1/tokens"]
        assert "delete" in spec["paths"]["/v1/tokens/{name}"]
        assert "401" in spec["paths"]["/v1/tokens/{name}"]["delete"]["responses"]
    finally:
        server.stop()


def test_an_expired_token_gets_401_from_a_server_whose_clock_passed_it(tmp_path: Path) -> None:
    home = tmp_path / "hq"
    prepare_home(home)
    token = hq_cli(home, "tokens", "create", "weekly", "--expires", "7d").strip()
    server = start_server(home, env=faketime_env("+8d"))  # the server lives 8 days on
    try:
        res = httpx.get(
            server.url + "/v1/plans", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert res.status_code == 401
        assert "token 'weekly' expired at" in res.json()["error"]["message"]
    finally:
        server.stop()
    assert token not in server.log.read_text()
