"""What the route modules share: the clock (read here, once per request, and handed to
the services) and the client's address for the audit log.

Reads nothing from a request but its peer address.
"""

import time

from fastapi import Request


def now() -> int:
    return int(time.time())


def client_host(request: Request) -> str:
    return request.client.host if request.client else "unknown"
