"""Hostile payloads on every topic the bridge and ``push`` read, through a real mosquitto
(set up by ``broker-config``: client ids bound to user names) to the real
``fieldpass-hq bridge`` and ``push`` processes. Each case asserts that the process stays
up, still answers a good request (a canary device's renewal, a real daemon's status),
and that nothing of the bad input reached HQ's database.

The payloads come from hypothesis: random bytes, JSON and CBOR nested past every bound,
the 0.1.0 form with fields of the wrong type, signed messages with a bit flipped, signed
by an unknown key, or sent on another device's topic, oversized ones; some retained (a
poison message the broker delivers again at every start).
"""

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.daemon import messages, topics
from agent.wire.device_key import DeviceKey
from provisioning.services import HQ as Service
from tests.conftest import FIELDPASS_HQ, HQ, DeviceRoot, clean_env
from tests.mqtt.conftest import (
    OBSERVER,
    OBSERVER_PASSWORD,
    Broker,
    Client,
    Daemon,
    add_user,
    mqtt_config,
    wait_for,
)
from tests.mqtt.simdevices import SimDevice, enroll

ATTACKER, ATTACKER_PASSWORD = "test-attacker", "attacker-password"
# The fuzz convention of the device's suite: a fixed seed in make test;
# FIELDPASS_FUZZ=long gives twenty times the examples and random seeds.
LONG = os.environ.get("FIELDPASS_FUZZ", "") == "long"


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples * (20 if LONG else 1),
        deadline=None,
        derandomize=not LONG,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@dataclass
class World:
    hq: HQ
    broker: Broker
    tmp: Path
    license_key: str
    canary: SimDevice
    target: SimDevice  # the device whose topics the payloads land on
    legacy_fp: str  # an activation of the 0.1.0 kind (no device key)
    bridge: subprocess.Popen[bytes] | None = None

    def topic(self, kind: str, legacy: bool = False) -> str:
        dev = topics.device_id(self.legacy_fp) if legacy else self.target.device_id
        return topics.topic(topics.DEFAULT_PREFIX, dev, kind)

    def start_bridge(self) -> None:
        log_path = self.tmp / "bridge.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        log = open(log_path, "ab")  # noqa: SIM115 - the process owns it
        self.bridge = subprocess.Popen(
            [FIELDPASS_HQ, "--home", str(self.hq.home), "bridge", "--broker", self.broker.url,
             "--min-interval", "0s", "--json"],
            stdout=subprocess.PIPE, stderr=log, env=clean_env(),
        )  # fmt: skip
        wait_for(lambda: b"bridge connected" in log_path.read_bytes()[offset:], 20)

    def stop_bridge(self) -> dict[str, object]:
        assert self.bridge is not None
        self.bridge.send_signal(signal.SIGTERM)
        out, _ = self.bridge.communicate(timeout=20)
        assert self.bridge.returncode == 0
        self.bridge = None
        return json.loads(out)  # type: ignore[no-any-return]

    def stored(self) -> tuple[object, ...]:
        """What HQ holds of the target devices, and how many renewals it issued."""
        service = Service(self.hq.home)
        try:
            acts = [a for a in service.list_activations() if a.id != self.canary.activation_id]
            renews = sum(1 for e in service.audit(100000) if e.action == "renew")
            keys = [a.device_key for a in acts]
            usage = service.usage.usage()  # reports accepted; a return frees or audits
            returns = sum(1 for e in service.audit(100000) if e.action == "return")
            return tuple(acts), renews, tuple(keys), repr(usage), returns
        finally:
            service.store.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("hostile")
    hq = HQ(tmp / "hq-home")
    license_key = hq.setup(seats=20)
    service = Service(hq.home)
    canary, target = enroll(service, license_key, 2)
    legacy_fp = "ab" * 32
    hq.run("activate", license_key, "--fingerprint", legacy_fp)
    service.store.close()
    broker = Broker(tmp / "broker")
    out = tmp / "broker-config"
    hq.run("broker-config", "-o", str(out))
    add_user(out, OBSERVER, OBSERVER_PASSWORD, "topic readwrite fieldpass/v1/#")
    add_user(
        out,
        ATTACKER,
        ATTACKER_PASSWORD,
        "topic write fieldpass/v1/dev/+/renew-request",
        "topic write fieldpass/v1/dev/+/status",
        "topic write fieldpass/v1/dev/+/report",
        "topic write fieldpass/v1/dev/+/receipt",
    )
    broker.configure((out / "mosquitto.conf").read_text())
    broker.start()
    w = World(hq, broker, tmp, license_key, canary, target, legacy_fp)
    w.start_bridge()
    yield w
    if w.bridge is not None and w.bridge.poll() is None:
        w.bridge.kill()
        w.bridge.wait(10)
    broker.stop()


def _flip(data: bytes, at: int) -> bytes:
    i = at % len(data)
    return data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1 :]


def _message(device: SimDevice, kind: str) -> bytes:
    if kind == "renew-request":
        return device.renew()
    if kind == "report":
        return device.report(10**6, {"units": 10**9})
    if kind == "receipt":
        return device.receipt()
    return device.status(device.serial)


def _signed(world: World, kind: str, how: str, at: int) -> bytes:
    device = world.target
    good = _message(device, kind)
    if how == "flipped":
        return _flip(good, at)
    if how == "stranger":  # signed by a key HQ never saw
        stranger = SimDevice(device.fingerprint, device.activation_id, DeviceKey.generate(), 1)
        return _message(stranger, kind)
    if how == "foreign":  # the canary's valid message, on the target's topic
        return _message(world.canary, kind)
    return good[: at % len(good)]  # cut short


json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=30,
)
raw_payloads = st.one_of(
    st.binary(max_size=2500),
    st.integers(1, 5000).map(lambda n: b"[" * n),
    st.integers(1, 1008).map(lambda n: b'{"v":1,"serial":' + b"[" * n),  # RecursionError
    st.integers(1, 4000).map(lambda n: b"\x81" * n),
    st.integers(1, 4000).map(lambda n: b"\x9f" * n),
    st.integers(2049, 69000).map(os.urandom),  # over every bound, under the broker's
    json_docs.map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries(
        {"v": st.just(1), "serial": st.integers(), "expires_at": st.integers()},
        optional={"due": st.none() | st.integers() | st.text(max_size=3)},
    ).map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries(
        {"v": st.just(1), "verdict": st.integers() | st.none(), "serial": st.text()}
    ).map(lambda d: json.dumps(d).encode()),
)
signed_cases = st.tuples(
    st.sampled_from(["flipped", "stranger", "foreign", "truncated"]), st.integers(0, 4000)
)
one_message = st.tuples(
    st.sampled_from(["renew-request", "status", "report", "receipt"]),
    st.booleans(),  # on the 0.1.0 device's topic
    st.booleans(),  # retained
    st.one_of(raw_payloads.map(lambda p: ("raw", p)), signed_cases.map(lambda c: ("signed", c))),
)


def _payload(world: World, kind: str, spec: tuple[str, object]) -> bytes:
    what, value = spec
    if what == "raw":
        assert isinstance(value, bytes)
        return value
    how, at = value  # type: ignore[misc]
    return _signed(world, kind, how, at)


def _canary_answered(world: World) -> None:
    """A good request still gets its new file: the bridge is up and answering."""
    from agent.wire.machine_file import open_machine_file

    canary = world.canary
    service = Service(world.hq.home)
    try:
        serial = service.get_activation(canary.activation_id).serial
        keyring = service.keyring()
    finally:
        service.store.close()

    def newer(payload: bytes) -> bool:
        if not payload:
            return False
        claims = open_machine_file(payload, keyring, world.license_key, canary.fingerprint)
        return claims.serial > serial

    observer = Client(world.broker, OBSERVER, OBSERVER_PASSWORD)
    observer.subscribe(canary.topic(topics.MACHINE_FILE))
    attacker = Client(world.broker, ATTACKER, ATTACKER_PASSWORD)
    attacker.publish(canary.topic(topics.RENEW_REQUEST), canary.renew(serial=0))
    attacker.close()
    try:
        wait_for(lambda: any(newer(p) for p in observer.received("machine-file")), 20, "a file")
    finally:
        observer.close()


@fuzz(40)
@given(batch=st.lists(one_message, min_size=1, max_size=12))
def test_the_bridge_survives_every_payload_and_stores_nothing_of_it(
    world: World, batch: list[tuple[str, bool, bool, tuple[str, object]]]
) -> None:
    stored = world.stored()
    attacker = Client(world.broker, ATTACKER, ATTACKER_PASSWORD)
    for kind, legacy, retain, spec in batch:
        attacker.publish(world.topic(kind, legacy), _payload(world, kind, spec), retain=retain)
    attacker.close()
    _canary_answered(world)
    assert world.bridge is not None and world.bridge.poll() is None
    acts, renews, keys, *_ = world.stored()
    assert (acts, keys) == (stored[0], stored[2])  # nothing of the bad input stored
    assert renews == stored[1] + 1  # the canary's renewal, and nothing else
    assert stored[3:] == world.stored()[3:]  # no report, no return


def test_a_poison_message_retained_on_a_device_topic_survives_restarts(world: World) -> None:
    """A retained bad message comes back at every start of the bridge (mosquitto gives
    retained messages to shared subscriptions too): each time it is counted, dropped
    unread, and the bridge answers the next good request."""
    attacker = Client(world.broker, ATTACKER, ATTACKER_PASSWORD)
    bomb = b'{"v":1,"serial":' + b"[" * 1008
    attacker.publish(world.topic("renew-request", legacy=True), bomb, retain=True)
    attacker.publish(world.topic("status"), b"[" * 1000, retain=True)
    attacker.close()
    for _ in range(2):
        summary = world.stop_bridge()
        world.start_bridge()
        _canary_answered(world)
        assert world.bridge is not None and world.bridge.poll() is None
    summary = world.stop_bridge()
    assert summary["ignored"]["retained"] >= 2  # type: ignore[index]
    world.start_bridge()


@pytest.fixture
def listening_robot(
    world: World, make_device: Callable[..., DeviceRoot], daemons: Callable[[DeviceRoot], Daemon]
) -> Iterator[DeviceRoot]:
    """A real ``fieldpass run`` of the license, connected, with its broker password."""
    import csv

    robot = make_device()
    world.hq.image(robot)
    out = world.tmp / f"{robot.path.name}.machine"
    world.hq.run("activate", world.license_key, "--fingerprint", robot.fingerprint, "-o", str(out))
    key_file = world.tmp / "key.txt"
    key_file.write_text(world.license_key + "\n")
    assert robot.run("install", str(out), "--license-key-file", str(key_file)).returncode == 0
    config = world.tmp / "robot-config"
    world.hq.run("broker-config", "-o", str(config))
    with open(config / "credentials.csv") as f:
        dev = topics.device_id(robot.fingerprint)
        password = next(r["password"] for r in csv.DictReader(f) if r["device_id"] == dev)
    # the broker keeps its files; add the robot's user to them
    subprocess.run(
        ["mosquitto_passwd", "-b", str(world.tmp / "broker-config/passwd"), dev, password],
        check=True,
    )
    assert world.broker.proc is not None
    world.broker.proc.send_signal(signal.SIGHUP)  # mosquitto reloads its password file
    (robot.path / "etc/fieldpass/mqtt.password").write_text(password + "\n")
    robot.write_config(mqtt_config(world.broker, 'password_file = "/etc/fieldpass/mqtt.password"'))
    daemon = daemons(robot)
    daemon.start()
    daemon.wait_log("state CONNECTING -> CONNECTED")
    yield robot
    daemon.stop()


@fuzz(5)
@given(batch=st.lists(one_message.filter(lambda m: m[0] == "status"), min_size=1, max_size=20))
def test_push_survives_every_status_payload(
    world: World,
    listening_robot: DeviceRoot,
    batch: list[tuple[str, bool, bool, tuple[str, object]]],
) -> None:
    """Retained poison on status topics is there when push subscribes; more arrives while
    it waits. It counts the real device's confirmation, exits 0, and stores nothing."""
    attacker = Client(world.broker, ATTACKER, ATTACKER_PASSWORD)
    attacker.publish(world.topic("status"), b"[" * 1000, retain=True)
    bomb = b'{"v":1,"verdict":' + b"[" * 1000
    attacker.publish(world.topic("status", legacy=True), bomb, retain=True)
    for kind, legacy, retain, spec in batch:
        attacker.publish(world.topic(kind, legacy), _payload(world, kind, spec), retain=retain)
    stored = world.stored()
    robot_act = next(a for a in stored[0] if a.fingerprint == listening_robot.fingerprint)  # type: ignore[attr-defined]
    proc = subprocess.Popen(
        [FIELDPASS_HQ, "--home", str(world.hq.home), "push", "--broker", world.broker.url,
         "--device", robot_act.id, "--wait", "20s", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
    )  # fmt: skip
    time.sleep(0.3)
    for kind, legacy, _, spec in batch:  # and the same again while push waits
        attacker.publish(world.topic(kind, legacy), _payload(world, kind, spec))
    attacker.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert (summary["sent"], summary["confirmed"], summary["failed"]) == (1, 1, 0)
    assert summary["ignored"].get("retained", 0) >= 2  # the poison, dropped unread
    acts, renews, keys, *_ = world.stored()
    others = [a for a in acts if a.id != robot_act.id]  # type: ignore[attr-defined]
    assert others == [a for a in stored[0] if a.id != robot_act.id]  # type: ignore[attr-defined]
    assert renews == stored[1] + 1 and keys == stored[2]


def test_a_legacy_json_bomb_is_bounded_before_json_reads_it() -> None:
    """The 0.1.0 form nested 1,008 deep fits its 1 KiB bound and would end json in
    RecursionError; HQ's reader refuses it by its depth first."""
    from provisioning.mqtt import inbound

    bomb = b'{"v":1,"serial":' + b"[" * 1008
    assert len(bomb) <= messages.MAX_DEVICE_MESSAGE_BYTES
    for read in (inbound.legacy_renew, inbound.legacy_held):
        with pytest.raises(inbound.BadMessage) as e:
            read(bomb)
        assert e.value.kind == "too_deep"
    assert inbound.nesting(b'{"a":"[[[[\\"[[","b":[1]}', 10) == 2  # strings skipped
