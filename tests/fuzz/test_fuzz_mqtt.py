"""Hostile MQTT payloads through a real mosquitto to a real `fieldpass run`: on the
machine-file and revocation topics (retained and not), the daemon counts and ignores
everything it cannot verify, keeps running, and takes the one valid newer file sent
after them all (which also proves every earlier message was handled: one publisher's
messages on a topic arrive in order)."""

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.daemon import topics
from agent.wire import armor
from agent.wire.revocation import Revocation, sign_revocation
from tests.fuzz.conftest import Provisioned, fuzz
from tests.fuzz.strategies import armored, hostile_file, mutated, well_formed_cbor
from tests.mqtt.conftest import Broker, Client, Daemon, mqtt_config, wait_for


class Site:
    def __init__(self, base: Path) -> None:
        self.broker = Broker(base / "broker")
        self.broker.start()
        self.p = Provisioned(base)
        self.p.device.write_config(mqtt_config(self.broker))
        self.daemon = Daemon(self.p.device)
        self.daemon.start()
        self.daemon.wait_log("state CONNECTING -> CONNECTED", 20)
        self.client = Client(self.broker)

    def topic(self, kind: str) -> str:
        dev = topics.device_id(self.p.device.fingerprint)
        return topics.topic(topics.DEFAULT_PREFIX, dev, kind)

    def close(self) -> None:
        self.client.close()
        if self.daemon.running():
            self.daemon.stop(signal.SIGKILL)
        self.broker.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("fuzz-mqtt"))
    yield s
    s.close()


@fuzz(300)
@given(data=st.data())
def test_hostile_payloads_are_counted_never_fatal(site: Site, data: st.DataObject) -> None:
    p = site.p
    foreign = sign_revocation(p.signer.key, Revocation("act_other", 1, "revoked"))
    kind = data.draw(st.sampled_from([topics.MACHINE_FILE, topics.REVOCATION]))
    payload = data.draw(
        hostile_file(p.data)
        | mutated(foreign)
        | armored(well_formed_cbor())
        | st.just(armor.armor(foreign, armor.REVOCATION).encode())
        | st.binary(min_size=64 * 1024, max_size=70 * 1024)  # over max_payload_bytes
    )
    site.client.publish(site.topic(kind), payload, retain=data.draw(st.booleans()))
    assert site.daemon.running(), site.daemon.text()


def test_after_them_all_the_daemon_runs_and_takes_a_valid_newer_file(site: Site) -> None:
    p = site.p
    newer = p.signer.issue(p.device.fingerprint, serial=3)
    site.client.publish(site.topic(topics.MACHINE_FILE), newer, retain=True)
    wait_for(lambda: p.device.machine_file.read_bytes() == newer, 30, "the valid newer file")
    assert site.daemon.running()
    assert site.daemon.stop() == 0
    log = site.daemon.text()
    assert "Traceback" not in log and "bug:" not in log, log
    assert "ignored bad messages:" in log
    installed = [line for line in log.splitlines() if "installed machine file serial" in line]
    assert len(installed) == 1 and installed[0].endswith("serial 3"), installed  # only it
    assert "revocation for this device was recorded" not in log
    assert p.device.check().returncode == 0
    assert p.device.verdict()["serial"] == 3
