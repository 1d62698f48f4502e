"""The HQ HTTP API (FastAPI, served by uvicorn) over the same database as the CLI.

- ``device``: the device endpoints (license key in the body);
- ``admin``: the admin endpoints (bearer token);
- ``fleet``: the fleet's read API (activations and licenses filtered and paged, the
  overview, sites, the audit log) and plan and seat changes (bearer token);
- ``console``: the web console under ``/console/`` (server-rendered pages, sessions);
- ``docs``: the API's interactive documentation, with every asset from the package;
- ``headers``: the Content-Security-Policy and the other headers of browser pages;
- ``errors``: every error as ``{"error": {"code", "message"}}`` with the stable code and
  status of ``provisioning.errors``;
- ``middleware``: the body limit;
- ``api_models``: the request bodies and error documents;
- ``common``: the clock (read in the routes, nowhere below) and the client's address.

This module builds the app from those (``create_app``) and runs it (``run``). Nothing
in this package logs a request body.
"""

import json
import os
from pathlib import Path

from fastapi import FastAPI

from .. import __version__
from ..services import HQ
from . import admin, console, device, docs, fleet, reports
from .errors import install_error_handlers
from .headers import BrowserHeaders
from .middleware import MAX_BODY_BYTES, BodyLimit

HOME_ENV = "FIELDPASS_HQ_HOME"


def create_app(home: Path, *, database: str | None = None) -> FastAPI:
    hq = HQ(home, database=database)
    app = FastAPI(
        title="Fieldpass HQ",
        version=__version__,
        description="Activations, renewals and validation for Fieldpass devices; admin API.",
        docs_url=None,  # server/docs.py serves /docs from the package
        redoc_url=None,
    )
    app.state.hq = hq
    install_error_handlers(app)
    device.add_routes(app, hq)
    admin.add_routes(app, hq)
    reports.add_routes(app, hq)
    fleet.add_routes(app, hq)
    console.add_routes(app, hq)
    docs.add_routes(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(BrowserHeaders)
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: the home comes from $FIELDPASS_HQ_HOME."""
    return create_app(Path(os.environ[HOME_ENV]))


def run(
    home: Path,
    host: str,
    port: int,
    tls_cert: str | None,
    tls_key: str | None,
    workers: int,
    as_json: bool,
    *,
    access_log: bool = True,
    forwarded_allow_ips: str | None = None,
) -> None:
    import uvicorn

    os.environ[HOME_ENV] = str(home)
    scheme = "https" if tls_cert else "http"
    if as_json:
        print(json.dumps({"url": f"{scheme}://{host}:{port}", "home": str(home)}), flush=True)
    uvicorn.run(
        "provisioning.server:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        access_log=access_log,
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level="info",
    )
