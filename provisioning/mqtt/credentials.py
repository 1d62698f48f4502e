"""HQ's MQTT secret (``HOME/mqtt.secret``, 32 random bytes, mode 0600) and the broker
passwords derived from it, so that nothing but the secret needs storing at HQ::

    password(user) = base64url(HMAC-SHA256(secret, b"fieldpass/mqtt-password/v1\\0" + user))[:32]

A device's broker user name is its device id (agent/daemon/topics.py: ``d`` and 24 hex
digits). Every HQ process has a user of its own, so that a broker binding client ids to
user names never makes two of them knock each other off: ``fieldpass-hq-bridge-N`` for
bridge replica N, ``fieldpass-hq-push``, ``fieldpass-hq-field`` for a technician's laptop
offering a bundle. The ``fieldpass-hq`` prefix is HQ's: no device id can take it.
Rotating the secret rotates every password.
"""

import base64
from pathlib import Path

from agent.wire import sodium

from .. import secret_file

SECRET_NAME = "mqtt.secret"  # noqa: S105 - a file name
HQ_PREFIX = "fieldpass-hq"
PUSH_USER = "fieldpass-hq-push"
FIELD_USER = "fieldpass-hq-field"
MAX_BRIDGES = 64
CONTEXT = b"fieldpass/mqtt-password/v1\0"


def secret(home: Path) -> bytes:
    """The MQTT secret of ``home``, made on first use."""
    path = home / SECRET_NAME
    return secret_file.read(path) or secret_file.create(path)


def bridge_user(replica: int) -> str:
    """The broker user (and client id) of bridge replica ``replica`` (1, 2, ...)."""
    return f"{HQ_PREFIX}-bridge-{replica}"


def hq_users(bridges: int) -> list[str]:
    return [*(bridge_user(n) for n in range(1, bridges + 1)), PUSH_USER, FIELD_USER]


def password(key: bytes, user: str) -> str:
    digest = sodium.hmac_sha256(key, CONTEXT + user.encode("utf-8"))
    return base64.urlsafe_b64encode(digest).decode("ascii")[:32]
