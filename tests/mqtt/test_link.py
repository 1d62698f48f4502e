"""The link (provisioning/mqtt/link.py) against a real mosquitto: what its ``done``
callbacks are told. A PUBACK with an MQTT 5 failure reason code (mosquitto's 0x87 "not
authorized" for a publish its ACL denies) is a failure; one with a success-class code
(0x10 "no matching subscribers") an acknowledgement."""

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.daemon import topics
from provisioning.models import Actor
from provisioning.mqtt import bridge as bridge_mod
from provisioning.mqtt import connection
from provisioning.mqtt.link import Done, Link
from provisioning.services import HQ
from tests.engines import Engine
from tests.mqtt.conftest import Broker, wait_for
from tests.mqtt.simdevices import enroll, industrial

USER, PASSWORD = "link-test", "link-test-password"
ACTOR = Actor("test", "local")


class Outcomes:
    """What each publish's ``done`` was told, by name, once each."""

    def __init__(self) -> None:
        self.told: dict[str, list[bool]] = {}
        self.lock = threading.Lock()
        self.settled = threading.Condition(self.lock)

    def done(self, name: str) -> Done:
        def tell(acknowledged: bool) -> None:
            with self.settled:
                self.told.setdefault(name, []).append(acknowledged)
                self.settled.notify_all()

        return tell

    def wait(self, names: list[str], timeout: float = 15) -> dict[str, list[bool]]:
        with self.settled:
            self.settled.wait_for(lambda: all(n in self.told for n in names), timeout)
            return {n: list(self.told.get(n, [])) for n in names}


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Broker]:
    """mosquitto with one user, who may write ``allowed/#`` and nothing else."""
    home = tmp_path / "broker"
    home.mkdir()
    passwd, acl = home / "passwd", home / "acl"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), USER, PASSWORD], check=True)
    acl.write_text(f"user {USER}\ntopic write allowed/#\n")
    b = Broker(home)
    b.configure(f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def link(acl_broker: Broker) -> Iterator[Link]:
    lk = connection.open_link(acl_broker.url, "link-test", USER, PASSWORD, window=5)
    yield lk
    lk.close()


def test_a_publish_the_acl_denies_is_failed_one_nobody_reads_is_acknowledged(
    link: Link,
) -> None:
    outcomes = Outcomes()
    link.publish("denied/x", b"refused", False, outcomes.done("denied"))
    link.publish("allowed/x", b"nobody reads", False, outcomes.done("allowed"))
    assert outcomes.wait(["denied", "allowed"]) == {"denied": [False], "allowed": [True]}
    assert link.flush(5) and link.awaiting() == 0


def test_a_publish_failed_for_no_puback_is_told_once_and_its_late_puback_is_ignored(
    acl_broker: Broker, link: Link
) -> None:
    """The broker stopped (SIGSTOP): each publish awaiting its PUBACK is failed once,
    after ``ack_wait_s``, and leaves the window, while paho still holds it under its
    packet id. The broker running again (SIGCONT) answers those ids late: nobody is told
    a second time, the window stays empty (never below), paho lets its copies go, and
    the next publishes are acknowledged as usual."""
    assert acl_broker.proc is not None
    link.ack_wait_s = 1.0
    outcomes = Outcomes()
    acl_broker.proc.send_signal(signal.SIGSTOP)
    try:
        names = [f"stalled-{i}" for i in range(5)]
        for name in names:
            link.publish(f"allowed/{name}", b"x", False, outcomes.done(name))
        assert outcomes.wait(names) == {n: [False] for n in names}
        assert link.awaiting() == 0
        held = len(link.client._out_messages)
        assert held == 5  # paho keeps them, under the ids the broker will answer
    finally:
        acl_broker.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 10
    while link.client._out_messages and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not link.client._out_messages  # the late PUBACKs came, and freed paho's copies
    assert link.awaiting() == 0
    after = [f"after-{i}" for i in range(12)]  # more than the window: it turns over
    for name in after:
        link.publish(f"allowed/{name}", b"x", False, outcomes.done(name))
    assert outcomes.wait(after) == {n: [True] for n in after}
    assert outcomes.wait(names) == {n: [False] for n in names}  # told once, still
    assert link.flush(5) and link.awaiting() == 0


def test_paho_gives_no_unanswered_failed_id_to_a_newer_publish(
    acl_broker: Broker, link: Link
) -> None:
    """Paho numbers publishes 1 to 65,535 and round again, with no check: a publish
    failed for want of its PUBACK, which paho keeps, must not lend its id to a newer one
    (its late PUBACK would settle that one, and paho would drop the one it kept). The
    round trip is taken in a step here: paho's counter set back to where the failed ids
    come next, as 65,535 publishes later."""
    assert acl_broker.proc is not None
    link.ack_wait_s = 1.0
    outcomes = Outcomes()
    paho = link.client
    paho._last_mid = 65530
    acl_broker.proc.send_signal(signal.SIGSTOP)
    try:
        old = [f"old-{i}" for i in range(5)]  # ids 65531 to 65535
        for name in old:
            link.publish(f"allowed/{name}", b"x", False, outcomes.done(name))
        assert outcomes.wait(old) == {n: [False] for n in old}
        kept = set(paho._out_messages)
        assert kept == set(range(65531, 65536))
        link.ack_wait_s = 30.0  # the newer ones are answered, once the broker runs
        paho._last_mid = 65529  # round again: 65530 is free, 65531 to 65535 are kept
        new = [f"new-{i}" for i in range(3)]
        for name in new:
            link.publish(f"allowed/{name}", b"x", False, outcomes.done(name))
        wait_for(lambda: len(paho._out_messages) == 8, 5, "the new publishes written")
        assert set(paho._out_messages) == kept | {65530, 1, 2}
    finally:
        acl_broker.proc.send_signal(signal.SIGCONT)
    assert outcomes.wait(new) == {n: [True] for n in new}
    assert link.flush(5) and link.awaiting() == 0
    wait_for(lambda: not paho._out_messages, 10, "the late PUBACKs")
    assert outcomes.wait(old) == {n: [False] for n in old}  # told once
    assert not link._expired


@pytest.fixture
def service(tmp_path: Path, hq_engine: Engine) -> Iterator[HQ]:
    hq_engine.configure(tmp_path / "home")
    hq = industrial(tmp_path / "home")
    yield hq
    hq.store.close()


def test_the_bridge_counts_what_the_broker_refused(service: HQ, acl_broker: Broker) -> None:
    """The bridge on credentials whose ACL denies the devices' topics: each revocation it
    tells is refused (PUBACK 0x87), and counted as such, not as delivered."""
    lic = service.create_license("industrial", [], None, int(time.time()), ACTOR)
    enroll(service, lic.license_key, 3)
    links: list[Link] = []

    def connect(
        on_message: connection.MessageHandler,
        subscriptions: list[str],
        on_connected: Callable[[], None],
    ) -> Link:
        link = connection.open_link(
            acl_broker.url,
            "link-test",
            USER,
            PASSWORD,
            on_message=on_message,
            subscriptions=subscriptions,
            on_connected=on_connected,
        )
        links.append(link)
        return link

    stop = threading.Event()
    worker = bridge_mod.Bridge(service, topics.DEFAULT_PREFIX)
    thread = threading.Thread(target=bridge_mod.serve, args=(worker, connect, stop), daemon=True)
    thread.start()
    try:
        wait_for(lambda: links and links[0].client.is_connected(), 10, "the bridge to connect")
        service.set_status(lic.id, "suspend", int(time.time()), ACTOR)  # 3 devices to tell
        wait_for(lambda: worker.counts.get("publish_failed", 0) >= 3, 15, "the refusals")
    finally:
        stop.set()
        thread.join(30)
    assert sum(worker.told.values()) == 3
    assert worker.counts == {"publish_failed": 3}


def test_push_counts_what_the_broker_refused_as_failed(service: HQ, acl_broker: Broker) -> None:
    """push on credentials whose ACL denies the devices' topics: every file is refused
    (PUBACK 0x87) and counted failed, none sent."""
    from provisioning.mqtt import push as push_mod

    lic = service.create_license("industrial", [], None, int(time.time()), ACTOR)
    enroll(service, lic.license_key, 3)
    confirmations = push_mod.Confirmations(service)
    link = connection.open_link(acl_broker.url, "link-test", USER, PASSWORD)
    try:
        summary = push_mod.push(
            service,
            link,
            confirmations,
            push_mod.Selection(license_id=lic.id),
            prefix=topics.DEFAULT_PREFIX,
            ttl_s=None,
            wait_s=0,
            now=int(time.time()),
            actor=ACTOR,
        )
    finally:
        link.close()
    assert (summary.selected, summary.sent, summary.failed, summary.pending) == (3, 0, 3, 0)
    assert all("not accepted by the broker" in f for f in summary.failures)
