"""The laptop's MQTT side (``field serve --broker``) against hostile status messages on
the real broker: a nesting bomb, garbage, a status signed by a key the bundle does not
know, another device's signed status, some retained before the laptop starts. It stays
up, counts them, and its report holds nothing from them."""

import json
import time
from collections.abc import Callable
from pathlib import Path

from agent import asks
from agent.config import load
from agent.daemon import topics
from agent.device import Device
from tests.conftest import HQ, DeviceRoot
from tests.laptop import laptop, make_site
from tests.mqtt.conftest import Broker, Client, wait_for


def status_topic(fingerprint: str) -> str:
    return topics.topic(topics.DEFAULT_PREFIX, topics.device_id(fingerprint), topics.STATUS)


def test_hostile_status_messages_never_stop_the_laptop(
    hq: HQ, broker: Broker, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    site = make_site(hq, tmp_path)
    stranger = make_device()  # a device key the bundle does not know, its own status
    dev = Device(load(str(stranger.path)))
    with dev.writer_lock():
        foreign = asks.status(dev, {"verdict": "valid"}, int(time.time()))
    first, second = site.fingerprints
    poison = [
        (first, b"[" * 1_000),
        (first, b'{"v": 1, "verdict": ' + b"[" * 500 + b"}"),
        (second, b"\xff" * 300),
        (second, foreign),
        (site.revoked_fingerprint, b"\xa3akidbxxcmsg@csig@"),
    ]
    client = Client(broker)
    for fp, payload in poison[:2]:  # there before the laptop subscribes
        client.publish(status_topic(fp), payload, retain=True)
    with laptop(site.bundle, tmp_path / "r", "--broker", broker.url, "--json") as lp:
        client.subscribe(topics.topic(topics.DEFAULT_PREFIX, "+", topics.MACHINE_FILE))
        wait_for(lambda: len(client.received(topics.MACHINE_FILE)) == 2, 20, "the bundle's files")
        for fp, payload in poison[2:]:
            client.publish(status_topic(fp), payload)
        time.sleep(1)  # delivery to the laptop, subscribed before it published its files
        assert lp.alive()
    client.close()
    assert lp.proc.returncode == 0, lp.stderr
    assert "Traceback" not in lp.stderr, lp.stderr
    summary = json.loads(lp.stdout)
    assert summary["ignored_messages"] >= 3
    report = lp.report()
    assert report["pickups"] == [] and report["served_unconfirmed"] == []
