"""The web console's session rows (schema 8): one per login, keyed by the SHA-256 of the
session's id, with the admin token it was opened with.

``SessionRows`` is part of ``Tx`` (storage/tx.py mixes it in). A session is read with
its token's expiry and revocation in the same query, so that revoking a token ends its
sessions on the next request, on every replica. A session id itself is never stored;
nothing here logs.
"""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SessionRow:
    token_name: str
    created_at: int
    expires_at: int
    ended_at: int | None
    token_expires_at: int | None
    token_revoked_at: int | None


class SessionRows:
    """The operations; ``Tx`` supplies ``_one`` and ``_run`` (and the transaction)."""

    def _one(self, sql: str, **params: Any) -> Any:
        raise NotImplementedError

    def _run(self, sql: str, **params: Any) -> int:
        raise NotImplementedError

    def insert_session(self, id_hash: str, token_name: str, now: int, expires_at: int) -> None:
        self._run(
            "INSERT INTO console_sessions (id_hash, token_name, created_at, expires_at, "
            "ended_at) VALUES (:h, :name, :now, :expires, NULL)",
            h=id_hash,
            name=token_name,
            now=now,
            expires=expires_at,
        )

    def get_session(self, id_hash: str) -> SessionRow | None:
        row = self._one(
            "SELECT s.token_name, s.created_at, s.expires_at, s.ended_at, t.expires_at, "
            "t.revoked_at FROM console_sessions s JOIN api_tokens t ON t.name = s.token_name "
            "WHERE s.id_hash = :h",
            h=id_hash,
        )
        return None if row is None else SessionRow(*row)

    def end_session(self, id_hash: str, now: int) -> int:
        return self._run(
            "UPDATE console_sessions SET ended_at = :now WHERE id_hash = :h AND ended_at IS NULL",
            now=now,
            h=id_hash,
        )

    def prune_sessions(self, before: int) -> int:
        """Forget sessions that expired before ``before`` (their logins stay audited)."""
        return self._run("DELETE FROM console_sessions WHERE expires_at < :before", before=before)
