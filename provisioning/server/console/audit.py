"""The console's audit log: filters (who, what, license, a time range), newest first,
paged. Reads only: the log is append-only everywhere.
"""

import datetime as dt

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ...services import HQ
from ..common import now
from .render import number, render
from .session import PATH, Op

PAGE = 50
# What the filter offers (the actions HQ's services record; docs/hq.md lists them).
ACTIONS = (
    "activate",
    "reactivate",
    "renew",
    "renew_all",
    "deactivate",
    "suspend",
    "reinstate",
    "revoke",
    "license_create",
    "license_seats",
    "plan_create",
    "plan_update",
    "key_generate",
    "key_activate",
    "key_retire",
    "token_create",
    "token_revoke",
    "site_assign",
    "site_remove",
    "field_pickup",
    "field_import",
    "device_key_register",
    "device_key_reset",
    "plan_usage_terms",
    "usage_regression",
    "return",
    "return_limit_reached",
    "mqtt_revocation",
    "mqtt_refused",
    "console_login",
    "console_logout",
)


def _day(text: str | None, end: bool) -> tuple[int | None, str]:
    """A YYYY-MM-DD filter as Unix seconds: its first second, or its last (``end``)."""
    if not text:
        return None, ""
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        return None, f"{text!r} is not a date like 2027-12-31"
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
    return (start + 86399 if end else start), ""


def add_routes(app: FastAPI, hq: HQ) -> None:
    @app.get(PATH + "/audit", include_in_schema=False)
    def audit(request: Request, op: Op) -> Response:
        q = request.query_params
        since, bad_since = _day(q.get("since"), end=False)
        until, bad_until = _day(q.get("until"), end=True)
        page = hq.fleet.audit(
            actor=q.get("who") or None,
            action=q.get("what") or None,
            license_id=q.get("license") or None,
            since=since,
            until=until,
            limit=PAGE,
            offset=number(q.get("offset"), 0, 0, 10**9),
        )
        return render(
            request,
            "audit.html",
            op=op,
            page=page,
            actions=ACTIONS,
            problem=bad_since or bad_until,
            now=now(),
            nav="audit",
        )
