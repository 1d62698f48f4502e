"""A real swtpm for the tests and benchmarks: on 127.0.0.1, free ports, its own state.

Shared by tests/test_tpm.py (tpm2-tools), tests/test_tpm2.py (the in-process client),
tests/test_tpm_binding.py and tests/bench/. swtpm serves one data connection at a time:
while an ``agent.tpm2.Tpm`` holds it, other clients (tpm2-tools) wait for it to close.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port_pair() -> int:
    """A port P with P+1 free too (swtpm's server and control channels)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return int(port)
    raise RuntimeError("no free port pair on 127.0.0.1")


class Swtpm:
    """A swtpm process on 127.0.0.1 with its NV state in ``state_dir``.

    ``server_options`` is appended to ``--server`` (``",disconnect"``: swtpm closes the
    connection after every answer). As a context manager it runs for the ``with`` block.
    """

    def __init__(self, state_dir: Path, server_options: str = "") -> None:
        self.state_dir = state_dir
        self.server_options = server_options
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> None:
        assert shutil.which("swtpm"), "swtpm is not installed (scripts/install-test-deps)"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port_pair()
        self.proc = subprocess.Popen(
            [
                "swtpm",
                "socket",
                "--tpm2",
                "--server",
                f"type=tcp,port={self.port},bindaddr=127.0.0.1{self.server_options}",
                "--ctrl",
                f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                "--tpmstate",
                f"dir={self.state_dir}",
                "--flags",
                "not-need-init,startup-clear",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"swtpm exited: {self.proc.stderr!r}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("swtpm did not listen within 10 s")

    def __enter__(self) -> "Swtpm":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pause(self) -> None:
        """SIGSTOP: a TPM that accepts connections and never answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
