"""The HQ HTTP server's bounds on its peers: how long a client may take over a request's
head (request line and headers) and over its body, how long an idle connection stays
open, how large a head and a body may be, and how many connections one server process
serves at once. One slow or idle client is cut off at these bounds; the others go on
being served.

Plain values with the defaults ``serve --help`` and docs/hq.md state. ``serve`` hands
them to its server processes in one environment variable (``LIMITS_ENV``), beside the
home. Reads no request.
"""

import json
import os
from dataclasses import asdict, dataclass
from functools import cache

LIMITS_ENV = "FIELDPASS_HQ_LIMITS"

MAX_BODY_BYTES = 16 * 1024
MAX_HEAD_BYTES = 16 * 1024

HEADER_TIMEOUT_S = 10
BODY_TIMEOUT_S = 20
KEEP_ALIVE_TIMEOUT_S = 5
MAX_CONNECTIONS = 4096


@dataclass(frozen=True)
class Limits:
    header_timeout_s: int = HEADER_TIMEOUT_S
    """From a connection's opening, or a request's first byte, to the end of its head."""
    body_timeout_s: int = BODY_TIMEOUT_S
    """From the end of a request's head to the end of its body."""
    keep_alive_timeout_s: int = KEEP_ALIVE_TIMEOUT_S
    """An idle connection between two requests."""
    max_connections: int = MAX_CONNECTIONS
    """Open connections one server process serves at once; beyond, 503."""

    def to_env(self) -> str:
        return json.dumps(asdict(self))


@cache
def process_limits() -> Limits:
    """This server process's limits: from ``LIMITS_ENV`` (set by ``serve``), else the
    defaults. Read once per process."""
    text = os.environ.get(LIMITS_ENV)
    return Limits(**json.loads(text)) if text else Limits()
