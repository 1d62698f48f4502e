"""The console's pages from its Jinja2 templates (``templates/``), with the filters and
helpers every page shares: times as dates in UTC, durations, links that change one
query parameter (sorting, paging, filters), and the messages an action leaves.

Autoescaping is on for every template and undefined names are errors. A template is
handed records and documents to show; it never receives a license key except on the
one page that shows a new license's key, and never a private key or a token, but the
one page that shows a new token.
"""

import datetime as dt
import urllib.parse
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from ...errors import HQError
from ...units import format_duration, parse_duration
from ..common import now

ZONE = "UTC"
# What an action leaves for the next page (``?done=CODE``): fixed texts only, so that a
# link cannot make the console say something of its own.
MESSAGES = {
    "suspended": "The license is suspended: no activation or renewal until reinstated.",
    "reinstated": "The suspension is lifted.",
    "revoked": "The license is revoked. Its devices stop as they learn of it.",
    "seats": "The seat limit is changed.",
    "deactivated": "The device is deactivated; its seat is free.",
    "site_removed": "The device is no longer at a site.",
    "token_revoked": "The token is revoked: requests with it now get 401.",
    "key_published": "A new key is published: export the keyring and ship it in images.",
    "key_activated": "The key signs from now on.",
    "key_retired": "The key is retired: it signs nothing new.",
    "plan_updated": "The plan is updated; files already issued keep their terms.",
}

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("provisioning.server.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(t: int | None, with_time: bool = True) -> Markup:
    """``<time>`` of a Unix time: its date (and minute) in UTC, its ISO form inside."""
    if t is None:
        return Markup("&ndash;")
    moment = dt.datetime.fromtimestamp(t, dt.UTC)
    shown = moment.strftime("%Y-%m-%d %H:%M" if with_time else "%Y-%m-%d")
    iso = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return Markup('<time datetime="{}">{} {}</time>').format(iso, shown, ZONE)


def _day(t: int | None) -> Markup:
    return _when(t, with_time=False)


def _relative(t: int | None, now: int) -> str:
    if t is None:
        return ""
    days = (t - now) / 86400
    if abs(days) < 1:
        hours = round(abs(t - now) / 3600)
        span = f"{hours} h"
    else:
        span = f"{round(abs(days))} d"
    return f"in {span}" if t >= now else f"{span} ago"


def _duration(seconds: int | None) -> str:
    return "ttl/3" if seconds is None else format_duration(seconds)


_env.filters.update(when=_when, day=_day, relative=_relative, duration=_duration)


def url_with(request: Request, **changes: Any) -> str:
    """This page's path and query with ``changes`` (None or "" removes a parameter);
    a change of anything but the offset goes back to the first page."""
    params = dict(request.query_params)
    params.pop("done", None)
    if "offset" not in changes:
        params.pop("offset", None)
    for name, value in changes.items():
        if value is None or value == "":
            params.pop(name, None)
        else:
            params[name] = str(value)
    query = urllib.parse.urlencode(params)
    return request.url.path + (f"?{query}" if query else "")


def render(
    request: Request, template: str, *, http_status: int = 200, **context: Any
) -> HTMLResponse:
    def url(**changes: Any) -> str:
        return url_with(request, **changes)

    done = MESSAGES.get(request.query_params.get("done", ""))
    context.setdefault("op", None)
    context.setdefault("nav", "")
    html = _env.get_template(template).render(
        request=request, url=url, done=done, zone=ZONE, **context
    )
    return HTMLResponse(html, status_code=http_status)


def redirect(path: str, done: str | None = None) -> RedirectResponse:
    """After an action: 303 to ``path`` (a console path), with its message code."""
    if done is not None:
        path += ("&" if "?" in path else "?") + urllib.parse.urlencode({"done": done})
    return RedirectResponse(path, status_code=303)


def refused(request: Request, op: Any, error: HQError, back: str) -> HTMLResponse:
    """An action HQ refused: its message (one line, never a secret) and its status."""
    status, message = error.http_status, error.message
    return render(request, "error.html", http_status=status, op=op, message=message, back=back)


def download(data: bytes, filename: str, media_type: str) -> Response:
    """A file the browser saves (a field bundle, a machine file, the keyring)."""
    return Response(
        data,
        media_type=media_type,
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


def number(text: str | None, default: int, low: int, high: int) -> int:
    """A whole number from a query parameter, clamped; ``default`` if there is none."""
    if text is None or not text.strip().isdigit():
        return default
    return min(max(int(text), low), high)


def listing(request: Request, sorts: Any, default: str) -> tuple[str, bool, int]:
    """The sort column (one of ``sorts``), descending or not, and the page's offset."""
    q = request.query_params
    sort = q.get("sort", default)
    if sort not in sorts:
        sort = default
    return sort, q.get("order") == "desc", number(q.get("offset"), 0, 0, 10**9)


def within(text: str | None) -> tuple[int | None, str]:
    """An "expiring within" filter (``30d``...): seconds, or None and what is wrong."""
    if not text:
        return None, ""
    try:
        return parse_duration(text), ""
    except ValueError as e:
        return None, str(e)


# A list page's filter -> its query parameter.
_FILTER_PARAMS = {"license_id": "license", "plan": "plan", "site": "site"}


def filters(
    request: Request, hq: Any, names: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A list page's filters from its query (``names`` of ``_FILTER_PARAMS`` and the
    expiry, ``within``), for the fleet view; and what its form shows: the plans and
    sites to choose from, the time, what was wrong with the expiry filter."""
    q = request.query_params
    chosen: dict[str, Any] = {n: q.get(_FILTER_PARAMS[n]) or None for n in names}
    chosen["expiring_within_s"], problem = within(q.get("within"))
    shown = {
        "plans": hq.list_plans(),
        "sites": hq.fleet.sites(),
        "problem": problem,
        "now": now(),
    }
    return chosen, shown
