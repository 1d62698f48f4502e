"""The HQ web console, served by ``fieldpass-hq serve`` under ``/console/``: the fleet
at a glance, in a browser, over the same services as the API and the CLI.

- ``session``: login with an admin token, the session cookie, CSRF, the form reader;
- ``render``: the Jinja2 templates (``templates/``) and what every page shares;
- ``charts``: the overview's SVG chart, drawn on the server;
- ``overview``, ``licenses``, ``devices``, ``usage``, ``sites``, ``audit``, ``admin``
  (tokens, keys, plans): the pages, one module per thing they show.

Pages are server-rendered HTML with no script; every asset (``static/``) ships in the
package, and ``server/headers.py`` sends a Content-Security-Policy that allows nothing
from another host. Page modules hold no rule: they read the request, call ``HQ``'s
services (which audit every change under ``console:NAME``), and render.
"""

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ...services import HQ
from . import admin, audit, devices, licenses, overview, session, sites, usage
from .session import PATH


def add_routes(app: FastAPI, hq: HQ) -> None:
    """The console's pages and its static files, on ``app`` over ``hq``."""
    static = Path(__file__).parent / "static"
    app.mount(PATH + "/static", StaticFiles(directory=static), name="console-static")
    session.add_routes(app)
    for module in (overview, licenses, devices, usage, sites, audit, admin):
        module.add_routes(app, hq)
