"""Bearer tokens of the admin HTTP API: create one (shown once, with an expiry), list
them, revoke one, check one.

HQ stores a token's SHA-256 only; a token is never stored, logged or shown again. A
revoked token keeps its row (and its name: a new token takes a new name), so that the
list and the audit log say what existed and when it stopped working.
"""

import hashlib
import secrets

from ..errors import Conflict, InvalidRequest, TokenNotFound, Unauthorized
from ..models import Actor, TokenInfo
from ..storage import Store
from ..units import MAX_DURATION_S, format_time
from .audit import event
from .names import check_name

TOKEN_PREFIX = "fphq_"  # noqa: S105 - a prefix, not a secret
# A token left in a script or a console's config is often found leaked late: by default
# it stops working after a quarter, which an operator renews as a routine.
DEFAULT_TOKEN_TTL_S = 90 * 86400


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Tokens:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create_token(
        self,
        name: str,
        now: int,
        actor: Actor,
        ttl_s: int | None = DEFAULT_TOKEN_TTL_S,
        *,
        not_after: int | None = None,
    ) -> tuple[str, TokenInfo]:
        """A new token named ``name``, valid for ``ttl_s`` (None: until revoked), and
        never after ``not_after`` (the console: no later than the token of the operator
        who makes it, so that a leaked token cannot outlive itself through another)."""
        check_name("a token name", name)
        if ttl_s is not None and not 1 <= ttl_s <= MAX_DURATION_S:
            raise InvalidRequest("a token's lifetime is at least 1 s and at most 100 years")
        expires_at = None if ttl_s is None else now + ttl_s
        if not_after is not None and (expires_at is None or expires_at > not_after):
            raise InvalidRequest(
                f"this token may expire at {format_time(not_after)} at the latest "
                "(the expiry of the token you are logged in with)"
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.store.write() as tx:
            if tx.token_by_hash(_token_hash(token)) is not None:  # pragma: no cover
                raise Conflict("token collision")
            if tx.get_token(name) is not None:
                raise Conflict(f"a token named {name!r} already exists (names are never reused)")
            tx.insert_token(name, _token_hash(token), now, expires_at)
            detail = f"name={name} expires={format_time(expires_at) if expires_at else 'never'}"
            tx.append_audit(event(now, actor, "token_create", detail=detail))
        return token, TokenInfo(name, now, expires_at, None)

    def list_tokens(self) -> list[TokenInfo]:
        with self.store.read() as tx:
            return tx.list_tokens()

    def revoke_token(self, name: str, now: int, actor: Actor) -> TokenInfo:
        """Revoke token ``name`` for good: the next request with it gets 401. A token
        does not revoke itself over the API (a client would lock itself out by a
        mistake): another token or the command line does."""
        if actor.who in (f"token:{name}", f"console:{name}"):
            raise Conflict(
                f"token {name!r} cannot revoke itself: use another token, or "
                f"'fieldpass-hq tokens revoke {name}' on HQ's host"
            )
        with self.store.write() as tx:
            info = tx.get_token(name)
            if info is None:
                raise TokenNotFound(f"no token named {name!r}")
            if info.revoked_at is not None:
                raise Conflict(f"token {name!r} was revoked at {format_time(info.revoked_at)}")
            tx.revoke_token(name, now)
            tx.append_audit(event(now, actor, "token_revoke", detail=f"name={name}"))
        return TokenInfo(info.name, info.created_at, info.expires_at, now)

    def check_token(self, token: str, now: int) -> str:
        """The name of the admin token ``token`` if it may be used at ``now``, else
        ``Unauthorized`` saying why (unknown, revoked, expired)."""
        with self.store.read() as tx:
            info = tx.token_by_hash(_token_hash(token))
        if info is None:
            raise Unauthorized("invalid or missing bearer token")
        if info.revoked_at is not None:
            raise Unauthorized(
                f"token {info.name!r} was revoked at {format_time(info.revoked_at)}: "
                "ask HQ's operator for a new one"
            )
        if info.expires_at is not None and now >= info.expires_at:
            raise Unauthorized(
                f"token {info.name!r} expired at {format_time(info.expires_at)}: "
                "ask HQ's operator for a new one"
            )
        return info.name
