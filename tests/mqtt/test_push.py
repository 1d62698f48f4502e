"""``push`` in process (provisioning/mqtt/push.py) against a real mosquitto and simulated
devices (tests/mqtt/simdevices.py): its window of publishes awaiting their PUBACK, and
how it reads statuses of the devices it sends to. The command through the real
process: test_hq_bridge.py, test_hostile.py."""

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from agent.daemon import topics
from agent.wire.keys import Keyring
from agent.wire.machine_file import open_machine_file
from provisioning.models import Actor
from provisioning.mqtt import connection
from provisioning.mqtt import push as push_mod
from provisioning.mqtt.link import Link
from provisioning.services import HQ
from tests.engines import Engine
from tests.mqtt.conftest import Broker, Client, wait_for
from tests.mqtt.simdevices import SimDevice, enroll, industrial

ACTOR = Actor("test", "local")
PREFIX = topics.DEFAULT_PREFIX


@pytest.fixture
def service(tmp_path: Path, hq_engine: Engine) -> Iterator[HQ]:
    hq_engine.configure(tmp_path / "home")
    hq = industrial(tmp_path / "home")
    yield hq
    hq.store.close()


class Devices:
    """Simulated devices on the broker: each file received is opened as the daemon
    opens it and answered by the device's signed status."""

    def __init__(
        self,
        broker: Broker,
        hq: HQ,
        license_key: str,
        sims: list[SimDevice],
        keyring: list[str] | None = None,
    ):
        self.ring = Keyring.loads(hq.keyring().dumps().encode())
        self.keyring = keyring  # what each status says the device's keyring holds
        self.license_key = license_key
        self.by_id = {s.device_id: s for s in sims}
        self.installed: dict[str, int] = {}
        self.lock = threading.Lock()
        self.client = Client(broker)
        self.client.client.on_message = self._on_file
        self.client.subscribe(topics.topic(PREFIX, "+", topics.MACHINE_FILE))

    def _on_file(self, client: object, userdata: object, message: mqtt.MQTTMessage) -> None:
        parsed = topics.parse(PREFIX, message.topic)
        sim = self.by_id.get(parsed[0]) if parsed else None
        if sim is None or not message.payload:
            return
        claims = open_machine_file(
            bytes(message.payload), self.ring, self.license_key, sim.fingerprint
        )
        with self.lock:
            self.installed[sim.device_id] = claims.serial
        status = sim.status(claims.serial, keyring=self.keyring)
        self.client.client.publish(sim.topic(topics.STATUS), status, qos=1)


def _push_link(broker: Broker, confirmations: push_mod.Confirmations, **options: Any) -> Link:
    """push's own link to the broker, taking the devices' statuses."""
    return connection.open_link(
        broker.url,
        "fieldpass-hq-push",
        "fieldpass-hq-push",
        "-",
        on_message=confirmations.on_message,
        subscriptions=[topics.topic(PREFIX, "+", topics.STATUS)],
        **options,
    )


def test_push_sends_through_a_small_window_and_counts_every_confirmation(
    service: HQ, broker: Broker
) -> None:
    """With at most 3 publishes awaiting their PUBACK, every one of 40 devices is sent its
    file, settled as acknowledged, and confirmed by its signed status."""
    lic = service.create_license("industrial", [], None, int(time.time()), ACTOR)
    sims = enroll(service, lic.license_key, 40)
    devices = Devices(broker, service, lic.license_key, sims)
    confirmations = push_mod.Confirmations(service)
    link = _push_link(broker, confirmations, window=3)
    most = [0]
    original = link._write_queued

    def watched() -> None:  # what awaits its PUBACK, as each batch is written
        original()
        most[0] = max(most[0], len(link.client._out_messages))

    link._write_queued = watched  # type: ignore[method-assign]
    try:
        summary = push_mod.push(
            service,
            link,
            confirmations,
            push_mod.Selection(license_id=lic.id),
            prefix=PREFIX,
            ttl_s=None,
            wait_s=30,
            now=int(time.time()),
            actor=ACTOR,
        )
    finally:
        link.close()
        devices.client.close()
    assert 0 < most[0] <= 3  # paho never held more than the window
    assert (summary.selected, summary.sent, summary.confirmed, summary.failed) == (40, 40, 40, 0)
    assert summary.pending == 0 and summary.ignored == {}
    assert devices.installed == {s.device_id: 2 for s in sims}
    assert {a.id: a.serial for a in service.list_activations(lic.id)} == {
        s.activation_id: 2 for s in sims
    }


def test_push_sends_no_file_to_a_device_that_gave_its_license_back(
    service: HQ, broker: Broker
) -> None:
    """A device whose return waits for its seat to free (no TPM) gets no file, from a
    whole license's push (bulk issuance) or a push naming it: ``returned`` counts it,
    no failure; the others are sent theirs."""
    from provisioning.models import ReturnRecord

    now = int(time.time())
    lic = service.create_license("industrial", [], None, now, ACTOR)
    sims = enroll(service, lic.license_key, 4, now=now)
    gave = service.get_activation(sims[0].activation_id)
    with service.store.write() as tx:
        rec = ReturnRecord(gave.id, gave.serial, now, now, "mqtt", "-", gave.last_expires_at, None)
        tx.insert_return(rec)
    devices = Devices(broker, service, lic.license_key, sims)
    try:
        for sel, sent in (
            (push_mod.Selection(license_id=lic.id), 3),
            (push_mod.Selection(license_id=lic.id, devices=(gave.id, sims[1].activation_id)), 1),
        ):
            confirmations = push_mod.Confirmations(service)
            link = _push_link(broker, confirmations)
            try:
                summary = push_mod.push(
                    service, link, confirmations, sel, prefix=PREFIX, ttl_s=None, wait_s=30,
                    now=int(time.time()), actor=ACTOR,
                )  # fmt: skip
            finally:
                link.close()
            assert (summary.selected, summary.returned, summary.sent, summary.failed) == (
                len(sel.devices) or 4, 1, sent, 0
            )  # fmt: skip
            assert summary.doc()["returned"] == 1
    finally:
        devices.client.close()
    assert sims[0].device_id not in devices.installed
    assert service.get_activation(gave.id).serial == gave.serial


def test_a_device_that_gives_its_license_back_while_push_runs_counts_as_returned(
    service: HQ, broker: Broker
) -> None:
    """``push`` selects, then issues: a receipt HQ takes in between (over MQTT, HTTP, a
    laptop's report) makes that device ``returned``, as if it had come before, never a
    failure nor missing from the counts: from a whole license's push (bulk issuance
    skips it), a push naming devices (its renewal refused ``activation_returned``), and
    a push with a reinstatement to tell (the receipt dropped the device's entry)."""
    now = int(time.time())
    lic = service.create_license("industrial", [], None, now, ACTOR)
    sims = enroll(service, lic.license_key, 5, now=now)
    devices = Devices(broker, service, lic.license_key, sims)
    cases = (
        (push_mod.Selection(license_id=lic.id), None),
        (push_mod.Selection(license_id=lic.id, devices=(sims[0].activation_id,
                                                        sims[1].activation_id)), None),
        (push_mod.Selection(license_id=lic.id), "reinstate"),
    )  # fmt: skip
    try:
        for n, (sel, change) in enumerate(cases):
            if change is not None:
                service.set_status(lic.id, "suspend", now + 10 * n, ACTOR)
                service.set_status(lic.id, change, now + 10 * n + 1, ACTOR)
            chosen = push_mod.select(service, sel, now + 10 * n + 2)
            gives_back = sims[n]  # a device push chose, not returned yet
            assert gives_back.activation_id in {a.id for a in chosen}
            serial = service.get_activation(gives_back.activation_id).serial
            service.usage.accept_receipt(gives_back.receipt(), now + 10 * n + 2, "mqtt", ACTOR)
            confirmations = push_mod.Confirmations(service)
            link = _push_link(broker, confirmations)
            try:
                summary = push_mod.push(
                    service, link, confirmations, sel, prefix=PREFIX, ttl_s=None, wait_s=30,
                    now=now + 10 * n + 3, actor=ACTOR, chosen=chosen,
                )  # fmt: skip
            finally:
                link.close()
            returned_before = n  # the devices of the earlier cases, returned before it
            selected = len(chosen)
            assert summary.failed == 0, summary.failures
            assert summary.returned == 1 + (returned_before if not sel.devices else 1)
            assert summary.sent + summary.returned == selected
            assert service.get_activation(gives_back.activation_id).serial == serial
    finally:
        devices.client.close()


def _status(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(topic=topic.encode())
    message.payload = payload
    return message


def test_statuses_of_known_devices_verify_against_their_own_topic(service: HQ) -> None:
    """A device push sends to is verified by its key at hand; its status on another
    device's topic, a status whose signature fails, and bytes that are no signed
    message are each counted, and confirm nothing."""
    lic = service.create_license("industrial", [], None, int(time.time()), ACTOR)
    a, b = enroll(service, lic.license_key, 2)
    confirmations = push_mod.Confirmations(service)
    acts = {act.id: act for act in service.list_activations(lic.id)}
    confirmations.know([acts[a.activation_id], acts[b.activation_id]])
    confirmations.expect_file(a.device_id, 2)
    confirmations.expect_file(b.device_id, 2)

    confirmations.on_message(None, None, _status(b.topic(topics.STATUS), a.status(2)))
    forged = bytearray(b.status(2))
    forged[-1] ^= 1  # the signature's last byte
    confirmations.on_message(None, None, _status(b.topic(topics.STATUS), bytes(forged)))
    confirmations.on_message(None, None, _status(b.topic(topics.STATUS), b"\xa0garbage"))
    assert confirmations.ignored == {
        "foreign_topic": 1,
        "device_unauthenticated": 1,
        "malformed_status": 1,
    }
    assert confirmations.outstanding() == 2 and confirmations.counts["file"] == 0

    confirmations.on_message(None, None, _status(a.topic(topics.STATUS), a.status(2)))
    confirmations.on_message(None, None, _status(b.topic(topics.STATUS), b.status(1)))
    assert confirmations.counts["file"] == 1 and confirmations.outstanding() == 1
    confirmations.on_message(None, None, _status(b.topic(topics.STATUS), b.status(2)))
    assert confirmations.counts["file"] == 2 and confirmations.outstanding() == 0


def test_push_records_the_keyring_a_verified_status_names(service: HQ, broker: Broker) -> None:
    """As the bridge does (test_hq_bridge.py): a device updated to an image whose keyring
    holds a new key names it in the status that confirms its file, and push records it
    at HQ, keeping the activation it holds up to date (the next status naming the same
    keyring writes nothing). A status on another device's topic, or one whose signature
    fails, records nothing."""
    lic = service.create_license("industrial", [], None, int(time.time()), ACTOR)
    a, b = enroll(service, lic.license_key, 2)
    (old,) = Keyring.loads(service.keyring().dumps().encode()).keys
    new, hostile = "fpk_" + os.urandom(8).hex(), "fpk_" + os.urandom(8).hex()
    assert {act.keyring for act in service.list_activations(lic.id)} == {()}
    devices = Devices(broker, service, lic.license_key, [a, b], keyring=[old, new])
    confirmations = push_mod.Confirmations(service)
    link = _push_link(broker, confirmations)
    try:
        summary = push_mod.push(
            service,
            link,
            confirmations,
            push_mod.Selection(license_id=lic.id),
            prefix=PREFIX,
            ttl_s=None,
            wait_s=30,
            now=int(time.time()),
            actor=ACTOR,
        )
        assert (summary.sent, summary.confirmed, summary.ignored) == (2, 2, {})
        keyrings = {act.id: act.keyring for act in service.list_activations(lic.id)}
        assert keyrings == {a.activation_id: (old, new), b.activation_id: (old, new)}
        assert confirmations.known[b.device_id][1].keyring == (old, new)

        forged = bytearray(b.status(2, keyring=[hostile]))
        forged[-1] ^= 1  # the signature's last byte
        devices.client.publish(b.topic(topics.STATUS), a.status(2, keyring=[hostile]))
        devices.client.publish(b.topic(topics.STATUS), bytes(forged))
        wanted = {"foreign_topic": 1, "device_unauthenticated": 1}
        wait_for(lambda: confirmations.ignored == wanted, 15, "the hostile statuses")
    finally:
        link.close()
        devices.client.close()
    assert {act.id: act.keyring for act in service.list_activations(lic.id)} == keyrings
