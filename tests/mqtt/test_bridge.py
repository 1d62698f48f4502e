"""The bridge's decisions in process (HQ's service on a temporary home; no broker)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.daemon import messages, topics
from provisioning.models import Actor, Plan
from provisioning.mqtt import brokerconf, credentials
from provisioning.mqtt.bridge import Bridge
from provisioning.services import HQ
from tests.engines import Engine

ACTOR = Actor("test", "local")
FP = "ab" * 32


@pytest.fixture
def service(tmp_path: Path, hq_engine: Engine) -> Iterator[HQ]:
    hq_engine.configure(tmp_path / "home")
    hq = HQ(tmp_path / "home")
    hq.generate_key(1000, ACTOR)
    hq.create_plan(Plan("industrial", "robot-os", 365 * 86400, 86400, 5, None, 1000), ACTOR)
    yield hq
    hq.store.close()


def _request(serial: int, due: bool) -> bytes:
    return messages.renew_request(serial, 0, due)


def test_bridge_answers_due_requests_and_revokes(service: HQ) -> None:
    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    act = service.activate(lic.license_key, FP, 1000, ACTOR).activation
    clock = [2000]
    bridge = Bridge(service, min_interval_s=60, clock=lambda: clock[0])
    dev = topics.device_id(FP)
    request_topic = topics.topic(topics.DEFAULT_PREFIX, dev, topics.RENEW_REQUEST)
    assert bridge.handle(request_topic, _request(1, False)) == []  # not due: nothing
    out = bridge.handle(request_topic, _request(1, True))
    assert [(t.rsplit("/", 1)[1], r) for t, _, r in out] == [
        ("machine-file", True),
        ("revocation", True),
    ]
    assert out[1][1] == b""  # a stale revocation cleared
    assert bridge.handle(request_topic, _request(2, True)) == []  # rate limited
    assert bridge.counts["rate_limited"] == 1
    service.set_status(lic.id, "suspend", 2100, ACTOR)
    clock[0] = 2200
    out = bridge.handle(request_topic, _request(2, False))
    assert len(out) == 1 and out[0][0].endswith("/revocation") and out[0][1]
    actions = [e.action for e in service.audit(20)]
    assert "renew" in actions and "mqtt_revocation" in actions
    assert act.id


def test_bridge_counts_what_it_cannot_use(service: HQ) -> None:
    bridge = Bridge(service)
    stranger = topics.topic(topics.DEFAULT_PREFIX, topics.device_id("cd" * 32), "renew-request")
    assert bridge.handle(stranger, _request(1, True)) == []
    assert bridge.handle(stranger, b"\xff not json") == []
    assert bridge.handle("elsewhere/topic", b"{}") == []
    assert bridge.counts == {"unknown_device": 1, "malformed_request": 1, "unexpected_topic": 1}


def test_broker_config_files(service: HQ, tmp_path: Path) -> None:
    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    service.activate(lic.license_key, FP, 1000, ACTOR)
    secret = credentials.secret(service.home)
    assert credentials.secret(service.home) == secret  # created once, then kept
    doc = brokerconf.write(tmp_path / "out", secret, service.list_activations(), "fieldpass/v1")
    assert doc["devices"] == 1
    passwd = (tmp_path / "out/passwd").read_text()
    dev = topics.device_id(FP)
    assert passwd.startswith("fieldpass-hq:$") and f"\n{dev}:$" in passwd  # hashed
    assert credentials.password(secret, dev) not in passwd
    acl = (tmp_path / "out/acl").read_text()
    assert "pattern read fieldpass/v1/dev/%u/machine-file" in acl
    assert "pattern write fieldpass/v1/dev/%u/status" in acl
    assert oct((tmp_path / "out/credentials.csv").stat().st_mode & 0o777) == "0o600"


def test_push_selection_narrows_by_each_option(service: HQ) -> None:
    from provisioning.mqtt.push import Selection, select

    service.create_plan(Plan("lab", "robot-os", 30 * 86400, 86400, 5, None, 1000), ACTOR)
    industrial = service.create_license("industrial", [], None, 1000, ACTOR)
    lab = service.create_license("lab", [], None, 1000, ACTOR)
    a = service.activate(industrial.license_key, "a" * 64, 1000, ACTOR).activation
    b = service.activate(industrial.license_key, "b" * 64, 1000, ACTOR).activation
    c = service.activate(lab.license_key, "c" * 64, 1000, ACTOR).activation
    service.deactivate(2000, ACTOR, activation_id=b.id)

    def ids(sel: Selection) -> set[str]:
        return {x.id for x in select(service, sel, 1000)}

    assert ids(Selection(license_id=industrial.id)) == {a.id}  # b is deactivated
    assert ids(Selection(plan="lab")) == {c.id}
    assert ids(Selection(devices=(a.id, "c" * 64))) == {a.id, c.id}
    assert ids(Selection(expiring_within_s=31 * 86400)) == {c.id}  # lab files: 30 days
    assert ids(Selection(plan="industrial", expiring_within_s=31 * 86400)) == set()
