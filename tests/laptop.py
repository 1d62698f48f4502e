"""The real technician's laptop for tests: ``fieldpass-hq field serve`` in a subprocess on
a free 127.0.0.1 port (stopped with SIGTERM by its id, which writes the report), and the
raw sockets that talk to it as a hostile client would: from a chosen loopback source
address, sending exactly the bytes given.

Also a small HQ site for the laptop: one license with devices activated by fingerprint,
one revoked, and their bundle."""

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import FIELDPASS_HQ, HQ, clean_env, faketime_env
from tests.hq.server import free_port


class Laptop:
    def __init__(
        self,
        bundle: Path,
        report: Path,
        *extra: str,
        faketime: str | None = None,
        env: dict[str, str] | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.report_path = report
        self.proc = subprocess.Popen(
            [
                FIELDPASS_HQ,
                "field",
                "serve",
                str(bundle),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--report",
                str(report),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(**(faketime_env(faketime) if faketime else {}), **(env or {})),
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"the laptop did not start: {self.stderr}")

    stdout = ""
    stderr = ""

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            return False
        return httpx.get(self.url + "/healthz", timeout=10).status_code == 200

    def proc_status(self) -> dict[str, int]:
        """Threads and resident memory (kB) of the laptop's process, from /proc."""
        found = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("Threads", "VmRSS"):
                found[name] = int(value.split()[0])
        return found

    def stop(self) -> tuple[str, str]:
        """SIGTERM (the laptop writes its report), then its output."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.stdout, self.stderr = self.proc.communicate(timeout=30)
        return self.stdout, self.stderr

    def report(self) -> dict[str, Any]:
        return json.loads(self.report_path.read_text())  # type: ignore[no-any-return]


@contextmanager
def laptop(
    bundle: Path,
    report: Path,
    *extra: str,
    faketime: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Laptop]:
    served = Laptop(bundle, report, *extra, faketime=faketime, env=env)
    try:
        yield served
    finally:
        served.stop()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to the laptop from ``source`` (any 127.x.y.z: one "client")."""
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_answer(s: socket.socket, timeout_s: float) -> bytes:
    """What the laptop sends until it closes (b"" if it closed or reset at once)."""
    s.settimeout(timeout_s)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return data


def exchange(port: int, data: bytes, source: str = "127.0.0.1", timeout_s: float = 30) -> bytes:
    """Send ``data`` (then close the sending side) and read the answer."""
    with connect(port, source) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (ConnectionResetError, BrokenPipeError):
            pass
        return read_answer(s, timeout_s)


def status_of(answer: bytes) -> int | None:
    """The status of an HTTP answer, None if there is none."""
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[0] == b"HTTP/1.1" else None


def error_code(answer: bytes) -> str:
    """The ``error.code`` of an answer's JSON body."""
    body = answer.split(b"\r\n\r\n", 1)[1]
    return str(json.loads(body)["error"]["code"])


def post(path: str, body: bytes, extra_headers: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: laptop\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra_headers}\r\n"
    ).encode() + body


@dataclass
class Site:
    """An HQ with one license of two devices activated by fingerprint (no device key yet)
    and one revoked license of one device, and their bundle."""

    hq: HQ
    key: str
    fingerprints: list[str]
    revoked_fingerprint: str
    bundle: Path

    def entries(self) -> dict[str, dict[str, Any]]:
        doc = json.loads(self.bundle.read_text())
        return {e["fingerprint"]: e for e in doc["devices"] + doc["revocations"]}


def make_site(hq: HQ, where: Path) -> Site:
    key = hq.setup(seats=5)
    fingerprints = [f"{i:x}" * 64 for i in (1, 2)]
    for fp in fingerprints:
        hq.run("activate", key, "--fingerprint", fp, "-o", str(where / f"{fp[:4]}.lic"))
    other = str(hq.json("licenses", "create", "--plan", "industrial")["key"])
    revoked = "3" * 64
    hq.run("activate", other, "--fingerprint", revoked, "-o", str(where / "revoked.lic"))
    hq.run("licenses", "revoke", str(hq.json("licenses", "show", other)["id"]), "--yes")
    bundle = where / "site.bundle"
    hq.run("field", "export", "--all", "-o", str(bundle))
    return Site(hq, key, fingerprints, revoked, bundle)
