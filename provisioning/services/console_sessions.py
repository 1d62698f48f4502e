"""The web console's sessions: an operator logs in with an admin token (the token names
them: ``console:NAME`` in the audit log), gets a session id for a cookie, and logs out.

Sessions live in the database (schema 8), so that every ``serve`` worker and replica
sharing it knows them, and a logout or a token's revocation ends a session everywhere
on its next request; no signing secret has to be copied between hosts. HQ keeps the
SHA-256 of a session id, never the id. A session ends at its expiry
(``SESSION_TTL_S``, never after its token's own expiry), at logout, or when its token is
revoked or expires. Logins and logouts are audited; a token or a session id is never
logged, returned twice or put in an error message.
"""

import hashlib
import secrets
from dataclasses import dataclass

from ..errors import Unauthorized
from ..models import Actor
from ..storage import Store
from ..units import format_time
from .audit import event
from .tokens import Tokens

SESSION_TTL_S = 8 * 3600  # a working day: an operator logs in again each morning
_PRUNE_ONE_IN = 32  # now and then, a login forgets sessions expired over a day ago


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Session:
    """A live session: whose (the admin token's name) and until when."""

    token_name: str
    expires_at: int

    def actor(self, source: str) -> Actor:
        return Actor(f"console:{self.token_name}", source)


class ConsoleSessions:
    def __init__(self, store: Store, tokens: Tokens) -> None:
        self.store = store
        self.tokens = tokens

    def login(self, token: str, now: int, source: str) -> tuple[str, Session]:
        """A new session for admin token ``token`` (``Unauthorized`` saying why not):
        its id, for the cookie, and the session."""
        name = self.tokens.check_token(token.strip(), now)
        info = next(t for t in self.tokens.list_tokens() if t.name == name)
        expires_at = now + SESSION_TTL_S
        if info.expires_at is not None:
            expires_at = min(expires_at, info.expires_at)
        session_id = secrets.token_urlsafe(32)
        session = Session(name, expires_at)
        with self.store.write() as tx:
            tx.insert_session(_hash(session_id), name, now, expires_at)
            until = f"until={format_time(expires_at)}"
            tx.append_audit(event(now, session.actor(source), "console_login", detail=until))
            if secrets.randbelow(_PRUNE_ONE_IN) == 0:
                tx.prune_sessions(now - 86400)
        return session_id, session

    def session(self, session_id: str, now: int) -> Session:
        """The live session of ``session_id``, else ``Unauthorized`` saying why."""
        with self.store.read() as tx:
            row = tx.get_session(_hash(session_id))
        if row is None or row.ended_at is not None:
            raise Unauthorized("not logged in")
        if now >= row.expires_at:
            raise Unauthorized("the session expired: log in again")
        if row.token_revoked_at is not None:
            raise Unauthorized(f"token {row.token_name!r} was revoked: log in with another")
        if row.token_expires_at is not None and now >= row.token_expires_at:
            raise Unauthorized(f"token {row.token_name!r} expired: log in with another")
        return Session(row.token_name, row.expires_at)

    def logout(self, session_id: str, now: int, source: str) -> None:
        """End the session (nothing happens for one already ended or unknown)."""
        with self.store.write() as tx:
            row = tx.get_session(_hash(session_id))
            if row is None or not tx.end_session(_hash(session_id), now):
                return
            actor = Session(row.token_name, row.expires_at).actor(source)
            tx.append_audit(event(now, actor, "console_logout"))
