"""Benchmark: the HQ server over HTTP on both engines beside a FastAPI echo floor, how
activation latency grows with the rows stored, and bulk issuance against raw sealing.

HTTP, in one run, interleaved ``ROUNDS`` times: the floor (tests/bench/echo_app.py: the
same request model validated and echoed), then ``fieldpass-hq serve --workers 2
--no-access-log`` on SQLite at synchronous=FULL (every answer follows an fsynced commit;
group commit shares one among the requests that arrive together), then the same on
PostgreSQL (tests/pg_server.py on these same cores, fsync and synchronous_commit on),
then PostgreSQL again with the devices dealt over ``LICENSES`` licenses (every
activation of one license waits on its row lock: the other series put all on one).
The load comes from tests/bench/load.py, 32 keep-alive connections, on the same cores.
Timed: N new activations (a seat each, distinct fingerprints), then N renewals (POST
/v1/machine-file) of the same devices. Every answer must be 201/200.

Latency: activations one after the other on one connection (median and p99 of
``LATENCY_N``) with 1,000 activations stored, then with ``STORED`` (bulk-inserted rows
and their audit lines on the same license), on each engine.

Bulk: ``HQ.renew_all`` (one transaction: N serials and expiries recorded and audited,
then N files sealed) against ``seal_machine_file`` alone on the same claims, in the same
run, alternating three times and keeping the best of each.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

N = int(os.environ.get("BENCH_HQ_REQUESTS", "5000"))
ROUNDS = int(os.environ.get("BENCH_HQ_ROUNDS", "3"))
STORED = int(os.environ.get("BENCH_HQ_STORED", "1000000"))
LATENCY_N = int(os.environ.get("BENCH_HQ_LATENCY_N", "2000"))
CONNECTIONS = 32
LICENSES = 8  # the PostgreSQL series whose devices are dealt over several licenses
SPREAD = f"postgresql_{LICENSES}_licenses"
WORKERS = 2
HOST = "127.0.0.1"


def _bodies(path: str, key: str | list[str], first: int, n: int) -> list[bytes]:
    """``n`` requests for distinct devices; with several license keys, the devices are
    dealt over them in turn."""
    from tests.bench import load

    keys = [key] if isinstance(key, str) else key
    return [
        load.post(
            path,
            HOST,
            json.dumps({"license_key": keys[i % len(keys)], "fingerprint": f"{i:064x}"}).encode(),
        )
        for i in range(first, first + n)
    ]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _cpu_s(*roots: int) -> float:
    """CPU seconds (user + system) used so far by these processes and their children
    (the server's workers; PostgreSQL's backends), from /proc."""
    total = 0.0
    todo = list(roots)
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        todo.extend(int(c) for c in children)
    return total


# CPU per request is what the shared machine does not blur much: the figures per second
# depend on how much of the two cores the other sessions leave, this does not.
_CPU: dict[str, list[float]] = {}


def _echo(first: int) -> float:
    from tests.bench import load
    from tests.hq.server import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.bench.echo_app:app", "--host", HOST,
         "--port", str(port), "--workers", str(WORKERS), "--no-access-log",
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                load.run(HOST, port, _bodies("/v1/activate", "FP-AAAAA-AAAAA-AAAAA-AAAAA-AAAAA",
                                             0, 300), CONNECTIONS)  # fmt: skip
                break
            except OSError:
                assert time.monotonic() < deadline, "the echo server did not start"
                time.sleep(0.1)
        key = "FP-AAAAA-AAAAA-AAAAA-AAAAA-AAAAA"
        c0, l0 = _cpu_s(proc.pid), time.process_time()
        t, st = load.run(HOST, port, _bodies("/v1/activate", key, first, N), CONNECTIONS)
        _CPU.setdefault("echo", []).append((_cpu_s(proc.pid) - c0) / N)
        _CPU.setdefault("loadgen", []).append((time.process_time() - l0) / N)
        assert dict(st) == {201: N}, st
        return N / t
    finally:
        proc.terminate()
        proc.wait(30)


def _http(
    home: Path, key: str | list[str], first: int, label: str, db_pid: int | None
) -> tuple[float, float]:
    from tests.bench import load
    from tests.hq.server import start_server

    server = start_server(home, "--workers", str(WORKERS), "--no-access-log")
    port = _port(server.url)
    try:
        load.run(HOST, port, _bodies("/v1/activate", key, 10**9 + first, 300), CONNECTIONS)
        c0 = _cpu_s(server.proc.pid)
        d0 = _cpu_s(db_pid) if db_pid else 0.0
        t_act, st_act = load.run(HOST, port, _bodies("/v1/activate", key, first, N), CONNECTIONS)
        _CPU.setdefault(label, []).append((_cpu_s(server.proc.pid) - c0) / N)
        if db_pid:
            _CPU.setdefault(f"{label}_server", []).append((_cpu_s(db_pid) - d0) / N)
        t_ren, st_ren = load.run(
            HOST, port, _bodies("/v1/machine-file", key, first, N), CONNECTIONS
        )
    finally:
        server.stop()
    assert dict(st_act) == {201: N}, st_act
    assert dict(st_ren) == {200: N}, st_ren
    return N / t_act, N / t_ren


def _latencies(homes: dict[str, tuple[Path, str]]) -> dict[str, dict[str, float]]:
    """Activations one after the other on one connection to each server, alternating
    between the servers every 50 requests (so that the machine's noise falls on all of
    them alike); median and p99 for each."""
    from tests.bench import load
    from tests.hq.server import start_server

    servers = {
        name: start_server(home, "--workers", str(WORKERS), "--no-access-log")
        for name, (home, _) in homes.items()
    }
    times: dict[str, list[float]] = {name: [] for name in homes}
    try:
        for name, (_, key) in homes.items():
            load.latencies(HOST, _port(servers[name].url),
                           _bodies("/v1/activate", key, 10**10, 200))  # fmt: skip
        for first in range(0, LATENCY_N, 50):
            for name, (_, key) in homes.items():
                got, st = load.latencies(
                    HOST, _port(servers[name].url), _bodies("/v1/activate", key, first, 50)
                )
                assert dict(st) == {201: 50}, st
                times[name].extend(got)
    finally:
        for server in servers.values():
            server.stop()
    out = {}
    for name, values in times.items():
        values.sort()
        out[name] = {
            "median_ms": round(statistics.median(values) * 1000, 3),
            "p99_ms": round(values[int(len(values) * 0.99)] * 1000, 3),
        }
    return out


def _preload(home: Path, key: str, n: int) -> None:
    """``n`` activations of ``key``'s license and their audit lines, bulk-inserted (no
    seat check: the rows are only there to be stored)."""
    from agent.wire import license_key
    from provisioning import config
    from provisioning.storage import open_store

    lic = license_key.license_id(key)
    db = config.database(home)
    store = open_store(db.url, pool_size=1)
    now = int(time.time())
    try:
        with store.write() as tx:
            tx.before_load()
            for start in range(0, n, 50_000):
                count = min(50_000, n - start)
                ids = [f"act_{start + i:020x}" for i in range(count)]
                tx.insert_rows(
                    "activations",
                    ["id", "license_id", "fingerprint", "serial", "created_at",
                     "last_issued_at", "last_expires_at"],
                    ([a, lic, f"{2**255 + start + i:064x}", 1, now, now, now + 86400]
                     for i, a in enumerate(ids)),
                )  # fmt: skip
                tx.insert_rows(
                    "audit",
                    ["at", "actor", "source", "action", "license_id", "activation_id", "detail"],
                    ([now, "bench", "local", "activate", lic, a, "serial=1"] for a in ids),
                )
            tx.after_load()
    finally:
        store.close()


def _scaling(engine: Any, base: Path) -> dict[str, object]:
    """Latency on a home with 1,000 activations stored against one with ``STORED`` (in
    bulk, on another license: a plan's seats stop at 1,000,000), measured together."""
    from tests.hq.server import hq_json, prepare_home

    homes: dict[str, tuple[Path, str]] = {}
    for label, stored in (("stored_1k", 1000), (f"stored_{STORED}", STORED)):
        home = base / f"{engine.name}-{label}"
        engine.configure(home)
        prepare_home(home, seats=1_000_000)
        key = str(hq_json(home, "licenses", "create", "--plan", "std")["key"])
        other = str(hq_json(home, "licenses", "create", "--plan", "std")["key"])
        start = time.perf_counter()
        _preload(home, other, stored)
        print(f"  {engine.name}: {stored} rows stored in {time.perf_counter() - start:.0f} s",
              flush=True)  # fmt: skip
        homes[label] = (home, key)
    out: dict[str, Any] = _latencies(homes)
    small, large = out["stored_1k"], out[f"stored_{STORED}"]
    out["median_ratio"] = round(large["median_ms"] / small["median_ms"], 2)
    out["p99_ratio"] = round(large["p99_ms"] / small["p99_ms"], 2)
    return out


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
    hq.store.close()
    bulk_rate, raw_rate = files / bulk_best, files / raw_best
    return {
        "bulk_files": files,
        "bulk_files_per_s": round(bulk_rate),
        "raw_seal_per_s": round(raw_rate),
        "bulk_vs_raw": round(bulk_rate / raw_rate, 3),
    }


def _summary(values: list[float]) -> dict[str, int]:
    return {"median": round(statistics.median(values)), "min": round(min(values)),
            "max": round(max(values))}  # fmt: skip


def main() -> dict[str, object]:
    from tests.engines import Engine
    from tests.hq.server import hq_json, prepare_home
    from tests.pg_server import Postgres

    results: dict[str, Any] = {}
    pg = Postgres().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            homes = {"sqlite": Path(tmp) / "sqlite", "postgresql": Path(tmp) / "postgresql"}
            keys = {}
            for name, home in homes.items():
                Engine(name, pg if name == "postgresql" else None).configure(home)
                prepare_home(home, seats=1_000_000)
                keys[name] = str(hq_json(home, "licenses", "create", "--plan", "std")["key"])
            # the same PostgreSQL home, its devices dealt over several licenses: what one
            # license's row lock costs (every activation of a license waits on it)
            spread = [
                str(hq_json(homes["postgresql"], "licenses", "create", "--plan", "std")["key"])
                for _ in range(LICENSES)
            ]
            series = [*homes, SPREAD]
            rates: dict[str, list[float]] = {"echo": [], **{n: [] for n in series}}
            renewals: dict[str, list[float]] = {n: [] for n in series}
            ratios: dict[str, list[float]] = {n: [] for n in series}
            for r in range(ROUNDS):
                echo = _echo(r * N)
                rates["echo"].append(echo)
                for name, home in homes.items():
                    db_pid = pg.proc.pid if name == "postgresql" and pg.proc else None
                    act, ren = _http(home, keys[name], r * N, name, db_pid)
                    rates[name].append(act)
                    renewals[name].append(ren)
                    ratios[name].append(act / echo)
                act, ren = _http(homes["postgresql"], spread, 10**8 + r * N, SPREAD,
                                 pg.proc.pid if pg.proc else None)  # fmt: skip
                rates[SPREAD].append(act)
                renewals[SPREAD].append(ren)
                ratios[SPREAD].append(act / echo)
                print(f"  round {r + 1}: echo {echo:.0f}/s, " + ", ".join(
                    f"{n} {rates[n][-1]:.0f} act/s {renewals[n][-1]:.0f} ren/s"
                    for n in series), flush=True)  # fmt: skip
            results["echo_floor_per_s"] = _summary(rates["echo"])
            for name in series:
                results[f"{name}_activations_per_s"] = _summary(rates[name])
                results[f"{name}_renewals_per_s"] = _summary(renewals[name])
                results[f"{name}_vs_echo"] = [round(x, 3) for x in ratios[name]]
            cpu_us = {k: round(statistics.median(v) * 1e6) for k, v in _CPU.items()}
            results["cpu_us_per_request"] = cpu_us
            # what two otherwise idle cores would do, from the CPU each request costs
            # (HQ's processes, PostgreSQL's, the load generator): an estimate, not a
            # measurement, shown beside the measured rates
            for name in ("echo", *series):
                cost = cpu_us[name] + cpu_us.get(f"{name}_server", 0) + cpu_us["loadgen"]
                results[f"{name}_per_s_on_2_idle_cores_est"] = round(2e6 / cost)
            results["http_requests_each"] = N
            results["server"] = f"{WORKERS} workers, --no-access-log, {CONNECTIONS} connections"
            for name in homes:
                engine = Engine(name, pg if name == "postgresql" else None)
                results[f"{name}_latency"] = _scaling(engine, Path(tmp))
                print(f"  {name} latency: {results[f'{name}_latency']}", flush=True)
            results.update(_bulk(homes["sqlite"], keys["sqlite"]))
    finally:
        pg.stop()
    return results


if __name__ == "__main__":
    for k, v in main().items():
        print(f"{k:32} {v}")
