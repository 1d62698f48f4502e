"""The daemon's pieces in process: the transition table, topics, notify, config, the
bridge's logic and the device messages (no broker needed)."""

import os
import queue
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import ConfigError
from agent.daemon import machine, messages, notify, resume, topics
from agent.daemon.main import main as daemon_main
from agent.daemon.transport import CONNECTED, DISCONNECTED, FILE
from agent.device import Device
from tests.conftest import DeviceRoot, Signer

STATES = (
    machine.STARTING,
    machine.IDLE,
    machine.CONNECTING,
    machine.ONLINE,
    machine.RENEWING,
    machine.BACKOFF,
    machine.STOPPING,
)


def test_every_state_has_on_enter_and_every_action_exists() -> None:
    for state in STATES:
        assert callable(getattr(machine.Machine, "_enter_" + state.lower()))
    for (state, _), (action, target) in machine.TABLE.items():
        assert state in STATES and (target is None or target in STATES)
        assert action is None or callable(getattr(machine.Machine, "_" + action))
    for state in STATES[:-1]:  # every live state stops on request
        assert machine.TABLE[(state, machine.STOP)] == (None, machine.STOPPING)


class FakeTransport:
    name = "fake"
    carries_usage = False

    def __init__(self, events: "queue.SimpleQueue[machine.Event]") -> None:
        self.events = events
        self.asked: list[bool] = []
        self.statuses: list[bytes] = []
        self.gen = 0

    def connect(self) -> int:
        self.gen += 1
        self.events.put((CONNECTED, self.gen, None))
        return self.gen

    def disconnect(self) -> None:
        pass

    def ask(self, due: bool) -> None:
        self.asked.append(due)

    def publish_status(self, payload: bytes) -> None:
        self.statuses.append(payload)

    def publish_usage(self, kind: str, payload: bytes) -> None:
        raise AssertionError("this transport carries no usage reports")

    def describe(self) -> str:
        return "fake"


def _machine(device: DeviceRoot) -> tuple[machine.Machine, FakeTransport]:
    cfg = device.config()
    events: queue.SimpleQueue[machine.Event] = queue.SimpleQueue()
    transport = FakeTransport(events)
    return machine.Machine(cfg, Device(cfg), transport, events), transport


def _drain(m: machine.Machine) -> None:
    while True:
        try:
            event = m.events.get_nowait()
        except queue.Empty:
            return
        m.dispatch(event)


def test_table_drives_a_renewal_and_drops_stale_events(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device, issued_at=int(time.time()) - 300 * 86400)
    m, transport = _machine(device)
    m.enter(machine.STARTING)
    _drain(m)
    assert m.state == machine.RENEWING and transport.asked[-1] is True
    m.dispatch((DISCONNECTED, 999, None))  # an abandoned connection's event
    assert m.state == machine.RENEWING
    m.dispatch((FILE, m.generation, (signer.issue(device.fingerprint, serial=2), None)))
    _drain(m)
    assert m.state == machine.ONLINE and m.serial == 2 and not m.resume.renewing
    assert device.signed(transport.statuses[-1], "status")["serial"] == 2


def test_an_unhandled_event_is_a_bug(device: DeviceRoot, signer: Signer) -> None:
    signer.provision(device)
    m, _ = _machine(device)
    m.state = machine.IDLE
    with pytest.raises(machine.UnhandledEvent):
        m.dispatch((machine.RETRY, machine.INTERNAL, None))


def test_the_daemon_exits_70_on_a_bug_and_resumes_renewing(
    device: DeviceRoot, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer.provision(device)
    device.write_config('[online]\nserver = "http://127.0.0.1:9"\n')
    resume.save(str(device.state_dir), resume.Resume(renewing=True, starts=2))
    monkeypatch.setattr(machine, "TABLE", {})
    assert daemon_main(device.config()) == 70
    assert resume.load(str(device.state_dir)).starts == 3  # the loop guard counts starts


def test_resume_file_damaged_means_fresh(tmp_path: Path) -> None:
    (tmp_path / resume.NAME).write_bytes(b"\xff garbage")
    assert resume.load(str(tmp_path)).renewing is False


@given(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
def test_device_ids_never_hold_topic_wildcards_or_the_fingerprint(fingerprint: str) -> None:
    dev_id = topics.device_id(fingerprint)
    assert topics.is_device_id(dev_id)
    assert not set("+#/") & set(dev_id) and fingerprint[:24] not in dev_id
    name = topics.topic(topics.DEFAULT_PREFIX, dev_id, topics.MACHINE_FILE)
    assert topics.parse(topics.DEFAULT_PREFIX, name) == (dev_id, topics.MACHINE_FILE)


@given(st.binary(max_size=2000))
def test_renew_request_parser_never_crashes(data: bytes) -> None:
    try:
        messages.parse_renew_request(data)
    except messages.MessageError:
        pass


def test_renew_request_round_trip() -> None:
    request = messages.renew_request(3, 99, True)
    assert messages.parse_renew_request(request) == (3, 99, True, False)
    revoked = messages.renew_request(3, 99, False, revoked=True)
    assert messages.parse_renew_request(revoked) == (3, 99, False, True)


def test_notify_datagram_to_a_path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert notify.notify("READY=1")
    assert sock.recv(100) == b"READY=1"
    sock.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify.notify("READY=1")  # without systemd: a no-op
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval_s() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert notify.watchdog_interval_s() is None


@pytest.mark.parametrize(
    "text",
    [
        '[mqtt]\nbrokers = ["http://x"]\n',
        "[mqtt]\nmax_payload_bytes = 10\n",
        '[daemon]\ntransport = "carrier-pigeon"\n',
        "[daemon]\nrenew_at_percent = 100\n",
        "[daemon]\nbackoff_min_ms = 5000\nbackoff_max_ms = 10\n",
        "[mqtt]\nunknown = 1\n",
    ],
)
def test_bad_daemon_config_is_refused(device: DeviceRoot, text: str) -> None:
    device.write_config(text)
    with pytest.raises(ConfigError):
        device.config()


def test_daemon_config_defaults(make_device: Callable[..., DeviceRoot]) -> None:
    cfg = make_device().config()
    assert cfg.mqtt_brokers == [] and cfg.renew_at_percent == 67
    assert cfg.mqtt_max_payload_bytes == 64 * 1024 and cfg.daemon_transport == "auto"
