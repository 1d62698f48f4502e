"""Client-id takeover: a device's valid broker credentials used to connect under the
bridge's client id or another device's. On a broker set up by ``broker-config``
(``use_username_as_clientid``) the broker replaces every client id by the user name, so
the intruder only ever knocks off its own device: the real bridge and the other real
daemons stay connected, and every due renewal is answered."""

import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import DeviceRoot
from tests.mqtt.conftest import Broker, Daemon, Fleet, device_topic, wait_for


def _dev(device: DeviceRoot) -> str:
    return device_topic(device, "x").split("/")[3]


class Intruder:
    """Connects again and again, every ``every_s``, with someone else's client ids."""

    def __init__(self, broker: Broker, user: str, password: str, client_ids: list[str]) -> None:
        self.broker, self.user, self.password = broker, user, password
        self.client_ids = client_ids
        self.stop = threading.Event()
        self.accepted = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            client_id = self.client_ids[n % len(self.client_ids)]
            n += 1
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
            c.username_pw_set(self.user, self.password)
            ok = threading.Event()
            c.on_connect = lambda c, u, f, rc, p, ok=ok: ok.set() if not rc.is_failure else None
            c.connect("127.0.0.1", self.broker.port)
            c.loop_start()
            if ok.wait(5):
                self.accepted += 1
            time.sleep(0.3)
            c.disconnect()
            c.loop_stop()

    def __enter__(self) -> "Intruder":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)


def test_a_device_cannot_take_over_the_bridge_or_another_device(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    robots = [make_device() for _ in range(3)]
    intruder_device = make_device()
    for robot in robots:
        fleet.enroll(robot, faketime="-300d")  # due: each asks for a renewal at once
    fleet.enroll(intruder_device)
    rows = fleet.lock_down([*robots, intruder_device])
    fleet.start_bridge(replica=1)
    fleet.start_bridge(replica=2)
    first = daemons(robots[0])
    first.start()
    first.wait_log("state CONNECTING -> CONNECTED")
    wait_for(lambda: robots[0].verdict().get("serial") == 2, 20, "the first renewal")
    victims = [
        "fieldpass-hq-bridge-1",
        "fieldpass-hq-bridge-2",
        "fieldpass-hq-push",
        "fp-" + _dev(robots[0]),  # the client id robot 0's daemon uses
        _dev(robots[0]),  # and its user name
    ]
    me = _dev(intruder_device)
    with Intruder(fleet.broker, me, rows[me], victims) as intruder:
        time.sleep(2)
        later = [daemons(robot) for robot in robots[1:]]
        for d in later:
            d.start()
        for robot in robots[1:]:
            wait_for(lambda r=robot: r.verdict().get("serial") == 2, 30, "a renewal under attack")
        time.sleep(2)
    assert intruder.accepted >= 5  # it did connect, every time, as itself
    for n in (1, 2):
        log = fleet.bridge_log(n)
        assert "lost the broker connection" not in log, log
        assert all(p.poll() is None for p in fleet.bridges)
    # robot 0's daemon kept its one connection through all of it
    assert first.text().count("state CONNECTING -> CONNECTED") == 1, first.text()
    assert "retrying in" not in first.text()
    for d in [first, *later]:
        assert d.stop() == 0
    renewals = [e for e in fleet.audit() if e["action"] == "renew" and e["actor"] == "mqtt-bridge"]
    assert len(renewals) == 3  # one each, whichever replica answered
    fleet.stop_bridges()


def test_the_client_id_is_the_user_name(
    fleet: Fleet, make_device: Callable[..., DeviceRoot]
) -> None:
    """Whatever client id a device asks for, the broker knows it by its user name: two
    connections of one device under two ids are one client, the second ends the first."""
    robot = make_device()
    fleet.enroll(robot)
    rows = fleet.lock_down([robot])
    me = _dev(robot)
    dropped = threading.Event()

    def connect(client_id: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.username_pw_set(me, rows[me])
        ok = threading.Event()
        c.on_connect = lambda c, u, f, rc, p: ok.set()
        c.on_disconnect = lambda c, u, f, rc, p: dropped.set()
        c.connect("127.0.0.1", fleet.broker.port)
        c.loop_start()
        assert ok.wait(10)
        return c

    one = connect("fieldpass-hq-bridge-1")
    two = connect("some-other-device")
    assert dropped.wait(10)  # the broker took "both" for the same client
    for c in (one, two):
        c.disconnect()
        c.loop_stop()
