"""``/readyz`` of the HQ HTTP API, for a load balancer: 200 when this process can reach
its database and the schema is the version it was built for, else 503 (the balancer
sends traffic elsewhere). ``/healthz`` (the process is up) is with the device routes.

Reads the schema version only; never names the database (its URL may hold a password).
"""

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from .. import __version__
from ..errors import HQError
from ..services import HQ
from ..storage import SCHEMA_VERSION
from .api_models import error_responses
from .errors import error_response


def add_routes(app: FastAPI, hq: HQ) -> None:
    """Add ``/readyz`` to ``app``, over ``hq``'s store."""

    @app.get("/readyz", tags=["operations"], responses=error_responses(503))
    def readyz() -> JSONResponse:
        """Ready: the database answers and holds the schema this server knows."""
        try:
            version = hq.store.schema_version()
        except HQError as e:
            return error_response(503, "not_ready", f"database unavailable ({e.code})")
        if version != SCHEMA_VERSION:
            return error_response(
                503, "not_ready", f"database schema {version}, this server knows {SCHEMA_VERSION}"
            )
        return JSONResponse({"status": "ready", "schema": version, "version": __version__})
