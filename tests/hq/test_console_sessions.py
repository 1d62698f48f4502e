"""The console's sessions (services/console_sessions.py), at the times the tests choose
(the service takes ``now`` from its caller): a login opens one for 8 hours at most and
never past its token's expiry; it ends at its expiry, at logout, or with its token."""

from pathlib import Path

import pytest

from provisioning.errors import Unauthorized
from provisioning.models import Actor
from provisioning.services import HQ
from provisioning.services.console_sessions import SESSION_TTL_S

T = 1_900_000_000
OPERATOR = Actor("cli:root", "local")


@pytest.fixture
def hq(tmp_path: Path) -> HQ:
    return HQ(tmp_path / "hq")


def test_a_session_lasts_a_working_day(hq: HQ) -> None:
    token, _ = hq.create_token("alice", T, OPERATOR)
    sid, session = hq.sessions.login(token, T, "127.0.0.1")
    assert session.expires_at == T + SESSION_TTL_S
    assert hq.sessions.session(sid, T + SESSION_TTL_S - 1).token_name == "alice"
    with pytest.raises(Unauthorized, match="expired"):
        hq.sessions.session(sid, T + SESSION_TTL_S)
    with pytest.raises(Unauthorized):
        hq.sessions.session("not-a-session", T)
    events = [(e.actor, e.action, e.source) for e in hq.audit(10)]
    assert ("console:alice", "console_login", "127.0.0.1") in events


def test_a_session_never_outlives_its_token(hq: HQ) -> None:
    token, _ = hq.create_token("short", T, OPERATOR, ttl_s=3600)
    sid, session = hq.sessions.login(token, T, "127.0.0.1")
    assert session.expires_at == T + 3600
    with pytest.raises(Unauthorized, match="expired"):
        hq.sessions.session(sid, T + 3600)
    with pytest.raises(Unauthorized, match="expired"):
        hq.sessions.login(token, T + 3600, "127.0.0.1")


def test_logout_and_revocation_end_it(hq: HQ) -> None:
    token, _ = hq.create_token("bob", T, OPERATOR)
    first, _ = hq.sessions.login(token, T, "127.0.0.1")
    second, _ = hq.sessions.login(token, T, "127.0.0.1")
    hq.sessions.logout(first, T + 10, "127.0.0.1")
    hq.sessions.logout(first, T + 11, "127.0.0.1")  # again: nothing more happens
    with pytest.raises(Unauthorized):
        hq.sessions.session(first, T + 12)
    assert hq.sessions.session(second, T + 12).token_name == "bob"
    hq.revoke_token("bob", T + 20, OPERATOR)
    with pytest.raises(Unauthorized, match="revoked"):
        hq.sessions.session(second, T + 21)
    logouts = [e for e in hq.audit(20) if e.action == "console_logout"]
    assert len(logouts) == 1
    assert not any(first in str(e) or token in str(e) for e in hq.audit(20))
