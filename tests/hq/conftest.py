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
