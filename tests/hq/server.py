"""A real ``fieldpass-hq serve`` in a subprocess on a free loopback port, for tests and
the benchmark. Started through the installed console script; stopped (or killed) by id."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

FIELDPASS_HQ = str(Path(sys.executable).parent / "fieldpass-hq")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hq_cli(home: Path, *args: str) -> str:
    """Run the installed ``fieldpass-hq`` on ``home``; its stdout (must succeed)."""
    res = subprocess.run(
        [FIELDPASS_HQ, "--home", str(home), *args], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def hq_json(home: Path, *args: str) -> dict[str, object]:
    doc = json.loads(hq_cli(home, *args, "--json"))
    assert isinstance(doc, dict)
    return doc


@dataclass
class Server:
    home: Path
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a power cut of the process."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def start_server(
    home: Path, *extra: str, env: dict[str, str] | None = None, tls: bool = False
) -> Server:
    """``tls``: ``extra`` names a certificate and key (serve --tls-cert/--tls-key)."""
    port = free_port()
    log = home.parent / f"server-{port}.log"
    proc = subprocess.Popen(
        [
            FIELDPASS_HQ,
            "--home",
            str(home),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1, verify=not tls).status_code == 200:
                return Server(home, url, proc, log)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start: {log.read_text()}")


def prepare_home(home: Path, *, seats: int = 5, plan: str = "std") -> str:
    """A key, a plan and an admin token; returns the token."""
    hq_cli(home, "keys", "generate")
    hq_cli(
        home,
        "plans",
        "create",
        plan,
        "--offline-ttl",
        "365d",
        "--grace",
        "30d",
        "--seats",
        str(seats),
    )
    return hq_cli(home, "tokens", "create", "tests").strip()
