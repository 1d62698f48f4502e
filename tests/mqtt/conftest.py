"""Fixtures for the MQTT tests: a real mosquitto on 127.0.0.1 and a free port, the
daemon as a real ``fieldpass run`` process, and a small HQ-side MQTT client.

The broker's config file lives in the test's tmp directory (persistence on, so a
restart keeps the sessions and retained messages); it is stopped at the end.
"""

import getpass
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
from tests.conftest import FIELDPASS, HQ, DeviceRoot, clean_env
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
        assert self.proc is not None
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


def env_without_systemd() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
