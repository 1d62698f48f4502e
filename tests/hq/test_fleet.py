"""The fleet views and the changes to what a plan or a license grants: the services
(services/fleet.py, services/terms.py) against a seeded home, the CLI views that have no
side effect (``activations list``, ``licenses list``), and the read API over real HTTP
(server/fleet.py), paging included. The verdict HQ shows is the agent's own rule
(tests/hq/test_verdicts.py)."""

import json
import time
from pathlib import Path

import httpx
import pytest

from provisioning.errors import Conflict, InvalidRequest, SeatLimitReached
from provisioning.models import Actor
from provisioning.services import HQ
from provisioning.services.terms import PlanChange
from provisioning.storage.views import ACTIVATION_SORTS

from . import fleet
from .conftest import Run, fingerprint
from .server import start_server

NOW = int(time.time())
DAY = fleet.DAY
ME = Actor("cli:test", "local")


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[HQ, fleet.Fleet]:
    home = tmp_path / "hq"
    world = fleet.seed(home, NOW)
    return HQ(home), world


def test_activation_filters_match_the_rows_and_pages_add_up(seeded: tuple[HQ, fleet.Fleet]) -> None:
    hq, world = seeded
    every = hq.list_activations()
    live = [a for a in every if a.deactivated_at is None]
    assert hq.fleet.activations(NOW).total == len(live) == sum(world.verdicts.values())
    soon = hq.fleet.activations(NOW, expiring_within_s=30 * DAY)
    assert {d.row.activation.id for d in soon.items} == {
        a.id for a in live if a.last_expires_at <= NOW + 30 * DAY
    }
    assert {d.verdict for d in soon.items} == {"warning", "grace", "expired"}
    north = hq.fleet.activations(NOW, site="north")
    assert north.total == world.sites["north"] and {d.row.site for d in north.items} == {"north"}
    one = hq.fleet.activations(NOW, license_id=world.licenses["revoked"])
    assert one.total == 4 and {d.verdict for d in one.items} == {"revoked"}
    assert hq.fleet.activations(NOW, plan="nope").total == 0
    for sort in ACTIVATION_SORTS:
        for descending in (False, True):
            whole = hq.fleet.activations(NOW, sort=sort, descending=descending)
            pages, offset = [], 0
            while True:
                page = hq.fleet.activations(
                    NOW, sort=sort, descending=descending, limit=7, offset=offset
                )
                pages += [d.row.activation.id for d in page.items]
                if page.next_offset is None:
                    break
                offset = page.next_offset
            assert pages == [d.row.activation.id for d in whole.items], sort
    expires = [d.row.activation.last_expires_at for d in hq.fleet.activations(NOW).items]
    assert expires == sorted(expires)
    with pytest.raises(InvalidRequest):
        hq.fleet.activations(NOW, sort="fingerprint; DROP TABLE audit")
    with pytest.raises(InvalidRequest):
        hq.fleet.activations(NOW, limit=0)


def test_license_summaries(seeded: tuple[HQ, fleet.Fleet]) -> None:
    hq, world = seeded
    by_id = {s.license.id: s for s in hq.fleet.licenses(NOW).items}
    assert set(by_id) == set(world.licenses.values())
    soon = by_id[world.licenses["soon"]]
    assert (soon.license.seats_used, soon.seat_limit) == (7, 100)
    assert soon.first_file_expires_at == min(
        a.last_expires_at for a in hq.list_activations(world.licenses["soon"])
    )
    assert by_id[world.licenses["idle"]].first_file_expires_at is None
    revoked = hq.fleet.licenses(NOW, status="revoked").items
    assert [s.license.id for s in revoked] == [world.licenses["revoked"]]
    at_south = hq.fleet.licenses(NOW, site="south").items
    assert [s.license.id for s in at_south] == [world.licenses["soon"]]
    within = {s.license.id for s in hq.fleet.licenses(NOW, expiring_within_s=60 * DAY).items}
    assert within == {world.licenses["spread"], world.licenses["soon"]}
    firsts = [s.first_file_expires_at for s in hq.fleet.licenses(NOW, sort="first_expiry").items]
    assert firsts[-1] is None  # no device: last either way
    assert [f for f in firsts if f is not None] == sorted(f for f in firsts if f is not None)


def test_a_license_of_its_own_seat_limit(home: Path, hq: Run, license_key: str) -> None:
    service = HQ(home)
    lid = hq("licenses", "list", "--json").json()[0]["id"]
    for n in (1, 2):
        hq("activate", license_key, "--fingerprint", fingerprint(n))
    with pytest.raises(SeatLimitReached):  # the plan's 2 seats
        service.activate(license_key, fingerprint(3), NOW, ME)
    res = hq("licenses", "seats", lid, "3", "--json")
    assert res.code == 0 and res.json() == {
        "id": lid, "seats_own": 3, "seats_limit": 3, "seats_used": 2, "plan_seats": 2
    }  # fmt: skip
    service.activate(license_key, fingerprint(3), NOW, ME)  # the third seat
    with pytest.raises(SeatLimitReached):
        service.activate(license_key, fingerprint(4), NOW, ME)
    with pytest.raises(Conflict, match="3 seats in use"):
        service.set_license_seats(lid, 2, NOW, ME)
    with pytest.raises(Conflict):
        service.set_license_seats(lid, None, NOW, ME)  # the plan's 2 < 3 in use
    assert hq("licenses", "seats", lid, "plan").code == 1
    listed = hq("licenses", "list").out
    assert "3/3" in listed
    audit = hq("audit", "--json").json()
    assert [e["detail"] for e in audit if e["action"] == "license_seats"] == [
        "seats=3 limit=3 (plan std: 2)"
    ]


def test_plans_update_applies_to_files_issued_from_then_on(
    home: Path, hq: Run, license_key: str
) -> None:
    first = hq("activate", license_key, "--fingerprint", fingerprint(1), "--json").json()
    assert first["expires_at"] - first["issued_at"] == 365 * DAY
    res = hq("plans", "update", "std", "--offline-ttl", "90d", "--grace", "7d", "--warn", "14d")
    assert res.code == 0, res.err
    renewed = hq("machine-file", first["activation_id"], "--json").json()
    assert renewed["expires_at"] - renewed["issued_at"] == 90 * DAY
    assert (renewed["grace_s"], renewed["warn_s"]) == (7 * DAY, 14 * DAY)
    assert hq("plans", "update", "std", "--warn", "default").code == 0
    assert hq("plans", "list", "--json").json()[0]["warn_s"] is None
    hq("activate", license_key, "--fingerprint", fingerprint(2))
    refused = hq("plans", "update", "std", "--seats", "1")
    assert refused.code == 1 and "use more than 1 seats" in refused.err
    assert hq("plans", "update", "std", "--seats", "4").code == 0
    details = [e["detail"] for e in hq("audit", "--json").json() if e["action"] == "plan_update"]
    assert details == [
        "plan=std offline_ttl=365d->90d grace=30d->7d warn=ttl/3->14d",
        "plan=std warn=14d->ttl/3",
        "plan=std seats=2->4",
    ]
    assert hq("plans", "update", "std", "--seats", "4").code == 0  # no change, no event
    assert len([e for e in hq("audit", "--json").json() if e["action"] == "plan_update"]) == 3
    with pytest.raises(InvalidRequest):
        HQ(home).update_plan("std", PlanChange(warn_s=DAY, warn_default=True), NOW, ME)


def test_activations_list_reads_and_renews_nothing(home: Path, hq: Run, license_key: str) -> None:
    act = hq("activate", license_key, "--fingerprint", fingerprint(1), "--json").json()
    hq("activate", license_key, "--fingerprint", fingerprint(2))
    before = hq("audit", "--json").json()
    assert hq("activations", "list", "--expiring-within", "30d", "--json").json() == []
    everyone = hq("activations", "list", "--expiring-within", "400d", "--json").json()
    assert len(everyone) == 2 and hq("audit", "--json").json() == before  # no side effect
    doc = next(d for d in everyone if d["activation_id"] == act["activation_id"])
    assert doc["verdict"] == "valid" and doc["plan"] == "std" and doc["site"] is None
    assert doc["last_expires_at_iso"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(doc["last_expires_at"])
    )
    assert doc["serial"] == 1
    text = hq("activations", "list").out
    assert act["activation_id"] in text and "valid" in text
    hq("deactivate", act["activation_id"])
    assert len(hq("activations", "list", "--json").json()) == 1
    assert len(hq("activations", "list", "--all", "--json").json()) == 2
    paged = hq("activations", "list", "--all", "--limit", "1")
    assert "(1 of 2: --offset 1)" in paged.out


def test_keys_rotate_in_two_phases(home: Path, hq: Run, license_key: str) -> None:
    old = hq("keys", "list", "--json").json()[0]["kid"]
    new = hq("keys", "generate", "--standby", "--json").json()
    assert new["active"] is False
    exported = hq("keys", "export", "--json").json()
    assert new["kid"] in json.dumps(exported)  # published for the next images
    first = hq("activate", license_key, "--fingerprint", fingerprint(1), "--json").json()
    assert first["kid"] == old  # devices are not handed a key they may not know yet
    assert hq("keys", "activate", new["kid"]).code == 0
    second = hq("machine-file", first["activation_id"], "--json").json()
    assert second["kid"] == new["kid"]
    assert hq("keys", "activate", new["kid"]).code == 1  # it signs already
    assert hq("keys", "retire", old).code == 0
    assert hq("keys", "activate", old).code == 1  # a retired key never signs again
    fresh = tmp_home_without_key(home.parent / "fresh")
    assert fresh("keys", "generate", "--standby").code == 1  # the first key signs at once


def tmp_home_without_key(path: Path) -> Run:
    from provisioning.cli import main

    from .conftest import Result

    def run(*args: str) -> Result:
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--home", str(path), *args])
        return Result(code, out.getvalue(), err.getvalue())

    return run


def test_the_read_api(tmp_path: Path) -> None:
    home = tmp_path / "hq"
    world = fleet.seed(home, NOW)
    server = start_server(home)
    admin = {"Authorization": f"Bearer {world.token}"}

    def get(path: str, **params: str) -> httpx.Response:
        return httpx.get(server.url + path, params=params, headers=admin, timeout=30)

    try:
        total = sum(world.verdicts.values())
        page = get("/v1/activations", limit="10")
        assert page.status_code == 200 and len(page.json()) == 10
        assert page.headers["x-total-count"] == str(total)
        assert page.headers["link"] == '</v1/activations?limit=10&offset=10>; rel="next"'
        seen = [d["activation_id"] for d in page.json()]
        while "link" in page.headers:
            nxt = page.headers["link"].split(">")[0][1:]
            page = httpx.get(server.url + nxt, headers=admin, timeout=30)
            seen += [d["activation_id"] for d in page.json()]
        assert len(seen) == len(set(seen)) == total
        everything = get("/v1/activations").json()  # no limit: all, as before paging
        assert [d["activation_id"] for d in everything] == seen
        soon = get("/v1/activations", expiring_within="30d", site="south").json()
        assert {d["verdict"] for d in soon} == {"warning", "grace", "expired"}
        assert all(d["last_expires_at_iso"].endswith("Z") for d in soon)
        expired_only = get("/v1/activations", expiring_within="0", site="south").json()
        assert {d["verdict"] for d in expired_only} <= {"grace", "expired"} and expired_only
        assert get("/v1/activations", expiring_within="0x").status_code == 422
        assert get("/v1/activations", sort="nope").status_code == 422
        licenses = {d["id"]: d for d in get("/v1/licenses").json()}
        assert licenses[world.licenses["soon"]]["seats_limit"] == 100
        assert "key" not in json.dumps(list(licenses.values())).replace('"key_', "")
        expired = get("/v1/licenses", expiring_within="60d").json()
        assert {d["id"] for d in expired} == {world.licenses["spread"], world.licenses["soon"]}
        overview = get("/v1/fleet/overview").json()
        assert len(overview["weeks"]) == 52
        expected = dict.fromkeys(["valid", "warning", "grace", "expired", "revoked", "unknown"], 0)
        assert overview["verdicts"] == {**expected, **world.verdicts}
        assert overview["devices"] == total and overview["not_heard_from"] == 8
        sites = get("/v1/sites").json()
        assert [(s["site"], s["devices"]) for s in sites] == sorted(world.sites.items())
        revokes = get("/v1/audit", action="revoke", actor="seed").json()
        assert [e["license_id"] for e in revokes] == [world.licenses["revoked"]]
        newest = get("/v1/audit", limit="3").json()
        assert [e["id"] for e in newest] == sorted(e["id"] for e in newest)  # oldest first
        patched = httpx.patch(
            server.url + "/v1/plans/std", json={"seats": 120, "warn_s": None}, headers=admin
        )
        assert patched.status_code == 200 and patched.json()["seats"] == 120
        assert patched.json()["warn_s"] is None
        kept = httpx.patch(server.url + "/v1/plans/std", json={"grace_s": 0}, headers=admin)
        assert kept.json()["seats"] == 120 and kept.json()["grace_s"] == 0
        seats = httpx.put(
            server.url + f"/v1/licenses/{world.licenses['soon']}/seats",
            json={"seats": 8},
            headers=admin,
        )
        assert seats.status_code == 200 and seats.json()["seats_limit"] == 8
        too_few = httpx.put(
            server.url + f"/v1/licenses/{world.licenses['soon']}/seats",
            json={"seats": 6},
            headers=admin,
        )
        assert too_few.status_code == 409 and too_few.json()["error"]["code"] == "conflict"
        assert httpx.get(server.url + "/v1/activations", timeout=10).status_code == 401
    finally:
        server.stop()
