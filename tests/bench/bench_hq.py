"""Benchmark: the HQ server over HTTP, and bulk issuance against the raw sealing rate.

HTTP: ``fieldpass-hq serve --workers 2`` (the deployment docs/hq.md gives for two cores;
access log on, as by default) on a loopback port, the database at synchronous=FULL (the
server's default: every commit is fsynced before the answer). The load comes from
tests/bench/load.py, 32 keep-alive connections on the same two cores. Timed: N new
activations (a seat each, distinct fingerprints), then N renewals (POST /v1/machine-file)
of the same devices. Every answer must be 201/200.

Bulk: ``HQ.renew_all`` (one transaction: N serials and expiries recorded and audited,
then N files sealed) against ``seal_machine_file`` alone on the same claims, in the same
run, alternating three times and keeping the best of each.
"""

import json
import os
import tempfile
import time
from pathlib import Path

N = int(os.environ.get("BENCH_HQ_REQUESTS", "5000"))
CONNECTIONS = 32
WORKERS = 2


def _http(home: Path, key: str) -> dict[str, object]:
    from tests.bench import load
    from tests.hq.server import start_server

    server = start_server(home, "--workers", str(WORKERS))
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])

    def bodies(path: str, first: int, n: int) -> list[bytes]:
        return [
            load.post(
                path, host, json.dumps({"license_key": key, "fingerprint": f"{i:064x}"}).encode()
            )
            for i in range(first, first + n)
        ]

    try:
        load.run(host, port, bodies("/v1/activate", 10**9, 300), CONNECTIONS)  # warm-up
        t_act, st_act = load.run(host, port, bodies("/v1/activate", 0, N), CONNECTIONS)
        t_ren, st_ren = load.run(host, port, bodies("/v1/machine-file", 0, N), CONNECTIONS)
    finally:
        server.stop()
    assert dict(st_act) == {201: N}, st_act
    assert dict(st_ren) == {200: N}, st_ren
    return {
        "activations_per_s": round(N / t_act),
        "renewals_per_s": round(N / t_ren),
        "http_requests_each": N,
        "server": f"{WORKERS} workers, synchronous=FULL, access log on",
    }


def _bulk(home: Path, key: str) -> dict[str, object]:
    from agent.wire import license_key
    from agent.wire.machine_file import seal_machine_file
    from provisioning.models import Actor
    from provisioning.services import HQ

    hq = HQ(home)
    lic = license_key.license_id(key)
    actor = Actor("bench", "local")
    bulk_best = raw_best = float("inf")
    files = 0
    for _ in range(3):
        start = time.perf_counter()
        issued = hq.renew_all(lic, None, int(time.time()), actor)
        bulk_best = min(bulk_best, time.perf_counter() - start)
        files = len(issued)
        with hq.store.read() as tx:
            signing = hq.keys.signing_key(tx)  # the key renew_all used
        claims = [i.claims for i in issued]
        start = time.perf_counter()
        for c in claims:
            seal_machine_file(c, key, signing)
        raw_best = min(raw_best, time.perf_counter() - start)
    bulk_rate, raw_rate = files / bulk_best, files / raw_best
    return {
        "bulk_files": files,
        "bulk_files_per_s": round(bulk_rate),
        "raw_seal_per_s": round(raw_rate),
        "bulk_vs_raw": round(bulk_rate / raw_rate, 3),
    }


def main() -> dict[str, object]:
    from tests.hq.server import hq_json, prepare_home

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "hq"
        prepare_home(home, seats=1_000_000)
        key = str(hq_json(home, "licenses", "create", "--plan", "std")["key"])
        results = _http(home, key)
        results.update(_bulk(home, key))
    return results


if __name__ == "__main__":
    for k, v in main().items():
        print(f"{k:24} {v}")
