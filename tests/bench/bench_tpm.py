"""Benchmark: the TPM NV counter against swtpm on loopback, through tpm2-tools
(agent/tpm.py) and through the in-process client (agent/tpm2.py), in one run.

What the boot gate pays with ``[tpm] enabled = true``: one ``read`` to check the binding
(``check``), and on every state save one ``read`` + ``increment`` (the increment is
``tpm2_nvincrement`` then ``tpm2_nvread``; ``bump`` skips the read-back). Through
tpm2-tools each is a process, so those figures are dominated by process start-up and
the TCTI, not by the TPM command; a hardware TPM adds its own command time (NV writes are
the slow ones). In process, a command is a write and a read on one connection.

``boot``: what a gate does with the TPM, 3 reads + 1 increment: four tool runs, or one
connection (opened and closed inside the figure) carrying four commands. ``process``:
a fresh interpreter that imports agent.tpm2 and runs ``boot``, against the same
interpreter running ``pass``: the whole price a boot pays for the in-process client
(swtpm is a process too, so on a loaded machine its wake-ups add to this figure; the
minimums show the floor).
Medians over ROUNDS rounds, interleaved so a noisy machine slows every figure alike.
"""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.tpm import check_binding
from agent.tpm2 import Tpm
from tests.tpm_server import Swtpm
from tests.tpm_tools import NvCounter

ROUNDS = 30
INNER = 20  # in-process commands per round, averaged: one is a few tens of microseconds
PROCESS_RUNS = 3  # fresh interpreters per round, each side
INDEX = 0x01500016

BOOT_SCRIPT = """
import sys
from agent.tpm2 import Tpm
with Tpm(sys.argv[1], timeout_s=10) as t:
    for _ in range(3):
        t.nv_read_counter(0x01500016)
    t.nv_increment(0x01500016)
"""


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _run(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return _ms(start)


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-tpm-") as tmp:
        server = Swtpm(Path(tmp))
        server.start()
        try:
            figures = _measure(server)
        finally:
            server.stop()
    return figures


def _measure(server: Swtpm) -> dict[str, float]:
    counter = NvCounter(INDEX, tcti=server.tcti, timeout_s=10)
    start = time.perf_counter()
    counter.ensure()
    define_ms = _ms(start)
    start = time.perf_counter()
    counter.ensure()
    ensure_ms = _ms(start)
    boot_cmd = [sys.executable, "-I", "-c", BOOT_SCRIPT, server.tcti]
    pass_cmd = [sys.executable, "-I", "-c", "pass"]
    runs: dict[str, list[float]] = {
        name: []
        for name in (
            "read",
            "increment",
            "save",
            "bump",
            "boot",
            "inproc_read",
            "inproc_increment",
            "inproc_boot",
            "inproc_connect",
            "process_boot",
            "process_pass",
        )
    }
    for _ in range(ROUNDS):
        start = time.perf_counter()
        value = counter.read()
        runs["read"].append(_ms(start))
        assert check_binding(value, value) == "ok"

        start = time.perf_counter()
        counter.increment()
        runs["increment"].append(_ms(start))

        start = time.perf_counter()  # a state save: read, (write state), increment
        mark = counter.read() + 1
        assert counter.increment() == mark
        runs["save"].append(_ms(start))

        start = time.perf_counter()  # the same save with bump(): no read-back
        mark = counter.read() + 1
        counter.bump()
        runs["bump"].append(_ms(start))

        start = time.perf_counter()  # a boot: 3 reads + 1 increment, four tool runs
        for _ in range(3):
            counter.read()
        counter.bump()
        runs["boot"].append(_ms(start))

        with Tpm(server.tcti, timeout_s=10) as tpm:  # in process, on one warm connection
            start = time.perf_counter()
            for _ in range(INNER):
                tpm.nv_read_counter(INDEX)
            runs["inproc_read"].append(_ms(start) / INNER)
            start = time.perf_counter()
            for _ in range(INNER):
                tpm.nv_increment(INDEX)
            runs["inproc_increment"].append(_ms(start) / INNER)

        start = time.perf_counter()  # a boot in process: the connection included
        with Tpm(server.tcti, timeout_s=10) as tpm:
            for _ in range(3):
                tpm.nv_read_counter(INDEX)
            tpm.nv_increment(INDEX)
        runs["inproc_boot"].append(_ms(start))

        start = time.perf_counter()
        for _ in range(INNER):
            Tpm(server.tcti, timeout_s=10).close()
        runs["inproc_connect"].append(_ms(start) / INNER)

        for _ in range(PROCESS_RUNS):  # alternated, so load hits both alike
            runs["process_pass"].append(_run(pass_cmd))
            runs["process_boot"].append(_run(boot_cmd))
    med = {name: statistics.median(values) for name, values in runs.items()}
    return {
        "rounds": float(ROUNDS),
        "define_first_ms": round(define_ms, 2),
        "ensure_existing_ms": round(ensure_ms, 2),
        "read_median_ms": round(med["read"], 2),
        "increment_median_ms": round(med["increment"], 2),
        "read_plus_increment_median_ms": round(med["save"], 2),
        "read_plus_increment_max_ms": round(max(runs["save"]), 2),
        "read_plus_bump_median_ms": round(med["bump"], 2),
        "boot_tools_median_ms": round(med["boot"], 2),
        "inproc_read_median_ms": round(med["inproc_read"], 4),
        "inproc_increment_median_ms": round(med["inproc_increment"], 4),
        "inproc_connect_median_ms": round(med["inproc_connect"], 4),
        "inproc_boot_median_ms": round(med["inproc_boot"], 4),
        "read_tools_over_inproc": round(med["read"] / med["inproc_read"], 1),
        "boot_tools_over_inproc": round(med["boot"] / med["inproc_boot"], 1),
        "process_boot_median_ms": round(med["process_boot"], 2),
        "process_pass_median_ms": round(med["process_pass"], 2),
        "process_boot_extra_ms": round(med["process_boot"] - med["process_pass"], 2),
        "process_boot_min_ms": round(min(runs["process_boot"]), 2),
        "process_pass_min_ms": round(min(runs["process_pass"]), 2),
        "process_boot_over_pass": round(med["process_boot"] / med["process_pass"], 3),
    }


if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key:32} {value}")
    sys.exit(0)
