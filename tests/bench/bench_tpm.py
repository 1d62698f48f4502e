"""Benchmark: the TPM NV counter backend against swtpm on loopback.

What the boot gate pays with ``[tpm] enabled = true``: one ``read`` to check the binding
(``check``), and on every state save one ``read`` + ``increment`` (the increment is
``tpm2_nvincrement`` then ``tpm2_nvread``; ``bump`` skips the read-back). Each is a
tpm2-tools process, so the figures are dominated by process start-up and the TCTI, not
by the TPM command; a hardware TPM adds its own command time (NV writes are the slow ones).
Medians over ROUNDS rounds, interleaved so a noisy machine slows every figure alike.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent.tpm import NvCounter, check_binding
from tests.tpm_server import Swtpm

ROUNDS = 30
INDEX = 0x01500016


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-tpm-") as tmp:
        server = Swtpm(Path(tmp))
        server.start()
        try:
            counter = NvCounter(INDEX, tcti=server.tcti, timeout_s=10)
            start = time.perf_counter()
            counter.ensure()
            define_ms = _ms(start)
            start = time.perf_counter()
            counter.ensure()
            ensure_ms = _ms(start)
            reads: list[float] = []
            increments: list[float] = []
            saves: list[float] = []
            bumps: list[float] = []
            for _ in range(ROUNDS):
                start = time.perf_counter()
                value = counter.read()
                reads.append(_ms(start))
                assert check_binding(value, value) == "ok"

                start = time.perf_counter()
                counter.increment()
                increments.append(_ms(start))

                start = time.perf_counter()  # a state save: read, (write state), increment
                mark = counter.read() + 1
                assert counter.increment() == mark
                saves.append(_ms(start))

                start = time.perf_counter()  # the same save with bump(): no read-back
                mark = counter.read() + 1
                counter.bump()
                bumps.append(_ms(start))
        finally:
            server.stop()
    return {
        "rounds": float(ROUNDS),
        "define_first_ms": round(define_ms, 2),
        "ensure_existing_ms": round(ensure_ms, 2),
        "read_median_ms": round(statistics.median(reads), 2),
        "increment_median_ms": round(statistics.median(increments), 2),
        "read_plus_increment_median_ms": round(statistics.median(saves), 2),
        "read_plus_increment_max_ms": round(max(saves), 2),
        "read_plus_bump_median_ms": round(statistics.median(bumps), 2),
    }


if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key:32} {value}")
    sys.exit(0)
