"""Bearer tokens of the admin HTTP API: create one (shown once), check one.

HQ stores a token's SHA-256 only; a token is never stored, logged or shown again.
"""

import hashlib
import secrets

from ..errors import Conflict, Unauthorized
from ..models import Actor
from ..storage import Store
from .audit import event
from .names import check_name

TOKEN_PREFIX = "fphq_"  # noqa: S105 - a prefix, not a secret


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Tokens:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create_token(self, name: str, now: int, actor: Actor) -> str:
        check_name("a token name", name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.store.write() as tx:
            if tx.token_name(_token_hash(token)) is not None:  # pragma: no cover
                raise Conflict("token collision")
            if any(n == name for n, _ in tx.list_tokens()):
                raise Conflict(f"a token named {name!r} already exists")
            tx.insert_token(name, _token_hash(token), now)
            tx.append_audit(event(now, actor, "token_create", detail=f"name={name}"))
        return token

    def check_token(self, token: str) -> str:
        """The name of the admin token ``token``, or ``Unauthorized``."""
        with self.store.read() as tx:
            name = tx.token_name(_token_hash(token))
        if name is None:
            raise Unauthorized("invalid or missing bearer token")
        return name
