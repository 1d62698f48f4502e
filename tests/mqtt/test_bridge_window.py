"""The bridge publishes through the link's window (provisioning/mqtt/link.py), as
``push`` does: with the real mosquitto stopped (SIGSTOP) while the bridge has hundreds of
revocations to publish, paho never holds more than the window awaiting their PUBACK (past
65,535 it would reuse packet ids and lose messages); once the broker runs again
(SIGCONT), every device's revocation is there, retained, and verifies."""

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.daemon import topics
from agent.wire.keys import Keyring
from agent.wire.revocation import verify_revocation
from provisioning.models import Actor
from provisioning.mqtt import bridge as bridge_mod
from provisioning.mqtt import connection
from provisioning.mqtt.link import Link
from provisioning.services import HQ
from tests.engines import Engine
from tests.mqtt.conftest import Broker, Client, wait_for
from tests.mqtt.simdevices import enroll, industrial

ACTOR = Actor("test", "local")
PREFIX = topics.DEFAULT_PREFIX
DEVICES = 150
WINDOW = 10


@pytest.fixture
def service(tmp_path: Path, hq_engine: Engine) -> Iterator[HQ]:
    hq_engine.configure(tmp_path / "home")
    hq = industrial(tmp_path / "home")
    yield hq
    hq.store.close()


def test_a_stopped_broker_holds_the_bridge_to_its_window_and_loses_nothing(
    service: HQ, broker: Broker
) -> None:
    lic = service.create_license("industrial", [], None, int(time.time()), ACTOR)
    sims = enroll(service, lic.license_key, DEVICES)
    links: list[Link] = []

    def connect(
        on_message: connection.MessageHandler,
        subscriptions: list[str],
        on_connected: Callable[[], None],
    ) -> Link:
        link = connection.open_link(
            broker.url,
            "fieldpass-hq-bridge-1",
            "fieldpass-hq-bridge-1",
            "-",
            on_message=on_message,
            subscriptions=subscriptions,
            on_connected=on_connected,
            window=WINDOW,
        )
        links.append(link)
        return link

    stop = threading.Event()
    worker = bridge_mod.Bridge(service, PREFIX)
    thread = threading.Thread(target=bridge_mod.serve, args=(worker, connect, stop), daemon=True)
    thread.start()
    wait_for(lambda: links and links[0].client.is_connected(), 10, "the bridge to connect")
    paho = links[0].client
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        service.set_status(lic.id, "suspend", int(time.time()), ACTOR)  # DEVICES to tell
        most = 0
        deadline = time.monotonic() + 4  # the bridge polls its outbox every second
        while time.monotonic() < deadline:
            most = max(most, len(paho._out_messages), links[0].awaiting())
            time.sleep(0.001)
        told_so_far = sum(worker.told.values())
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    # The window was reached (the bridge had more to publish) and never passed.
    assert most == WINDOW
    assert told_so_far > WINDOW  # taken from the outbox, waiting for room

    ring = Keyring.loads(service.keyring().dumps().encode())
    wanted = {s.topic(topics.REVOCATION): s.activation_id for s in sims}
    reader = Client(broker)
    try:
        reader.subscribe(topics.topic(PREFIX, "+", topics.REVOCATION))

        def all_retained() -> bool:
            with reader.lock:
                return {m.topic for m in reader.messages if m.payload} >= set(wanted)

        wait_for(all_retained, 60, "every revocation to be retained")
        with reader.lock:
            got = {m.topic: bytes(m.payload) for m in reader.messages if m.payload}
    finally:
        reader.close()
        stop.set()
        thread.join(30)
    for topic, activation_id in wanted.items():
        assert verify_revocation(got[topic], ring, activation_id).reason == "suspended"
    assert not thread.is_alive() and len(paho._out_messages) == 0
