"""The app's outermost layer (provisioning/server/app.py ``OneLineErrors``): an exception
a route lets through is answered with the error JSON (500) and logged as one line naming
its type and where it was raised, never its text or a traceback. No route of HQ raises
one on purpose, so a route that does is added here to a real app, driven in-process."""

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from provisioning.server.app import OneLineErrors, create_app

from .server import prepare_home


def test_an_unexpected_exception_is_a_500_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "hq"
    prepare_home(home)
    app = create_app(home)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("FP-SECRET-DATA")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=OneLineErrors(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://hq") as client:
            return await client.get("/boom")

    with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
        res = asyncio.run(call())
    assert res.status_code == 500
    assert res.json() == {
        "error": {"code": "internal_error", "message": "internal error (RuntimeError)"}
    }
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("internal error (RuntimeError at test_app.py:")
    assert "GET /boom" in lines[0]
    assert all(r.exc_info is None for r in caplog.records)
    assert "FP-SECRET-DATA" not in caplog.text + res.text
