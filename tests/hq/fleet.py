"""A seeded fleet for the console and fleet-view tests, and the figures read back from
the database on their own, to compare what a page says with what is stored.

The fleet is made through HQ's own services in this process, each operation at a time
of the seed's choosing (the services take ``now`` from their caller): a device
activated 350 days ago holds a file that expires in 15 days, as a real one would. No
server clock is moved. Only ``unknown`` needs a row as schema 3 left it (no record of
contact), written with sqlite3 as an old HQ would have.
"""

import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.wire import device_msg
from agent.wire import license_key as lk
from agent.wire.device_key import DeviceKey
from provisioning.models import Actor, Plan, PlanMeter
from provisioning.services import HQ, Contact
from provisioning.services.usage import set_terms

from .conftest import fingerprint

DAY = 86400
WEEK = 7 * DAY
SEED = Actor("cli:seed", "local")
TOKEN_NAME = "ops-alice"


@dataclass
class Fleet:
    """What was seeded: licenses by role, activations by the verdict they were made
    to have, and the admin token to log in with."""

    token: str
    licenses: dict[str, str] = field(default_factory=dict)  # role -> license id
    keys: dict[str, str] = field(default_factory=dict)  # role -> license key
    verdicts: Counter[str] = field(default_factory=Counter)
    sites: dict[str, int] = field(default_factory=dict)
    metered: dict[str, str] = field(default_factory=dict)  # role -> activation id


def seed(home: Path, now: int) -> Fleet:
    """Licenses on plan ``std`` (files valid 365 d, grace 30 d, warning 30 d, 100 seats):

    - ``spread``: 12 valid devices whose files expire 6, 10, 14 ... weeks from now (a
      renewal with a shorter TTL), at site ``north``;
    - ``soon``: 3 devices activated 350 days ago (their files expire in 15 days:
      warning), 2 activated 375 days ago (grace), 2 activated 400 days ago (expired),
      at site ``south``;
    - ``revoked``: 4 devices, then the license revoked;
    - ``old``: 1 device with no record of contact (unknown);
    - ``idle``: no device;
    - ``metered`` (plan ``metered``, ``seed_usage``): devices that report usage, signed
      by their own keys, and two that gave their license back.
    """
    from provisioning.storage import sqlite as engine

    home.mkdir(parents=True, exist_ok=True)
    hq = HQ(home, database=engine.url(home / engine.DB_NAME, synchronous="OFF"))  # a bulk load
    hq.generate_key(now - 500 * DAY, SEED)
    hq.create_plan(Plan("std", "robot", 365 * DAY, 30 * DAY, 100, 30 * DAY, now - 500 * DAY), SEED)
    token, _ = hq.create_token(TOKEN_NAME, now, SEED, 90 * DAY)
    fleet = Fleet(token)
    n = iter(range(1, 10_000))

    def license_of(role: str, created: int) -> str:
        lic = hq.create_license("std", [], None, created, SEED)
        fleet.licenses[role], fleet.keys[role] = lic.id, lic.license_key
        return lic.license_key

    def activate(key: str, at: int) -> str:
        return hq.activate(key, fingerprint(next(n)), at, SEED).activation.id

    spread = license_of("spread", now - 400 * DAY)
    north = []
    for i in range(12):
        act = activate(spread, now)
        hq.renew(now, SEED, activation_id=act, ttl_s=(6 + 4 * i) * WEEK)
        north.append(act)
    fleet.verdicts["valid"] += 12
    soon = license_of("soon", now - 500 * DAY)
    south = []
    for age_days, count, verdict in ((350, 3, "warning"), (375, 2, "grace"), (400, 2, "expired")):
        for _ in range(count):
            south.append(activate(soon, now - age_days * DAY))
        fleet.verdicts[verdict] += count
    hq.assign_site("north", north, set(), now, SEED)
    hq.assign_site("south", south, set(), now, SEED)
    fleet.sites = {"north": len(north), "south": len(south)}
    revoked = license_of("revoked", now - 100 * DAY)
    for _ in range(4):
        activate(revoked, now - 10 * DAY)
    hq.set_status(fleet.licenses["revoked"], "revoke", now - DAY, SEED)
    fleet.verdicts["revoked"] += 4
    old = license_of("old", now - 300 * DAY)
    old_act = activate(old, now - 20 * DAY)
    fleet.verdicts["unknown"] += 1
    license_of("idle", now)
    seed_usage(hq, fleet, now, n)
    hq.store.close()
    conn = sqlite3.connect(home / "hq.sqlite3")
    with conn:
        conn.execute("UPDATE activations SET last_seen_at = NULL WHERE id = ?", (old_act,))
    conn.close()
    return fleet


METERED_TERMS = ("units", PlanMeter("welding", "units", 1000, 30 * DAY), 1)
# role -> the reports it signs: (days ago, via, units); boots and hours grow with them.
REPORTS = {
    "steady": [(15, "http", 100), (5, "mqtt", 400), (1, "laptop", 700)],
    "exhausted": [(10, "air-gapped", 1200)],
    "restored": [(12, "http", 500), (2, "http", 200)],  # a counter lower: a regression
    "returned": [],
    "swapped": [],
}


class SeedDevice:
    """A seeded device with its own key, activated as the agent activates (its key and
    the claims it reads in the request), signing what it reports as the agent does
    (agent/wire/device_msg.py)."""

    def __init__(self, hq: HQ, license_key: str, fp: str, at: int) -> None:
        self.hq = hq
        self.key = DeviceKey.generate()
        contact = Contact("http", "seed", 2, self.key.public_key)
        self.act = hq.activate(license_key, fp, at, SEED, contact).activation

    def sign(self, kind: str, at: int, **values: object) -> bytes:
        return device_msg.sign(
            self.key,
            kind,
            {"activation_id": self.act.id, "fingerprint": self.act.fingerprint, "at": at,
             "agent_version": "seed", "device_key": None, "proof": None, **values},
        )  # fmt: skip

    def report(self, seq: int, at: int, via: str, units: int) -> None:
        counters = {"boots": 3 * seq, "operating_s": 3600 * seq, "units": units}
        data = self.sign("report", at, seq=seq, counters=counters, challenge=None)
        self.hq.usage.accept_report(data, at, via, SEED)

    def give_back(self, at: int, via: str, override: str | None = None) -> None:
        data = self.sign("receipt", at, serial=self.act.serial, returned_at=at, reason="returned")
        self.hq.usage.accept_receipt(data, at, via, SEED, override=override)


def seed_usage(hq: HQ, fleet: Fleet, now: int, n: Iterator[int]) -> None:
    """License ``metered`` on plan ``metered`` (counter ``units``; ``welding`` metered at
    1,000 units per 30 days; one return a year), 5 devices activated 20 days ago: one
    reporting over HTTP, MQTT and a laptop, one past its meter, one whose report
    regressed, one returned, one returned past the plan's limit by an override."""
    counter, meter, returns = METERED_TERMS
    created = now - 20 * DAY
    hq.create_plan(Plan("metered", "robot", 365 * DAY, 30 * DAY, 10, 30 * DAY, created), SEED)
    set_terms(hq.store, "metered", [counter], [meter], returns, created, SEED)
    lic = hq.create_license("metered", [], None, created, SEED)
    fleet.licenses["metered"], fleet.keys["metered"] = lic.id, lic.license_key
    for role, reports in REPORTS.items():
        device = SeedDevice(hq, lic.license_key, fingerprint(next(n)), created)
        fleet.metered[role] = device.act.id
        for seq, (days, via, units) in enumerate(reports, start=1):
            device.report(seq, now - days * DAY, via, units)
        if role == "returned":
            device.give_back(now - 3 * DAY, "laptop")
        elif role == "swapped":
            device.give_back(now - 2 * DAY, "http", override="mainboard swap, ticket 42")
    fleet.verdicts["valid"] += len(REPORTS)


def stored(home: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Rows read straight from the database file (a second reader of its WAL)."""
    conn = sqlite3.connect(home / "hq.sqlite3")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def live_expiries(home: Path) -> list[int]:
    rows = stored(home, "SELECT last_expires_at FROM activations WHERE deactivated_at IS NULL")
    return [int(r[0]) for r in rows]  # type: ignore[call-overload]


def is_license_key(text: str) -> bool:
    try:
        lk.normalize(text)
    except ValueError:
        return False
    return True


def bulk(home: Path, count: int, now: int | None = None) -> tuple[str, int]:
    """``count`` more live devices on one license (its own seat limit), for the pages'
    and the benchmark's large fleet; written with synchronous=OFF, as a bulk load."""
    import time

    from provisioning.storage import sqlite as engine

    t = int(time.time()) if now is None else now
    hq = HQ(home, database=engine.url(home / engine.DB_NAME, synchronous="OFF"))
    lic = hq.create_license("std", [], None, t, SEED)
    hq.set_license_seats(lic.id, count, t, SEED)
    for i in range(count):
        # Files spread over the year, as a fleet renewed at different times has them.
        at = t - (i * 7919) % (300 * DAY)
        hq.activate(lic.license_key, fingerprint(1_000_000 + i), at, SEED)
    hq.store.close()
    return lic.id, count
