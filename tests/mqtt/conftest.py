"""Fixtures for the MQTT tests: a real mosquitto on 127.0.0.1 and a free port, the
daemon as a real ``fieldpass run`` process, a small MQTT client, and ``fleet``: a real
HQ home with devices enrolled, the broker locked down by ``broker-config`` (passwords,
ACL, client ids bound to user names) and real ``fieldpass-hq bridge`` replicas.

The broker's config file lives in the test's tmp directory (persistence on, so a
restart keeps the sessions and retained messages); it is stopped at the end.
"""

import csv
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.daemon import topics
from provisioning.models import OutboxEntry
from tests.conftest import FIELDPASS, FIELDPASS_HQ, HQ, DeviceRoot, clean_env
from tests.engines import Engine

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float = 15, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


class Broker:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra = ""
        home.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def configure(self, extra: str) -> None:
        """Lines added to mosquitto.conf (password_file, acl_file...); restart to apply."""
        self.extra = extra

    def start(self) -> None:
        auth = self.extra or "allow_anonymous true\n"
        (self.home / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"user {getpass.getuser()}\n"  # as root, mosquitto would drop to "mosquitto"
            f"persistence true\npersistence_location {self.home}/\n"
            "max_queued_messages 200000\nmax_inflight_messages 100\n"
            f"log_dest file {self.home}/mosquitto.log\nlog_type error\nlog_type warning\n" + auth
        )
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.home / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(up, 10, "mosquitto to listen")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def hq(tmp_path: Path, hq_engine: Engine) -> HQ:
    """The real ``fieldpass-hq`` on a home of its own, on each database engine."""
    home = tmp_path / "hq-home"
    hq_engine.configure(home)
    return HQ(home)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


class Client:
    """An MQTT client in the test (HQ's side, or an intruder): publish, collect."""

    def __init__(
        self, broker: Broker, username: str | None = None, password: str | None = None
    ) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set()
        self.client.max_inflight_messages_set(1000)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.connected.wait(10)

    def _on_message(self, client: object, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(message)

    def subscribe(self, topic: str) -> None:
        result, _mid = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def received(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [bytes(m.payload) for m in self.messages if m.topic.endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def hq_client(broker: Broker) -> Iterator[Client]:
    c = Client(broker)
    yield c
    c.close()


def device_topic(device: DeviceRoot, kind: str) -> str:
    return topics.topic(topics.DEFAULT_PREFIX, topics.device_id(device.fingerprint), kind)


def mqtt_config(broker: Broker, extra: str = "", **daemon: object) -> str:
    settings = {
        "backoff_min_ms": 100,
        "backoff_max_ms": 1000,
        "renew_timeout_s": 2,
        "check_interval_s": 3600,
        **daemon,
    }
    lines = "".join(f"{k} = {v}\n" for k, v in settings.items())
    return f'[mqtt]\nbrokers = ["{broker.url}"]\n{extra}\n[daemon]\n{lines}'


class Daemon:
    """``fieldpass --root DEVICE run`` as a real process; its log in a file."""

    def __init__(self, device: DeviceRoot) -> None:
        self.device = device
        self.log = device.path.parent / f"{device.path.name}-daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0

    def start(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [FIELDPASS, "--root", str(self.device.path), "run", *args],
                stdout=log,
                stderr=log,
                env=clean_env(FIELDPASS_LOG_LEVEL="DEBUG", **(env or {})),
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, needle: str, timeout: float = 15) -> None:
        """Wait for ``needle`` in what the current process logged."""

        def logged() -> bool:
            return needle.encode() in self.log.read_bytes()[self.offset :]

        wait_for(logged, timeout, f"{needle!r} in the daemon log")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the daemon and wait for its exit code. A daemon still starting (its
        interpreter importing, on a loaded machine) has no handler yet and would die of
        the signal: it is given until its state machine starts (the handlers are set by
        then) or it exits on its own."""
        assert self.proc is not None
        proc = self.proc

        def started_or_gone() -> bool:
            return b"-> STARTING" in self.log.read_bytes()[self.offset :] or proc.poll() is not None

        wait_for(started_or_gone, 30, "the daemon to start")
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(15)
        self.proc = None
        return code


@pytest.fixture
def daemons() -> Iterator[Callable[[DeviceRoot], Daemon]]:
    started: list[Daemon] = []

    def make(device: DeviceRoot) -> Daemon:
        d = Daemon(device)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.running():
            d.stop(signal.SIGKILL)


def connect_all(daemons: Callable[[DeviceRoot], Daemon], devices: list[DeviceRoot]) -> list[Daemon]:
    """A real daemon for each device, each connected to its broker."""
    running = []
    for device in devices:
        d = daemons(device)
        d.start()
        d.wait_log("state CONNECTING -> CONNECTED")
        running.append(d)
    return running


def env_without_systemd() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}


class Fleet:
    def __init__(self, hq: HQ, broker: Broker, tmp: Path) -> None:
        self.hq, self.broker, self.tmp = hq, broker, tmp
        self.key = hq.setup(seats=20)
        self.license_id = ""
        self.activations: dict[str, str] = {}
        self.bridge: subprocess.Popen[bytes] | None = None
        self.bridges: list[subprocess.Popen[bytes]] = []

    def enroll(self, device: DeviceRoot, faketime: str | None = None) -> None:
        self.hq.image(device)
        out = self.tmp / f"{device.path.name}.machine"
        doc = self.hq.json(
            "activate", self.key, "--fingerprint", device.fingerprint, "-o", str(out),
            faketime=faketime,
        )  # fmt: skip
        self.license_id = str(doc["license_id"])
        self.activations[device.path.name] = str(doc["activation_id"])
        key_file = self.tmp / "key.txt"
        key_file.write_text(self.key + "\n")
        result = device.run("install", str(out), "--license-key-file", str(key_file))
        assert result.returncode == 0, result.stderr

    def lock_down(self, devices: list[DeviceRoot], bridges: int = 2) -> dict[str, str]:
        """broker-config, the broker restarted on its files and settings (client ids
        bound to user names), each device given its password; returns device id ->
        password. The test's own observer (OBSERVER) may read and write every topic."""
        out = self.tmp / "broker-config"
        self.hq.run("broker-config", "-o", str(out), "--bridges", str(bridges))
        add_user(out, OBSERVER, OBSERVER_PASSWORD, "topic readwrite fieldpass/v1/#")
        self.broker.configure((out / "mosquitto.conf").read_text())
        self.broker.restart()
        with open(out / "credentials.csv") as f:
            rows = {r["device_id"]: r["password"] for r in csv.DictReader(f)}
        for device in devices:
            password = rows[device_topic(device, "x").split("/")[3]]
            (device.path / "etc/fieldpass/mqtt.password").write_text(password + "\n")
            device.write_config(
                mqtt_config(self.broker, 'password_file = "/etc/fieldpass/mqtt.password"')
            )
        return rows

    def start_bridge(self, replica: int = 1, min_interval: str = "0s") -> subprocess.Popen[bytes]:
        log_path = self.tmp / f"bridge-{replica}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the process owns it
        offset = log_path.stat().st_size
        proc = subprocess.Popen(
            [FIELDPASS_HQ, "--home", str(self.hq.home), "bridge", "--broker", self.broker.url,
             "--min-interval", min_interval, "--replica", str(replica)],
            stdout=log, stderr=log, env=clean_env(),
        )  # fmt: skip
        wait_for(lambda: b"bridge connected" in log_path.read_bytes()[offset:])
        self.bridges.append(proc)
        self.bridge = proc
        return proc

    def bridge_log(self, replica: int = 1) -> str:
        return (self.tmp / f"bridge-{replica}.log").read_text(errors="replace")

    def stop_bridges(self) -> None:
        for proc in self.bridges:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(15) == 0
        self.bridges = []

    def observer(self) -> Client:
        return Client(self.broker, OBSERVER, OBSERVER_PASSWORD)

    def hq_password(self, user: str = "fieldpass-hq-push") -> str:
        from provisioning.mqtt import credentials

        return credentials.password(credentials.secret(self.hq.home), user)

    def audit(self) -> list[dict[str, object]]:
        return json.loads(self.hq.run("audit", "--json", "--limit", "100000").stdout)  # type: ignore[no-any-return]

    def outbox(self) -> list[OutboxEntry]:
        """What HQ still has to tell devices (read from HQ's database)."""
        from provisioning.services import HQ as Service

        service = Service(self.hq.home)
        try:
            return service.outbox.pending()
        finally:
            service.store.close()


OBSERVER, OBSERVER_PASSWORD = "test-observer", "observer-password"


def add_user(out: Path, user: str, password: str, *acl: str) -> None:
    """A broker user of the test's own, added to broker-config's files."""
    subprocess.run(["mosquitto_passwd", "-b", str(out / "passwd"), user, password], check=True)
    with open(out / "acl", "a") as f:
        f.write(f"\nuser {user}\n" + "".join(line + "\n" for line in acl))


@pytest.fixture
def fleet(hq: HQ, broker: Broker, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(hq, broker, tmp_path)
    yield f
    for proc in f.bridges:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(15)
