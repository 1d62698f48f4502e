"""The API's interactive documentation, served with no network: Swagger UI at ``/docs``,
reading ``/openapi.json``, its script and style from the installed ``fastapi-offline``
package (under ``/docs/assets/``) and our initializer (``server/static/``), never from
a CDN.

FastAPI's own pages would load their scripts from a public CDN (blank on an offline
HQ) and start Swagger UI from an inline script, which the Content-Security-Policy of
``server/headers.py`` forbids. This page holds no inline script and no data. There is
no ``/redoc``: ReDoc's bundle always loads its maker's logo from a CDN.
"""

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"
OURS = "/docs/static"

SWAGGER_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Fieldpass HQ API</title>
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
<link rel="icon" href="{ASSETS}/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script src="{OURS}/swagger-init.js"></script>
</body>
</html>
"""


def assets_dir() -> Path:
    """Where ``fastapi-offline`` keeps Swagger UI's files."""
    return Path(str(resources.files("fastapi_offline") / "static"))


def add_routes(app: FastAPI) -> None:
    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")
    ours = Path(__file__).parent / "static"
    app.mount(OURS, StaticFiles(directory=ours), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return HTMLResponse(SWAGGER_PAGE)
