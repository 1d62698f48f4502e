"""HQ's side against a real mosquitto with the generated password and ACL files: the
real ``fieldpass-hq bridge`` / ``push`` / ``broker-config`` and real ``fieldpass run``."""

import csv
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import FIELDPASS_HQ, HQ, DeviceRoot, clean_env
from tests.mqtt.conftest import Broker, Client, Daemon, device_topic, mqtt_config, wait_for


class Fleet:
    def __init__(self, hq: HQ, broker: Broker, tmp: Path) -> None:
        self.hq, self.broker, self.tmp = hq, broker, tmp
        self.key = hq.setup(seats=20)
        self.license_id = ""
        self.activations: dict[str, str] = {}
        self.bridge: subprocess.Popen[bytes] | None = None

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

    def lock_down(self, devices: list[DeviceRoot]) -> dict[str, str]:
        """broker-config, the broker restarted on its files, each device given its
        password; returns device id -> password."""
        out = self.tmp / "broker-config"
        self.hq.run("broker-config", "-o", str(out))
        self.broker.configure(
            f"allow_anonymous false\npassword_file {out}/passwd\nacl_file {out}/acl\n"
        )
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

    def start_bridge(self) -> None:
        log = open(self.tmp / "bridge.log", "ab")  # noqa: SIM115 - the process owns it
        self.bridge = subprocess.Popen(
            [FIELDPASS_HQ, "--home", str(self.hq.home), "bridge", "--broker", self.broker.url,
             "--min-interval", "0s"],
            stdout=log, stderr=log, env=clean_env(),
        )  # fmt: skip
        wait_for(lambda: b"bridge connected" in (self.tmp / "bridge.log").read_bytes())

    def hq_client(self, rows: dict[str, str]) -> Client:
        return Client(self.broker, "fieldpass-hq", self.hq_password())

    def hq_password(self) -> str:
        from provisioning.mqtt import credentials

        return credentials.password(credentials.secret(self.hq.home), credentials.HQ_USER)

    def audit(self) -> list[dict[str, object]]:
        return json.loads(self.hq.run("audit", "--json").stdout)  # type: ignore[no-any-return]


@pytest.fixture
def fleet(hq: HQ, broker: Broker, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(hq, broker, tmp_path)
    yield f
    if f.bridge is not None:
        f.bridge.send_signal(signal.SIGTERM)
        f.bridge.wait(15)


def test_bridge_renews_then_revokes_acl_confines(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    robot, other = make_device(), make_device()
    fleet.enroll(robot, faketime="-300d")  # due: 300 of 365 days gone
    fleet.enroll(other)
    rows = fleet.lock_down([robot, other])
    fleet.start_bridge()
    daemon = daemons(robot)
    daemon.start()
    wait_for(lambda: robot.verdict().get("serial") == 2, 20, "the bridge's renewal")
    assert robot.check().returncode == 0 and robot.verdict()["days_left"] == 365
    assert daemon.stop() == 0
    assert any(e["action"] == "renew" and e["actor"] == "mqtt-bridge" for e in fleet.audit())

    # the other device, with its own valid credentials, reads nothing of the robot's
    other_id = device_topic(other, "x").split("/")[3]
    intruder = Client(fleet.broker, other_id, rows[other_id])
    intruder.subscribe(device_topic(robot, "machine-file"))
    intruder.subscribe("fieldpass/v1/dev/+/machine-file")
    intruder.subscribe("#")
    forged = b'{"v":1,"serial":0,"expires_at":0,"due":true}'
    intruder.publish(device_topic(robot, "renew-request"), forged)
    hq_side = fleet.hq_client(rows)
    hq_side.subscribe(device_topic(robot, "#"))
    wait_for(lambda: hq_side.received("machine-file"), what="HQ's own view of the retained file")
    time.sleep(1)
    assert intruder.received("") == []
    assert not hq_side.received("renew-request")  # the ACL dropped the forged request
    intruder.close()
    hq_side.close()

    # revoked at HQ: the robot learns it on its next connection, and it sticks offline
    fleet.hq.run("licenses", "revoke", fleet.license_id, "--yes")
    daemon = daemons(robot)
    daemon.start()
    wait_for(lambda: robot.verdict().get("verdict") == "revoked", 20, "the revocation")
    assert daemon.stop() == 0
    fleet.broker.stop()
    assert robot.check().returncode == 32
    assert any(e["action"] == "mqtt_revocation" for e in fleet.audit())
    fleet.broker.start()


def test_push_renews_a_license_and_counts_confirmations(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    robots = [make_device() for _ in range(3)]
    for robot in robots:
        fleet.enroll(robot)
    fleet.lock_down(robots)
    running = []
    for robot in robots[:2]:
        d = daemons(robot)
        d.start()
        d.wait_log("connected")
        running.append(d)
    result = fleet.hq.run(
        "push", "--broker", fleet.broker.url, "--license", fleet.license_id, "--wait", "5s",
        "--json",
    )  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["selected"] == 3 and summary["sent"] == 3 and summary["failed"] == 0
    assert summary["confirmed"] == 2 and summary["pending"] == 1  # the third is offline
    # the offline one gets its retained file when it comes back
    late = daemons(robots[2])
    late.start()
    wait_for(lambda: robots[2].verdict().get("serial") == 2, 20, "the retained file")
    for d in [*running, late]:
        assert d.stop() == 0
    for robot in robots:
        assert robot.check().returncode == 0


def test_suspended_then_reinstated_device_is_lifted_by_a_fresh_file(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    robot = make_device()
    fleet.enroll(robot)
    fleet.lock_down([robot])
    fleet.start_bridge()
    fleet.hq.run("licenses", "suspend", fleet.license_id)
    daemon = daemons(robot)
    daemon.start()
    wait_for(lambda: robot.verdict().get("verdict") == "revoked", 20, "the suspension")
    assert robot.check().returncode == 32
    # a file lifts a revocation only if HQ issued it later (in whole seconds)
    time.sleep(1.1)
    fleet.hq.run("licenses", "reinstate", fleet.license_id)
    daemon.stop()
    daemon.start()  # its request says it holds a revocation: HQ answers with a new file
    wait_for(lambda: robot.verdict().get("verdict") == "valid", 20, "the lifting file")
    assert robot.verdict()["serial"] == 2
    assert daemon.stop() == 0
    assert robot.check().returncode == 0


def test_bridge_says_connected_only_once_the_broker_accepted_it(
    fleet: Fleet, tmp_path: Path
) -> None:
    def bridge(*args: str) -> subprocess.CompletedProcess[str]:
        return fleet.hq.run("bridge", *args, check=False)

    wrong_scheme = bridge("--broker", f"http://127.0.0.1:{fleet.broker.port}")
    assert wrong_scheme.returncode == 2
    assert wrong_scheme.stderr.count("\n") == 1 and "mqtt://" in wrong_scheme.stderr
    assert "connected" not in wrong_scheme.stderr

    bad = tmp_path / "wrong.password"
    bad.write_text("not-the-password\n")
    fleet.lock_down([])
    refused = bridge("--broker", fleet.broker.url, "--password-file", str(bad))
    assert refused.returncode == 69 and "refused HQ" in refused.stderr
    assert "connected" not in refused.stderr

    fleet.broker.stop()
    unreachable = bridge("--broker", fleet.broker.url)
    assert unreachable.returncode == 69 and "cannot reach the broker" in unreachable.stderr
    assert "connected" not in unreachable.stderr and "Errno" not in unreachable.stderr
    fleet.broker.start()

    proc = subprocess.Popen(
        [FIELDPASS_HQ, "--home", str(fleet.hq.home), "bridge", "--broker", fleet.broker.url,
         "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line.startswith("fieldpass.hq"):  # log lines from the bridge, if any
            line = proc.stderr.readline()
        assert line == f"fieldpass-hq: bridge connected to {fleet.broker.url}\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"broker": fleet.broker.url, "stopped": True, "ignored": {}}


def test_push_exits_1_when_a_device_failed(fleet: Fleet) -> None:
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2 * 86400))
    doc = fleet.hq.json("licenses", "create", "--plan", "industrial", "--expires", expires)
    fleet.hq.run("activate", str(doc["key"]), "--fingerprint", "ab" * 32)
    push = [
        "push", "--broker", fleet.broker.url, "--license", str(doc["id"]), "--wait", "0s",
        "--json",
    ]  # fmt: skip
    ok = fleet.hq.run(*push, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sent"] == 1
    # ten days on, the license has expired: HQ issues nothing, and says so by its exit code
    failed = fleet.hq.run(*push, faketime="+10d", check=False)
    assert failed.returncode == 1, failed.stderr
    summary = json.loads(failed.stdout)
    assert summary["failed"] == 1 and summary["sent"] == 0
    assert "expired" in summary["failures"][0]
