"""Acceptance stories over MQTT with the real broker, the real bridge, the real daemon
and faketime: the 30-day tour renewed by five minutes of connectivity on day 25, and a
technician's laptop offering a field bundle to a robot's MQTT daemon."""

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import FIELDPASS_HQ, HQ, DeviceRoot, clean_env, faketime_env
from tests.hq.server import free_port, start_server
from tests.mqtt.conftest import Broker, Client, Daemon, device_topic, mqtt_config, wait_for


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_30_day_tour(
    hq: HQ,
    broker: Broker,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
    tmp_path: Path,
) -> None:
    key = hq.setup(ttl="30d", grace="7d", warn="10d")
    server = start_server(hq.home)
    plugin = make_device()
    hq.image(plugin)
    online = f'[online]\nserver = "{server.url}"\ntimeout_s = 2\n'
    try:
        plugin.write_config(online)
        assert plugin.run("activate", key).returncode == 0
        assert plugin.run("prepare-offline").returncode == 0  # before leaving
    finally:
        server.stop()  # on tour: no HQ
    plugin.write_config(online + mqtt_config(broker))
    for day in (1, 10, 15):
        assert plugin.check(faketime=f"+{day}d").returncode == 0
    day20 = plugin.check(faketime="+20d")
    assert "Offline license expires in 10 days: connect to extend" in day20.stdout
    # day 25: five minutes of VPN; HQ's bridge and the robot's daemon both see day 25
    log = tmp_path / "bridge.log"
    with open(log, "ab") as out:
        bridge = subprocess.Popen(
            [FIELDPASS_HQ, "--home", str(hq.home), "bridge", "--broker", broker.url,
             "--min-interval", "0s"],
            stdout=out, stderr=out, env=clean_env(**faketime_env("+25d")),
        )  # fmt: skip
    try:
        wait_for(lambda: b"bridge connected" in log.read_bytes(), 20, "the bridge")
        daemon = daemons(plugin)
        daemon.start(env=faketime_env("+25d"))
        wait_for(lambda: plugin.verdict().get("serial", 0) >= 3, 30, "the renewal on day 25")
        assert daemon.stop() == 0
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(15)
    for day in (26, 31, 40, 54):
        assert plugin.check(faketime=f"+{day}d").returncode == 0, day
    assert plugin.check(faketime="+56d").returncode == 10  # 30 days after day 25: grace


def test_a_laptop_offers_a_bundle_to_the_mqtt_daemon(
    hq: HQ,
    broker: Broker,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
    tmp_path: Path,
) -> None:
    key = hq.setup()
    robot = make_device()
    hq.image(robot)
    hq.run("provision", key, "--fingerprint", robot.fingerprint, "--root", str(robot.path))
    assert robot.check().returncode == 0
    robot.write_config(mqtt_config(broker))  # the laptop's broker is in its list
    bundle, report = tmp_path / "site.bundle", tmp_path / "site.report"
    hq.run("field", "export", "--all", "-o", str(bundle))
    port = free_port()
    laptop = subprocess.Popen(
        [FIELDPASS_HQ, "--home", str(hq.home), "field", "serve", str(bundle), "--port",
         str(port), "--report", str(report), "--broker", broker.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )  # fmt: skip
    try:
        wait_for(lambda: laptop.poll() is not None or port_open(port), 20, "the laptop")
        assert laptop.poll() is None
        watcher = Client(broker)
        watcher.subscribe(device_topic(robot, "status"))
        daemon = daemons(robot)
        daemon.start()
        wait_for(lambda: robot.verdict().get("serial") == 2, 30, "the laptop's renewal")
        wait_for(
            lambda: any(
                robot.signed(m, "status")["serial"] == 2 for m in watcher.received("status")
            ),
            20,
            "the robot's status with the new serial",
        )
        time.sleep(0.3)  # the laptop is subscribed to the same topic
        watcher.close()
        assert daemon.stop() == 0
    finally:
        laptop.send_signal(signal.SIGTERM)
        out, err = laptop.communicate(timeout=20)
    assert laptop.returncode == 0, err
    doc = json.loads(report.read_text())
    assert [p["via"] for p in doc["pickups"]] == ["mqtt"], out + err
    assert robot.check().returncode == 0
