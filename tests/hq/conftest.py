"""Fixtures of the HQ tests: a fresh HQ home, the CLI run in-process through
``provisioning.cli.main`` (the same exit-code mapping as the console script), and the
installed ``fieldpass-hq`` for subprocess smoke tests."""

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from provisioning.cli import main

FIELDPASS_HQ = str(Path(sys.executable).parent / "fieldpass-hq")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., Result]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "hq"
    monkeypatch.setenv("FIELDPASS_HQ_HOME", str(path))
    return path


@pytest.fixture
def hq(home: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``fieldpass-hq ARGS`` in-process; returns exit code, stdout, stderr."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def fingerprint(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture
def license_key(hq: Run) -> str:
    """A key generated, a 2-seat plan 'std' and one license on it."""
    assert hq("keys", "generate").code == 0
    assert (
        hq("plans", "create", "std", "--offline-ttl", "365d", "--grace", "30d", "--seats", "2").code
        == 0
    )
    res = hq("licenses", "create", "--plan", "std", "--json")
    assert res.code == 0, res.err
    return str(res.json()["key"])


@dataclass
class Online:
    """A running server (module-wide) with a key, a 5-seat plan 'std' and a token."""

    server: Any
    token: str

    @property
    def url(self) -> str:
        return str(self.server.url)

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def new_license(self, plan: str = "std", **extra: Any) -> str:
        import httpx

        res = httpx.post(
            self.url + "/v1/licenses", json={"plan": plan, **extra}, headers=self.admin, timeout=10
        )
        assert res.status_code == 201, res.text
        return str(res.json()["key"])


@pytest.fixture(scope="module")
def online(tmp_path_factory: pytest.TempPathFactory, hq_engine: Any) -> Any:
    """On each database engine (tests/engines.py)."""
    from .server import prepare_home, start_server

    home = tmp_path_factory.mktemp("online") / "hq"
    hq_engine.configure(home)
    token = prepare_home(home)
    server = start_server(home)
    try:
        yield Online(server, token)
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test (``rep_call``...), so that a fixture's
    teardown knows whether the test failed (the console's screenshots)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
