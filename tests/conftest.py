"""Shared fixtures: simulated device roots, an in-process HQ signer, the installed CLIs.

A simulated device is a directory used as ``--root``: it has its own /etc/machine-id
(the identity source; real DMI is what this machine lacks), keyring, state directory
and /run. Subprocess tests run the installed ``fieldpass`` from the virtualenv, the
same script an image ships.
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import Config, load
from agent.identity import Identity
from agent.wire import license_key as lk
from agent.wire.keys import Keyring, SigningKey
from agent.wire.machine_file import Claims, Entitlement, seal_machine_file

BIN = Path(sys.executable).parent
FIELDPASS = str(BIN / "fieldpass")
FIELDPASS_HQ = str(BIN / "fieldpass-hq")
DAY = 86400


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIELDPASS", "FAKETIME"))}
    env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    env.update(extra)
    return env


def faketime_prefix(offset: str | None) -> list[str]:
    """``faketime -f +300d`` style: move the clock as an attacker would have to, with
    libfaketime preloaded through ``env`` rather than the ``faketime`` wrapper: the
    wrapper creates a POSIX semaphore named by its PID, left behind in /dev/shm when it
    is killed, and fails ("sem_open") when a later wrapper gets the same PID."""
    if not offset:
        return []
    return ["env", *(f"{k}={v}" for k, v in faketime_env(offset).items())]


def faketime_env(offset: str) -> dict[str, str]:
    """libfaketime preloaded directly, for long-running servers: signals then reach the
    process itself (the ``faketime`` wrapper forks and would not forward them)."""
    import glob

    libs = glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
    assert libs, "libfaketime is not installed (scripts/install-test-deps installs it)"
    return {"LD_PRELOAD": libs[0], "FAKETIME": offset}


class DeviceRoot:
    def __init__(self, path: Path, machine_id: str) -> None:
        self.path = path
        (path / "etc/fieldpass").mkdir(parents=True, exist_ok=True)
        (path / "etc/machine-id").write_text(machine_id + "\n")
        self.machine_id = machine_id

    @property
    def state_dir(self) -> Path:
        return self.path / "data/fieldpass"

    @property
    def verdict_dir(self) -> Path:
        return self.path / "run/fieldpass"

    @property
    def machine_file(self) -> Path:
        return self.state_dir / "machine.file"

    def config(self) -> Config:
        return load(str(self.path))

    @property
    def fingerprint(self) -> str:
        return Identity(self.machine_id, "machine-id").fingerprint

    def write_config(self, text: str) -> None:
        (self.path / "etc/fieldpass/agent.toml").write_text(text)

    def trust(self, keyring_text: str) -> None:
        (self.path / "etc/fieldpass/keyring").write_text(keyring_text)

    def run(
        self,
        *args: str,
        faketime: str | None = None,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [*faketime_prefix(faketime), FIELDPASS, "--root", str(self.path), *args]
        return subprocess.run(
            cmd,
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            env=clean_env(**(env or {})),
            timeout=timeout,
            check=False,
        )

    def check(self, faketime: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("check", faketime=faketime)

    def signed(self, payload: bytes, msg_type: str) -> dict[str, object]:
        """The fields of a message this device signed with its own key, verified with
        the key in its data directory (what HQ does with the key it recorded)."""
        from agent.wire import device_msg
        from agent.wire.device_key import DeviceKey

        key = DeviceKey.loads((self.state_dir / "device.key").read_bytes())
        msg = device_msg.open_message(payload, lambda k: key.public_key, msg_type)
        return dict(msg.fields)

    def verdict(self) -> dict[str, object]:
        return json.loads((self.verdict_dir / "verdict.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture
def make_device(tmp_path: Path) -> Callable[..., DeviceRoot]:
    counter = iter(range(1000))

    def make(machine_id: str | None = None) -> DeviceRoot:
        n = next(counter)
        return DeviceRoot(tmp_path / f"device{n}", machine_id or os.urandom(16).hex())

    return make


class Signer:
    """HQ's signing side, in process (the wire format's own seal function): for device
    tests that need files HQ would issue at chosen times. End-to-end tests use the real
    ``fieldpass-hq`` instead."""

    def __init__(self) -> None:
        self.key = SigningKey.generate()
        self.license_key = lk.generate()
        self.keyring = Keyring.of(self.key.public_key).dumps()

    def claims(self, fingerprint: str, **kw: object) -> Claims:
        issued_at = int(kw.pop("issued_at", time.time()))  # type: ignore[call-overload]
        ttl = int(kw.pop("ttl", 365 * DAY))  # type: ignore[call-overload]
        base: dict[str, object] = {
            "license_id": lk.license_id(self.license_key),
            "product": "robot-os",
            "plan": "industrial",
            "activation_id": "act_1",
            "fingerprint": fingerprint,
            "issued_at": issued_at,
            "not_before": issued_at,
            "expires_at": issued_at + ttl,
            "grace_s": 30 * DAY,
            "warn_s": 90 * DAY,
            "serial": 1,
            "kid": self.key.kid,
            "entitlements": (Entitlement("navigation"),),
        }
        base.update(kw)
        return Claims(**base)  # type: ignore[arg-type]

    def issue(self, fingerprint: str, **kw: object) -> bytes:
        return seal_machine_file(self.claims(fingerprint, **kw), self.license_key, self.key)

    def answer(self, device: DeviceRoot, request_text: bytes, **kw: object) -> bytes:
        """HQ's answer to the device's air-gapped request: a version-2 file bound to the
        request's nonce and TPM counter, naming the device key it carries."""
        from agent.wire.machine_file import Binding
        from agent.wire.request import Request

        req = Request.parse(request_text)
        assert req.signed and req.fingerprint == device.fingerprint
        kw.setdefault("serial", req.serial + 1)
        return self.issue(
            device.fingerprint,
            version=2,
            device_key=req.device_key,
            binding=Binding(counter=req.counter, nonce=req.nonce),
            **kw,
        )

    def recover(self, device: DeviceRoot, **kw: object) -> subprocess.CompletedProcess[str]:
        """The air-gapped way back: ``fieldpass request``, HQ's bound answer, install."""
        request = device.path.parent / f"{device.path.name}.request"
        made = device.run("request", "-o", str(request))
        assert made.returncode == 0, made.stderr
        answer = device.path.parent / f"{device.path.name}.answer"
        answer.write_bytes(self.answer(device, request.read_bytes(), **kw))
        if (device.state_dir / "license.key").exists():
            return device.run("install", str(answer))
        key_file = device.path.parent / f"{device.path.name}.key"  # a wiped device
        key_file.write_text(self.license_key + "\n")
        return device.run("install", str(answer), "--license-key-file", str(key_file))

    def provision(self, device: DeviceRoot, **kw: object) -> bytes:
        """Trust this signer on the device and install a file through the real CLI."""
        device.trust(self.keyring)
        data = self.issue(device.fingerprint, **kw)
        key_file = device.path.parent / f"{device.path.name}.key"
        key_file.write_text(self.license_key + "\n")
        path = device.path.parent / f"{device.path.name}.machine"
        path.write_bytes(data)
        result = device.run("install", str(path), "--license-key-file", str(key_file))
        assert result.returncode == 0, result.stderr
        return data


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def device(make_device: Callable[..., DeviceRoot]) -> Iterator[DeviceRoot]:
    yield make_device()


class HQ:
    """The real ``fieldpass-hq`` CLI on a home directory of its own (SQLite)."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def run(
        self, *args: str, faketime: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [*faketime_prefix(faketime), FIELDPASS_HQ, "--home", str(self.home), *args]
        result = subprocess.run(
            cmd, capture_output=True, text=True, env=clean_env(), timeout=120, check=False
        )
        if check:
            assert result.returncode == 0, f"{args}: {result.stderr}"
        return result

    def json(self, *args: str, faketime: str | None = None) -> dict[str, object]:
        return json.loads(self.run(*args, "--json", faketime=faketime).stdout)  # type: ignore[no-any-return]

    def setup(
        self, seats: int = 10, ttl: str = "365d", grace: str = "30d", warn: str = "90d"
    ) -> str:
        """A key, a plan and a license; returns the license key."""
        self.run("keys", "generate")
        self.run(
            "plans",
            "create",
            "industrial",
            "--offline-ttl",
            ttl,
            "--grace",
            grace,
            "--seats",
            str(seats),
            "--warn",
            warn,
        )
        doc = self.json("licenses", "create", "--plan", "industrial", "--entitlement", "navigation")
        return str(doc["key"])

    def image(self, device: DeviceRoot) -> None:
        """What the image build does: install HQ's public keyring on the device."""
        self.run("keys", "export", "-o", str(device.path / "etc/fieldpass/keyring"))

    def activate(self, key: str, device: DeviceRoot, out: Path) -> subprocess.CompletedProcess[str]:
        return self.run(
            "activate", key, "--fingerprint", device.fingerprint, "-o", str(out), check=False
        )


@pytest.fixture
def hq(tmp_path: Path) -> HQ:
    return HQ(tmp_path / "hq-home")


from tests.answering_server import answering_server  # noqa: E402, F401 - a fixture


# -- HQ's database engines (tests/engines.py) -------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--hq-engines",
        default="sqlite,postgresql",
        help="HQ database engines the engine-sensitive tests run on (comma-separated).",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hq_engine" in metafunc.fixturenames:
        from tests.engines import ENGINES

        names = [n for n in metafunc.config.getoption("--hq-engines").split(",") if n]
        unknown = set(names) - set(ENGINES)
        assert not unknown, f"--hq-engines: unknown {unknown}"
        metafunc.parametrize("hq_engine", names, indirect=True, scope="session")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """The session's one PostgreSQL (started on first use, stopped at the end)."""
    from tests.pg_server import Postgres

    server = Postgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def hq_engine(request: pytest.FixtureRequest) -> object:
    """An ``Engine`` (tests/engines.py): sqlite, or postgresql on the session's server."""
    from tests.engines import Engine

    if request.param == "sqlite":
        return Engine("sqlite")
    return Engine("postgresql", request.getfixturevalue("postgres_server"))
