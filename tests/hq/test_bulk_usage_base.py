"""Bulk issuance (``renew_all``: ``push`` on a whole license, field bundles) reads the
newest usage report of every device in one read for the license, not one per device:
each file's meter still starts from the counter HQ last accepted from that device."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning.models import Actor, Plan, PlanMeter
from provisioning.services import HQ
from provisioning.services.usage import set_terms
from tests.engines import Engine
from tests.mqtt.simdevices import enroll

ACTOR = Actor("test", "local")
DAY = 86400


@pytest.fixture
def service(tmp_path: Path, hq_engine: Engine) -> Iterator[HQ]:
    hq_engine.configure(tmp_path / "home")
    hq = HQ(tmp_path / "home")
    yield hq
    hq.store.close()


def test_each_bulk_file_starts_its_meter_from_that_devices_newest_report(service: HQ) -> None:
    now = int(time.time())
    service.generate_key(now, ACTOR)
    service.create_plan(Plan("industrial", "robot-os", 365 * DAY, DAY, 10, None, now), ACTOR)
    meter = PlanMeter("welding", "units", 100, 30 * DAY)
    set_terms(service.store, "industrial", ["units"], [meter], None, now, ACTOR)
    lic = service.create_license("industrial", [], None, now, ACTOR)
    sims = enroll(service, lic.license_key, 5, now)
    reported = {0: [(1, 10), (2, 40)], 1: [(1, 7)], 3: [(4, 99)]}  # device -> (seq, units)
    for index, reports in reported.items():
        for seq, units in reports:
            report = sims[index].report(seq, {"units": units})
            service.usage.accept_report(report, now, "test", ACTOR)

    later = now + 31 * DAY  # the next period: its base is fixed by this renewal
    issued = {i.activation.id: i for i in service.issuing.renew_all(lic.id, None, later, ACTOR)}

    assert set(issued) == {s.activation_id for s in sims}
    bases = [[m.base for m in issued[s.activation_id].claims.meters] for s in sims]
    assert bases == [[40], [7], [0], [99], [0]]
    assert all(i.claims.serial == 2 for i in issued.values())
