"""The console's pages for HQ's own settings: admin tokens (create, shown once; list;
revoke), signing keys (list, which one signs, the two phases of a rotation: publish a
successor, then sign with it; retire; the keyring for device images), and plans
(their seats, offline TTL, grace and warning window, changed).

A token is shown once, on the page that answers its form, and expires no later than
the token of the operator who made it. A private key is never shown (only its kid and
public part). Every rule is the services'.
"""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ...errors import HQError, InvalidRequest
from ...services import HQ
from ...services.terms import PlanChange
from ...services.tokens import DEFAULT_TOKEN_TTL_S
from ...units import parse_duration
from ..common import now
from .render import download, redirect, refused, render
from .session import PATH, Form, Op

KEYRING_TYPE = "text/plain"


def _duration(form: dict[str, str], name: str, *, allow_zero: bool = False) -> int | None:
    text = form.get(name, "").strip()
    if not text:
        return None
    try:
        return parse_duration(text, allow_zero=allow_zero)
    except ValueError as e:
        raise InvalidRequest(f"{name}: {e}") from None


def add_routes(app: FastAPI, hq: HQ) -> None:
    # -- tokens ------------------------------------------------------------------------
    def tokens_page(request: Request, op: Op, **extra: Any) -> Response:
        return render(
            request,
            "tokens.html",
            op=op,
            tokens=hq.list_tokens(),
            now=now(),
            default_days=DEFAULT_TOKEN_TTL_S // 86400,
            nav="tokens",
            **extra,
        )

    @app.get(PATH + "/tokens", include_in_schema=False)
    def tokens(request: Request, op: Op) -> Response:
        return tokens_page(request, op, created=None)

    @app.post(PATH + "/tokens", include_in_schema=False)
    def create_token(request: Request, op: Op, form: Form) -> Response:
        t = now()
        mine = next((k for k in hq.list_tokens() if k.name == op.name), None)
        try:
            ttl_s = _duration(form, "expires") or DEFAULT_TOKEN_TTL_S
            token, info = hq.create_token(
                form.get("name", "").strip(),
                t,
                op.actor,
                ttl_s,
                not_after=None if mine is None else mine.expires_at,
            )
        except HQError as e:
            return refused(request, op, e, PATH + "/tokens")
        # The one time the token is shown: this answer (no-store), never again.
        return tokens_page(request, op, created=(token, info))

    @app.post(PATH + "/tokens/{name}/revoke", include_in_schema=False)
    def revoke_token(request: Request, op: Op, _: Form, name: str) -> Response:
        try:
            hq.revoke_token(name, now(), op.actor)
        except HQError as e:
            return refused(request, op, e, PATH + "/tokens")
        return redirect(PATH + "/tokens", "token_revoked")

    # -- signing keys --------------------------------------------------------------------
    @app.get(PATH + "/keys", include_in_schema=False)
    def keys(request: Request, op: Op) -> Response:
        return render(
            request,
            "keys.html",
            op=op,
            keys=hq.list_keys(),
            reported=hq.keyring_counts(),
            nav="keys",
        )

    @app.get(PATH + "/keys/keyring", include_in_schema=False)
    def keyring(request: Request, op: Op) -> Response:
        try:
            data = hq.keyring().dumps().encode("utf-8")
        except HQError as e:
            return refused(request, op, e, PATH + "/keys")
        return download(data, "keyring", KEYRING_TYPE)

    @app.post(PATH + "/keys", include_in_schema=False)
    def publish_key(request: Request, op: Op, _: Form) -> Response:
        try:
            hq.generate_key(now(), op.actor, standby=True)
        except HQError as e:
            return refused(request, op, e, PATH + "/keys")
        return redirect(PATH + "/keys", "key_published")

    @app.get(PATH + "/keys/{kid}/activate", include_in_schema=False)
    def activate_confirm(request: Request, op: Op, kid: str) -> Response:
        key = next((k for k in hq.list_keys() if k.kid == kid), None)
        if key is None:
            return render(request, "error.html", http_status=404, op=op, message="no such key")
        return render(request, "key_activate.html", op=op, key=key, nav="keys")

    @app.post(PATH + "/keys/{kid}/activate", include_in_schema=False)
    def activate_key(request: Request, op: Op, _: Form, kid: str) -> Response:
        try:
            hq.activate_key(kid, now(), op.actor)
        except HQError as e:
            return refused(request, op, e, PATH + "/keys")
        return redirect(PATH + "/keys", "key_activated")

    @app.post(PATH + "/keys/{kid}/retire", include_in_schema=False)
    def retire_key(request: Request, op: Op, _: Form, kid: str) -> Response:
        try:
            hq.retire_key(kid, now(), op.actor)
        except HQError as e:
            return refused(request, op, e, PATH + "/keys")
        return redirect(PATH + "/keys", "key_retired")

    # -- plans ---------------------------------------------------------------------------
    @app.get(PATH + "/plans", include_in_schema=False)
    def plans(request: Request, op: Op) -> Response:
        return render(request, "plans.html", op=op, plans=hq.list_plans(), nav="plans")

    @app.post(PATH + "/plans/{name}", include_in_schema=False)
    def update_plan(request: Request, op: Op, form: Form, name: str) -> Response:
        try:
            seats = form.get("seats", "").strip()
            if seats and not seats.isdigit():
                raise InvalidRequest("seats: a whole number")
            warn = form.get("warn", "").strip()
            change = PlanChange(
                seats=int(seats) if seats else None,
                offline_ttl_s=_duration(form, "offline_ttl"),
                grace_s=_duration(form, "grace", allow_zero=True),
                warn_s=None if warn in ("", "ttl/3") else _duration(form, "warn", allow_zero=True),
                warn_default=warn == "ttl/3",
            )
            hq.update_plan(name, change, now(), op.actor)
        except HQError as e:
            return refused(request, op, e, PATH + "/plans")
        return redirect(PATH + "/plans", "plan_updated")
