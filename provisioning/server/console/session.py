"""Who is at the console, and whether a form they posted is theirs: the session cookie,
the login and logout pages, CSRF tokens, and the one form reader.

- The session (services/console_sessions.py) is in the database; its id is the value
  of the ``fieldpass_console`` cookie: HttpOnly, SameSite=Strict, Path=/console, Secure
  when the request came over TLS (directly, or through a proxy that ``serve
  --forwarded-allow-ips`` trusts), and a Max-Age that ends with the session.
- Every form that changes something carries ``csrf``: an HMAC of the session id,
  checked in constant time before anything runs (403 otherwise). The login form,
  before any session, is bound to a random ``fieldpass_login`` cookie the same way.
- A page or form without a live session redirects to the login page (303), which
  sends the operator back where they were (``next``, a console path only).

Never logs or echoes a token, a session id or a form.
"""

import hashlib
import hmac
import secrets
import urllib.parse
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from ...errors import HQError, InvalidRequest, Unauthorized
from ...models import Actor
from ...services import HQ
from ..common import client_host, now
from .render import render

COOKIE = "fieldpass_console"
LOGIN_COOKIE = "fieldpass_login"
PATH = "/console"
LOGIN_TTL_S = 3600
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 64
MAX_FIELD_CHARS = 4096
_CSRF_LABEL = b"fieldpass-console-csrf"


class LoginRequired(Exception):
    """No live session: the handler redirects to the login page."""


class FormRefused(Exception):
    """A form that is malformed, or whose CSRF token is missing or wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def csrf_token(secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), _CSRF_LABEL, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Operator:
    """The operator behind a request: their name (the admin token's), the audit actor,
    the CSRF token their forms carry."""

    name: str
    actor: Actor
    csrf: str
    session_id: str


def _hq(request: Request) -> HQ:
    hq: HQ = request.app.state.hq
    return hq


def operator(request: Request) -> Operator:
    session_id = request.cookies.get(COOKIE, "")
    if not session_id:
        raise LoginRequired
    try:
        session = _hq(request).sessions.session(session_id, now())
    except Unauthorized:
        raise LoginRequired from None
    actor = session.actor(client_host(request))
    return Operator(session.token_name, actor, csrf_token(session_id), session_id)


Op = Annotated[Operator, Depends(operator)]


async def read_form(request: Request) -> dict[str, str]:
    """The posted form's fields: URL-encoded, UTF-8, each field once, bounded (the body
    itself is bounded by the server's middleware)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != FORM_TYPE:
        raise FormRefused(415, f"a console form is posted as {FORM_TYPE}")
    body = await request.body()
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise FormRefused(400, "the form is malformed") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise FormRefused(400, "the form names a field twice")
    if any(len(v) > MAX_FIELD_CHARS for v in form.values()):
        raise FormRefused(400, "a field of the form is too long")
    return form


RawForm = Annotated[dict[str, str], Depends(read_form)]


def checked_form(op: Op, form: RawForm) -> dict[str, str]:
    """The form, once its CSRF token is the session's."""
    if not hmac.compare_digest(form.get("csrf", ""), op.csrf):
        raise FormRefused(403, "this form's CSRF token is missing or wrong: reload the page")
    return form


Form = Annotated[dict[str, str], Depends(checked_form)]


def _safe_next(value: str | None) -> str:
    """A console path to go back to after login; anything else is the overview."""
    ok = bool(value) and str(value).startswith(PATH + "/") and "\\" not in str(value)
    if ok and urllib.parse.urlsplit(str(value)).netloc == "":
        return str(value)
    return PATH + "/"


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def login_page(
    request: Request, next_page: str | None, message: str = "", status: int = 200
) -> Response:
    nonce = secrets.token_urlsafe(24)
    context = {"next": _safe_next(next_page), "message": message}
    response = render(request, "login.html", http_status=status, csrf=csrf_token(nonce), **context)
    _cookie(response, request, LOGIN_COOKIE, nonce, LOGIN_TTL_S)
    return response


def add_routes(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, _: LoginRequired) -> Response:
        here = request.url.path
        if request.method == "GET" and request.url.query:
            here += "?" + request.url.query
        target = f"{PATH}/login?" + urllib.parse.urlencode({"next": _safe_next(here)})
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(FormRefused)
    async def refused(request: Request, exc: FormRefused) -> Response:
        return render(request, "error.html", http_status=exc.status, message=exc.message)

    @app.get(PATH + "/login", include_in_schema=False)
    def login_form(request: Request) -> Response:
        return login_page(request, request.query_params.get("next"))

    @app.post(PATH + "/login", include_in_schema=False)
    def login(request: Request, form: RawForm) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not hmac.compare_digest(form.get("csrf", ""), csrf_token(nonce)):
            raise FormRefused(403, "this form's CSRF token is missing or wrong: reload the page")
        try:
            session_id, session = _hq(request).sessions.login(
                form.get("token", ""), now(), client_host(request)
            )
        except Unauthorized as e:
            return login_page(request, form.get("next"), e.message, status=401)
        except InvalidRequest as e:
            return login_page(request, form.get("next"), e.message, status=400)
        response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
        _cookie(response, request, COOKIE, session_id, max(1, session.expires_at - now()))
        response.delete_cookie(LOGIN_COOKIE, path=PATH, httponly=True, samesite="strict")
        return response

    @app.post(PATH + "/logout", include_in_schema=False)
    def logout(request: Request, op: Op, _: Form) -> Response:
        try:
            _hq(request).sessions.logout(op.session_id, now(), client_host(request))
        except HQError:
            pass  # the cookie goes anyway
        response = RedirectResponse(PATH + "/login", status_code=303)
        response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")
        return response
