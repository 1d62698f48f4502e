"""A small HTTP/1.1 load generator for the HQ benchmark: keep-alive connections on
asyncio, requests built up front, answers parsed only as far as the status line and
Content-Length. Python's HTTP clients cost more per request than the server under test,
and this machine has no wrk or ab, so the client is kept as thin as it can be."""

import asyncio
import time
from collections import Counter
from collections.abc import Sequence


def post(path: str, host: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _connection(
    host: str,
    port: int,
    requests: Sequence[bytes],
    statuses: Counter[int],
    times: list[float] | None = None,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for request in requests:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            statuses[status] += 1
            if times is not None:
                times.append(time.perf_counter() - start)
    finally:
        writer.close()


def run(
    host: str, port: int, requests: Sequence[bytes], connections: int
) -> tuple[float, Counter[int]]:
    """Send ``requests`` over ``connections`` keep-alive connections (round-robin
    split); the wall time in seconds and the count of each status."""
    statuses: Counter[int] = Counter()
    shares = [requests[i::connections] for i in range(connections)]

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(_connection(host, port, s, statuses) for s in shares if s))
        return time.perf_counter() - start

    return asyncio.run(main()), statuses


def latencies(host: str, port: int, requests: Sequence[bytes]) -> tuple[list[float], Counter[int]]:
    """Send ``requests`` one after the other on one keep-alive connection; each one's
    time from sending to the whole answer, in seconds, and the count of each status."""
    statuses: Counter[int] = Counter()
    times: list[float] = []
    asyncio.run(_connection(host, port, requests, statuses, times))
    return times, statuses
