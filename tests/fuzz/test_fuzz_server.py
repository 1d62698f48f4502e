"""Hostile answers from a server: a real HTTP server on 127.0.0.1 answers whatever
hypothesis draws (any status, deep or broken JSON, wrong types, armored garbage) to
`check --online`, `refresh` and `run --once` over HTTP. The offline verdict stands and
nothing about the license changes."""

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.answering_server import AnsweringServer, start
from tests.fuzz.conftest import Provisioned, assert_clean, fuzz, run_cli, run_gate, run_script
from tests.fuzz.strategies import STATUSES, answer_body

PATHS = ("/v1/validate", "/v1/machine-file")


@pytest.fixture(scope="module")
def server() -> Iterator[AnsweringServer]:
    srv = start()
    yield srv
    srv.shutdown()
    srv.server_close()


def online(
    p: Provisioned, server: AnsweringServer, answers: dict[str, tuple[int, bytes]], **daemon: int
) -> None:
    """The device asks only ``server``, which answers ``answers`` (path: status, body)."""
    p.reset()
    extra = "".join(f"{k} = {v}\n" for k, v in daemon.items())
    (p.device.path / "etc/fieldpass/agent.toml").write_text(
        f'[online]\nserver = "{server.url}"\ntimeout_s = 3\n'
        + (f"[daemon]\n{extra}" if extra else "")
    )
    for path, (status, body) in answers.items():
        server.answer(path, status, body)


def answers() -> st.SearchStrategy[dict[str, tuple[int, bytes]]]:
    return st.fixed_dictionaries({path: st.tuples(STATUSES, answer_body()) for path in PATHS})


@fuzz(150)
@given(given_answers=answers())
def test_check_online_keeps_the_offline_verdict(
    provisioned: Provisioned, server: AnsweringServer, given_answers: dict[str, tuple[int, bytes]]
) -> None:
    p = provisioned
    online(p, server, given_answers)
    code, out = run_gate(p.device, "--online", "--json")
    assert_clean(code, out)
    assert code == 0, out  # nothing unsigned can revoke or renew
    assert p.stored.license_facts() == p.facts
    assert '"verdict": "valid"' in (p.device.verdict_dir / "verdict.json").read_text()


@fuzz(100)
@given(given_answers=answers())
def test_refresh_and_prepare_offline_store_nothing(
    provisioned: Provisioned, server: AnsweringServer, given_answers: dict[str, tuple[int, bytes]]
) -> None:
    p = provisioned
    online(p, server, given_answers)
    for args in (["refresh", "--json"], ["prepare-offline", "--days", "30"]):
        code, out = run_cli(p.device, *args)
        assert_clean(code, out)
        assert code in (69, 77), out
        assert p.stored.license_facts() == p.facts


@fuzz(6)
@given(given_answers=answers())
def test_run_once_over_http_ends_with_a_documented_code(
    provisioned: Provisioned, server: AnsweringServer, given_answers: dict[str, tuple[int, bytes]]
) -> None:
    """The daemon as a real process (each run costs up to its 2 s settling time)."""
    p = provisioned
    online(p, server, given_answers, backoff_min_ms=50, backoff_max_ms=100, renew_timeout_s=2)
    result = run_script(p, "run", "--once")
    assert_clean(result.returncode, result.stdout + result.stderr)
    assert result.returncode in (0, 69), result.stderr
    assert p.stored.license_facts() == p.facts
