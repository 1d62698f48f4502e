"""The small interface between the state machine and a transport, and the events.

A transport connects (possibly asynchronously), asks HQ for a renewal, publishes the
device's status, and posts what happens as ``Event`` tuples to the machine's queue:
``(kind, generation, payload)``. The generation is the connection attempt the event
belongs to: the machine drops events of an attempt it already gave up on. Transports
never install or decide anything: the machine does, through ``Device``.
"""

import queue
from typing import Protocol

# Events a transport posts.
CONNECTED = "connected"
DISCONNECTED = "disconnected"
FILE = "file"  # payload: (machine file bytes, the nonce last sent to HQ or None)
REVOCATION = "revocation"  # payload: a signed revocation (bytes)
BAD = "bad"  # payload: the reason (str), e.g. "oversized"
STATUS = "status"  # HQ's answer was recorded in the device state (HTTP validate)
ACK = "ack"  # payload: HQ's signed acknowledgement of a report or receipt (bytes)

Event = tuple[str, int, object]
EventQueue = queue.SimpleQueue[Event]


class Transport(Protocol):
    name: str

    def connect(self) -> int:
        """Start a connection attempt; returns its generation. The result arrives as
        CONNECTED or DISCONNECTED."""
        ...

    def disconnect(self) -> None:
        """Drop the connection (idempotent); later events of it are stale."""
        ...

    def ask(self, due: bool) -> None:
        """Send a signed renewal request (asks.py) with a fresh nonce; HQ answers with a
        file (bound to the nonce), a revocation, or nothing when nothing is due."""
        ...

    def publish_status(self, payload: bytes) -> None: ...

    # True: the transport carries the daemon's usage reports and return receipts, and
    # posts HQ's ACK for each (MQTT). False: it sends them itself (HTTP, on connect).
    carries_usage: bool

    def publish_usage(self, kind: str, payload: bytes) -> None:
        """Publish a signed report or receipt (``kind``: topics.REPORT or RECEIPT)."""
        ...

    def describe(self) -> str:
        """Where it is connected to, for logs (no credentials)."""
        ...
