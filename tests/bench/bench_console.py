"""Benchmark: the HQ console's pages with a fleet of 10,000 activations.

A home seeded as the console tests' (tests/hq/fleet.py) plus 10,000 live devices on one
license (files spread over the year, as a fleet renewed at different times has them),
``fieldpass-hq serve`` with its defaults (one worker) on a loopback port, one logged-in
client. Timed, each page ``ROUNDS`` times after one warm-up, one request at a time (the
time an operator waits): the device list's first page (100 rows of 10,000), a filtered
and re-sorted page (expiring within 30 days, by last contact), its last page, the
license with the 10,000 devices, the overview (every device's verdict and the chart),
the license list, and the read API's page of 100. Reported: the median and the slowest
in milliseconds. Goal (issue 15): a list page renders in under a second.
"""

import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEVICES = int(os.environ.get("BENCH_CONSOLE_DEVICES", "10000"))
ROUNDS = int(os.environ.get("BENCH_CONSOLE_ROUNDS", "15"))


def main() -> dict[str, object]:
    import httpx

    from tests.hq import fleet
    from tests.hq.server import start_server

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "hq"
        world = fleet.seed(home, int(time.time()))
        bulk_license, _ = fleet.bulk(home, DEVICES)
        server = start_server(home)
        try:
            client = httpx.Client(base_url=server.url, timeout=60)
            page = client.get("/console/login")
            csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
            assert csrf is not None
            client.post(
                "/console/login",
                data={"csrf": csrf.group(1), "token": world.token, "next": "/console/"},
            )
            total = DEVICES + sum(world.verdicts.values())
            pages = {
                "devices_first_page": "/console/activations",
                "devices_within_30d_by_seen": (
                    "/console/activations?within=30d&sort=seen&order=desc"
                ),
                "devices_last_page": f"/console/activations?offset={total - total % 100}",
                "license_of_10k": f"/console/licenses/{bulk_license}",
                "overview": "/console/",
                "licenses": "/console/licenses",
            }
            results: dict[str, object] = {"devices": total}
            for name, path in pages.items():
                results[name] = _time(lambda p=path: client.get(p))
            admin = {"Authorization": f"Bearer {world.token}"}
            results["api_activations_100"] = _time(
                lambda: client.get("/v1/activations", params={"limit": "100"}, headers=admin)
            )
        finally:
            server.stop()
    return results


def _time(call: Callable[[], Any]) -> str:
    """The median and slowest of ROUNDS calls (each an HTTP request), after one."""
    first = call()
    assert first.status_code == 200, first.status_code
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        res = call()
        samples.append((time.perf_counter() - start) * 1000)
        assert res.status_code == 200
    return f"median {statistics.median(samples):.0f} ms, slowest {max(samples):.0f} ms"


if __name__ == "__main__":
    for k, v in main().items():
        print(f"{k:28} {v}")
