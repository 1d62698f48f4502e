"""A real PostgreSQL for the tests and benchmarks: Debian's server binaries, a cluster
made by ``initdb`` in a temporary directory, listening on 127.0.0.1 on a free port, run
as an unprivileged system user (PostgreSQL refuses to run as root; the tests run as
root, so the cluster belongs to Debian's ``postgres`` user, or to ``fieldpass-test``,
created when neither exists), stopped at the end.

fsync and synchronous_commit stay on (PostgreSQL's defaults): the durability HQ's
figures and crash tests assume. HQ connects as a password-authenticated role that owns
its databases and is no superuser; the superuser only creates and drops databases.
"""

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

BIN_GLOB = "/usr/lib/postgresql/*/bin"
SYSTEM_USERS = ("postgres", "fieldpass-test")
HQ_ROLE = "fieldpass_hq"


def bin_dir() -> Path:
    found = sorted(glob.glob(BIN_GLOB), key=lambda p: int(p.split("/")[-2]))
    assert found, "PostgreSQL is not installed (scripts/install-test-deps installs it)"
    return Path(found[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def system_user() -> pwd.struct_passwd:
    """The unprivileged user the server runs as (when the tests run as root)."""
    for name in SYSTEM_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         SYSTEM_USERS[-1]],
        check=True, capture_output=True,
    )  # fmt: skip
    return pwd.getpwnam(SYSTEM_USERS[-1])


class Postgres:
    """One PostgreSQL cluster. ``database()`` makes a fresh database for one HQ home and
    returns its URL (with the HQ role's password in it, as an operator might)."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fieldpass-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = 0
        self.password = secrets.token_urlsafe(18)
        self.settings = settings or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._counter = 0
        self._user: pwd.struct_passwd | None = None

    def _as_user(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        assert self._user is not None
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def start(self) -> "Postgres":
        if os.geteuid() == 0:
            self._user = system_user()
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        os.chmod(self.dir, 0o700)
        superpw = self.dir / "superuser.pw"
        superpw.write_text(self.password + "\n")
        if self._user is not None:
            os.chown(superpw, self._user.pw_uid, self._user.pw_gid)
        subprocess.run(
            [str(bin_dir() / "initdb"), "-D", str(self.data), "-U", "fieldpass_super",
             "--auth=scram-sha-256", f"--pwfile={superpw}", "--encoding=UTF8",
             "--locale=C.UTF-8"],
            check=True, capture_output=True, timeout=120, **self._as_user(),
        )  # fmt: skip
        superpw.unlink()
        self.port = free_port()
        self.spawn()
        with self.connect("postgres") as conn:
            conn.execute(f"CREATE ROLE {HQ_ROLE} LOGIN PASSWORD '{self.password}' NOSUPERUSER")
        return self

    def spawn(self) -> None:
        """Run the server on the cluster (again, after ``terminate``) and wait for it."""
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.dir),
            "max_connections": "300",
            "shared_buffers": "128MB",
            "fsync": "on",
            "synchronous_commit": "on",
            **self.settings,
        }
        args = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(bin_dir() / "postgres"), "-D", str(self.data), *args],
                stdout=log, stderr=log, **self._as_user(),
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}")
            try:
                self.connect("postgres").close()
                return
            except Exception:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not start: {self.log.read_text()[-2000:]}")

    def terminate(self) -> None:
        """Stop the server (fast shutdown), keeping the cluster for ``spawn``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=30)

    def connect(self, dbname: str, *, superuser: bool = True) -> Any:
        import psycopg

        user = "fieldpass_super" if superuser else HQ_ROLE
        return psycopg.connect(
            host="127.0.0.1", port=self.port, dbname=dbname, user=user,
            password=self.password, autocommit=True, connect_timeout=5,
        )  # fmt: skip

    def url(self, dbname: str) -> str:
        return f"postgresql://{HQ_ROLE}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def database(self, prefix: str = "hq") -> str:
        """A new, empty database owned by HQ's role; its URL."""
        self._counter += 1
        name = f"{prefix}_{os.getpid()}_{self._counter}"
        with self.connect("postgres") as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {HQ_ROLE} TEMPLATE template0")
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: clients disconnected
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", 1)[0]
