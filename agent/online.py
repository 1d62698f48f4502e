"""The device's online path: HTTP to HQ with the standard library only.

``Hq`` speaks the device endpoints of the HQ API (docs/hq.md): activate, machine-file
(renewal), validate, deactivate. TLS is verified against the system store, or the CA
file named in the config. Failures are typed by who must act:

- ``Unreachable``: the network, a timeout, or a server error. The caller falls back to
  the offline verdict, as the product document says. ``ServerError`` is the kind of
  Unreachable where a server did answer, with a 5xx status (a technician's laptop
  answers /v1/validate with 503: it cannot validate, but it may carry a renewal).
- ``Refused``: an authoritative answer from HQ (revoked, suspended, not found, seat
  limit, ...) with HQ's stable error code.

The license key travels only in the activation request's body, over the connection to
HQ; every later request is signed with the device key instead (sync.py). It is never
logged, printed or put in a URL.
"""

import base64
import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request

from . import __version__, jsonin
from .config import Config

MAX_RESPONSE_BYTES = 256 * 1024


class OnlineError(Exception):
    pass


class Unreachable(OnlineError):
    """HQ could not be asked: fall back to the offline verdict."""


class ServerError(Unreachable):
    """A server answered with a 5xx status: it is there but cannot serve this request."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Refused(OnlineError):
    """HQ answered and said no. ``code`` is HQ's stable error code; ``answer`` the whole
    JSON document of the refusal (bounded, unsigned: only what it carries signed counts,
    an acknowledgement of a return receipt for one)."""

    def __init__(
        self, code: str, message: str, status: int, answer: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.answer = answer if answer is not None else {}


def hqs(cfg: Config, server: str | None = None, timeout_s: float | None = None) -> list["Hq"]:
    """The servers to ask, in order: ``--server``, else the config's ``server`` then
    ``servers`` (a technician's laptop on the local link, for one)."""
    urls = [server] if server else cfg.servers
    if not urls:
        raise OnlineError("no HQ server: pass --server URL or set [online] server in agent.toml")
    timeout = timeout_s if timeout_s is not None else cfg.online_timeout_s
    return [Hq(url, timeout, cfg.ca_file or None) for url in urls]


class Hq:
    """One HQ server (or a laptop standing in for it) over HTTP(S): TLS verified against
    ``ca_file`` (None: the system's CAs)."""

    def __init__(self, server: str, timeout_s: float, ca_file: str | None = None):
        self.server = server.rstrip("/")
        if not self.server.startswith(("https://", "http://")):
            raise OnlineError(f"HQ server must be an http(s) URL, not {self.server!r}")
        self.timeout_s = timeout_s
        self.context: ssl.SSLContext | None = None
        if self.server.startswith("https://"):
            self.context = ssl.create_default_context(cafile=ca_file)

    def post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.server + path,
            data=json.dumps(body).encode("utf-8"),
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"fieldpass-agent/{__version__}",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(  # noqa: S310 - the scheme is checked in __init__
                request, timeout=self.timeout_s, context=self.context
            ) as response:
                return _json(response.read(MAX_RESPONSE_BYTES + 1))
        except urllib.error.HTTPError as e:
            if e.code >= 500:
                raise ServerError(
                    f"HQ at {self.server} answered with a server error ({e.code})", e.code
                ) from None
            try:
                payload = _json(e.read(MAX_RESPONSE_BYTES + 1))
            except (Unreachable, OSError, http.client.HTTPException):
                payload = {}
            error = payload.get("error")
            code, message = "http_" + str(e.code), f"HQ refused the request ({e.code})"
            if isinstance(error, dict):
                code = _printable(error.get("code"), code, 64)
                message = _printable(error.get("message"), message, 300)
            raise Refused(code, message, e.code, payload) from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
            raise Unreachable(f"HQ at {self.server} is unreachable ({_why(e)})") from None

    def challenge(self) -> str:
        """A fresh server challenge: the nonce a signed device request is made over, so
        that a recorded request cannot be replayed later (``POST /v1/challenge``)."""
        doc = self.post("/v1/challenge", {})
        challenge = doc.get("challenge")
        if not isinstance(challenge, str) or not 0 < len(challenge) <= 128:
            raise Unreachable("HQ's answer holds no challenge")
        return challenge

    def machine_file(self, path: str, body: dict[str, object]) -> tuple[bytes, dict[str, object]]:
        """POST and return the machine file HQ answered with (armored in the JSON)."""
        from .wire import armor
        from .wire.errors import FormatError

        doc = self.post(path, body)
        text = doc.get("machine_file")
        if not isinstance(text, str):
            raise Unreachable("HQ's answer holds no machine file")
        try:
            return armor.unarmor(text, armor.MACHINE_FILE), doc
        except FormatError:
            raise Unreachable("HQ's answer holds a malformed machine file") from None


def _json(raw: bytes) -> dict[str, object]:
    """An answer's JSON object, bounded in size and depth; anything else is Unreachable
    (the offline verdict stands)."""
    if len(raw) > MAX_RESPONSE_BYTES:
        raise Unreachable("HQ's answer is too large")
    try:
        return jsonin.loads_object(raw, max_bytes=MAX_RESPONSE_BYTES)
    except jsonin.JsonError as e:
        raise Unreachable(f"HQ's answer is unusable ({e})") from None


def _why(e: Exception) -> str:
    """Why a request failed, in words ("Connection refused", "timed out")."""
    reason = getattr(e, "reason", None) or e
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return _printable(str(reason), type(reason).__name__, 200)


def _printable(value: object, default: str, limit: int) -> str:
    """A peer's text for a message a person reads: short, one line, printable."""
    if not isinstance(value, str) or not value:
        return default
    return "".join(c if c.isprintable() else " " for c in value[:limit])


def is_loopback(url: str) -> bool:
    """The URL names this machine (127.0.0.0/8, ::1, localhost)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def new_nonce() -> str:
    return base64.urlsafe_b64encode(os.urandom(18)).decode("ascii")
