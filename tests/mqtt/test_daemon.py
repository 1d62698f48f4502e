"""The daemon against a real mosquitto, with HQ played by the test's in-process signer."""

import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import DAY, DeviceRoot, Signer
from tests.mqtt.conftest import Broker, Client, Daemon, device_topic, mqtt_config, wait_for


def _setup(
    make_device: Callable[..., DeviceRoot], signer: Signer, broker: Broker, **kw: object
) -> DeviceRoot:
    device = make_device()
    device.write_config(mqtt_config(broker))
    signer.provision(device, **kw)
    return device


def _statuses(client: Client, device: DeviceRoot) -> list[dict[str, object]]:
    return [device.signed(p, "status") for p in client.received(device_topic(device, "status"))]


def test_renewal_end_to_end(
    make_device: Callable[..., DeviceRoot],
    signer: Signer,
    broker: Broker,
    hq_client: Client,
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    # issued 300 days ago on a 365-day TTL: inside the last third, so due
    device = _setup(make_device, signer, broker, issued_at=int(time.time()) - 300 * DAY)
    hq_client.subscribe(device_topic(device, "#"))
    daemon = daemons(device)
    daemon.start()
    wait_for(lambda: hq_client.received("renew-request"), what="a renewal request")
    request = device.signed(hq_client.received("renew-request")[0], "renew")
    assert (request["serial"], request["due"], request["challenge"]) == (1, True, None)
    assert request["nonce"] and request["formats"] == [1, 2]
    assert signer.license_key.encode() not in hq_client.received("renew-request")[0]
    fresh = signer.issue(device.fingerprint, serial=2)
    hq_client.publish(device_topic(device, "machine-file"), fresh, retain=True)
    wait_for(lambda: device.machine_file.read_bytes() == fresh, what="the new file installed")
    wait_for(lambda: any(s.get("serial") == 2 for s in _statuses(hq_client, device)))
    status = [s for s in _statuses(hq_client, device) if s.get("serial") == 2][-1]
    assert status["verdict"] == "valid" and status["expires_at"] > time.time() + 364 * DAY
    assert device.verdict()["serial"] == 2  # the verdict files were rewritten
    assert daemon.stop() == 0
    assert device.check().returncode == 0
    log = daemon.text()
    assert device.fingerprint not in log and signer.license_key not in log


def test_not_due_asks_without_due_and_stays_idle(
    make_device: Callable[..., DeviceRoot],
    signer: Signer,
    broker: Broker,
    hq_client: Client,
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    device = _setup(make_device, signer, broker)
    hq_client.subscribe(device_topic(device, "#"))
    daemon = daemons(device)
    daemon.start()
    wait_for(lambda: hq_client.received("renew-request"))
    assert device.signed(hq_client.received("renew-request")[0], "renew")["due"] is False
    time.sleep(1)
    assert len(hq_client.received("renew-request")) == 1  # no polling while not due
    assert daemon.stop() == 0


def test_sd_notify_ready_watchdog_stopping(
    make_device: Callable[..., DeviceRoot],
    signer: Signer,
    broker: Broker,
    daemons: Callable[[DeviceRoot], Daemon],
    tmp_path: Path,
) -> None:
    device = _setup(make_device, signer, broker)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"@fieldpass-test-{time.monotonic_ns()}"
    sock.bind("\0" + name[1:])
    sock.settimeout(10)
    daemon = daemons(device)
    daemon.start(env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "400000"})
    got: list[str] = []
    while not any(m.startswith("READY=1") for m in got):
        got.append(sock.recv(4096).decode())
    while got.count("WATCHDOG=1") < 3:  # every 0.2 s
        got.append(sock.recv(4096).decode())
    assert daemon.stop(signal.SIGTERM) == 0
    while "STOPPING=1" not in got:
        got.append(sock.recv(4096).decode())
    sock.close()


def test_once_without_a_broker_exits_69(
    make_device: Callable[..., DeviceRoot], signer: Signer, broker: Broker
) -> None:
    device = _setup(make_device, signer, broker)
    broker.stop()
    result = device.run("run", "--once", timeout=30)
    assert result.returncode == 69, result.stderr
    broker.start()
    result = device.run("run", "--once", timeout=30)
    assert result.returncode == 0, result.stderr


def test_asks_when_the_file_enters_its_window_while_running(
    make_device: Callable[..., DeviceRoot],
    signer: Signer,
    broker: Broker,
    hq_client: Client,
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    device = make_device()
    device.write_config(mqtt_config(broker, renew_at_percent=50))
    # due 8 s after issue: time for a daemon started on a loaded machine to ask first
    signer.provision(device, ttl=16, warn_s=1)
    hq_client.subscribe(device_topic(device, "renew-request"))
    daemon = daemons(device)
    daemon.start()
    wait_for(lambda: hq_client.received("renew-request"))
    assert device.signed(hq_client.received("renew-request")[0], "renew")["due"] is False
    wait_for(lambda: len(hq_client.received("renew-request")) >= 2, 20, "the timer's request")
    assert device.signed(hq_client.received("renew-request")[1], "renew")["due"] is True
    fresh = signer.issue(device.fingerprint, serial=2)
    hq_client.publish(device_topic(device, "machine-file"), fresh, retain=True)
    daemon.wait_log("state RENEWING -> CONNECTED")
    assert daemon.stop() == 0


def test_a_held_up_answer_of_a_returned_activation_never_installs_over_the_next(
    make_device: Callable[..., DeviceRoot],
    signer: Signer,
    broker: Broker,
    hq_client: Client,
    daemons: Callable[[DeviceRoot], Daemon],
    tmp_path: Path,
) -> None:
    """The daemon asks for a renewal of act_1; HQ's answer, bound to that request's
    nonce, is held up at the broker while another process gives the license back and
    the device is activated anew (act_2). When it arrives it still names the last nonce
    the daemon sent, so it is HQ's answer now, but of an activation given back: refused,
    act_2 stays in force (before, it installed over it)."""
    from agent.wire.machine_file import Binding

    t0 = int(time.time())
    device = make_device()
    device.write_config(mqtt_config(broker, renew_timeout_s=600))  # one request, no resend
    signer.provision(device, issued_at=t0 - 300 * DAY)
    hq_client.subscribe(device_topic(device, "#"))
    daemon = daemons(device)
    daemon.start()
    wait_for(lambda: hq_client.received("renew-request"), what="a renewal request")
    nonce = device.signed(hq_client.received("renew-request")[-1], "renew")["nonce"]
    held = signer.issue(
        device.fingerprint, version=2, binding=Binding(nonce=str(nonce)), serial=2, issued_at=t0
    )
    given = device.run("return", "--yes", "-o", str(tmp_path / "robot.receipt"))
    assert given.returncode == 0, given.stderr
    again = tmp_path / "again.machine"
    again.write_bytes(signer.issue(device.fingerprint, activation_id="act_2", issued_at=t0))
    key_file = device.path.parent / f"{device.path.name}.key"
    done = device.run("install", str(again), "--license-key-file", str(key_file))
    assert done.returncode == 0, done.stderr
    requests = hq_client.received("renew-request")
    assert device.signed(requests[-1], "renew")["nonce"] == nonce  # still the last one sent
    hq_client.publish(device_topic(device, "machine-file"), held, retain=True)
    refused, installed = "ignored a bad message (machine_file_returned)", "installed machine file"
    wait_for(lambda: refused in daemon.text() or installed in daemon.text(), what="the answer")
    assert device.machine_file.read_bytes() == again.read_bytes(), "installed over act_2"
    assert refused in daemon.text()
    assert daemon.stop() == 0
    assert device.check().returncode == 0 and device.verdict()["activation_id"] == "act_2"
