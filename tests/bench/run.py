"""``make bench``: every benchmark, figures printed and written to bench-out/."""

import json
import platform
import sys
import time
from pathlib import Path

from tests.bench import gate

OUT = Path("bench-out")


def main() -> int:
    OUT.mkdir(exist_ok=True)
    results: dict[str, object] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, "
        f"Python {platform.python_version()}",
    }
    print("== boot gate vs python -I -S -c pass (interleaved) ==", flush=True)
    results["gate"] = gate.main()
    for k, v in results["gate"].items():  # type: ignore[attr-defined]
        print(f"  {k:24} {v}")
    for name in ("bench_hq", "bench_console", "bench_tpm", "bench_mqtt"):
        try:
            module = __import__(f"tests.bench.{name}", fromlist=["main"])
        except ImportError:
            continue
        print(f"== {name} ==", flush=True)
        results[name] = module.main()
        for k, v in results[name].items():  # type: ignore[attr-defined]
            print(f"  {k:24} {v}")
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {OUT / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
