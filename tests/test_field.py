"""The technician's laptop: field export at HQ, field serve on site over the devices'
own HTTP path, field import back at HQ; and the 365-day robot acceptance story, with
the clocks of HQ, laptop and robot all moved by libfaketime."""

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import HQ, DeviceRoot
from tests.laptop import laptop
from tests.mqtt.test_compat_agent_0_1_0 import old as old_fieldpass
from tests.mqtt.test_compat_agent_0_1_0 import old_agent  # noqa: F401 - a fixture


def on_site(device: DeviceRoot, url: str) -> None:
    """The device's config: HQ (unreachable from the site) first, then the laptop."""
    device.write_config(
        f'[online]\nserver = "http://127.0.0.1:9"\nservers = ["{url}"]\ntimeout_s = 2\n'
    )


def activated_fleet(
    hq: HQ, make_device: Callable[..., DeviceRoot], n: int, tmp: Path
) -> tuple[str, list[DeviceRoot]]:
    key = hq.setup(seats=n + 1)
    fleet = []
    for i in range(n):
        robot = make_device()
        hq.image(robot)
        hq.run(
            "provision",
            key,
            "--fingerprint",
            robot.fingerprint,
            "--root",
            str(robot.path),
            "--name",
            f"robot-{i}",
        )
        assert robot.check().returncode == 0
        fleet.append(robot)
    return key, fleet


def test_export_serve_import(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    key, fleet = activated_fleet(hq, make_device, 3, tmp_path)
    license_id = str(hq.json("licenses", "show", key)["id"])
    bundle, report = tmp_path / "site.bundle", tmp_path / "site.report"
    hq.run("field", "export", "--license", license_id, "-o", str(bundle))
    text = bundle.read_text()
    assert key not in text  # nothing secret, nothing that activates
    assert len(json.loads(text)["devices"]) == 3
    with laptop(bundle, report) as lp:
        for robot in fleet[:2]:
            on_site(robot, lp.url)
            renewed = robot.run("refresh")
            assert renewed.returncode == 0, renewed.stderr
            assert robot.check().returncode == 0
            assert robot.verdict()["serial"] == 2  # 1: provisioned; 2: the bundle
        stranger = make_device()
        on_site(stranger, lp.url)
        refused = stranger.run("activate", key)
        assert refused.returncode == 77 and "not_available_in_the_field" in refused.stderr
        fleet[2].write_config('[online]\nserver = "http://127.0.0.1:9"\ntimeout_s = 2\n')
        assert fleet[2].run("check", "--online").returncode == 0  # offline fallback
    assert "2 of 3 device(s) picked up their renewal or revocation" in lp.stdout
    doc = json.loads(report.read_text())
    assert len(doc["pickups"]) == 2 and len(doc["not_picked_up"]) == 1
    imported = hq.run("field", "import", str(report))
    assert "recorded 2 pickup(s)" in imported.stdout
    audit = hq.json("audit", "--limit", "1000")
    events = audit if isinstance(audit, list) else audit.get("events", [])
    assert sum(1 for e in events if e["action"] == "field_pickup") == 2
    again = hq.run("field", "import", str(report), check=False)
    assert again.returncode != 0 and "imported already" in again.stderr


def test_a_wrong_license_key_gets_nothing_from_the_laptop(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    activated_fleet(hq, make_device, 1, tmp_path)
    bundle, report = tmp_path / "b", tmp_path / "r"
    hq.run("field", "export", "--all", "-o", str(bundle))
    with laptop(bundle, report) as lp:
        entry = json.loads(bundle.read_text())["devices"][0]
        answer = httpx.post(
            lp.url + "/v1/machine-file",
            json={
                "license_key": "FP-ABCDE-FGHJK-LMNPQ-RSTUV-WXYZ2",
                "fingerprint": entry["fingerprint"],
            },
        )
        assert answer.status_code == 403
        assert httpx.post(lp.url + "/v1/machine-file", content=b"{").status_code == 400
        assert httpx.post(lp.url + "/v1/machine-file", content=b"x" * 100_000).status_code == 413


def test_the_365_day_robot(hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path) -> None:
    """Provisioned at the factory, offline for months, warned at day 300, renewed by a
    technician's laptop over the local link on day 330, valid for another year."""
    key = hq.setup(ttl="365d", grace="30d", warn="90d")
    robot = make_device()
    hq.run("provision", key, "--fingerprint", robot.fingerprint, "--root", str(robot.path))
    assert robot.check().returncode == 0
    for day in (30, 120, 180):
        assert robot.check(faketime=f"+{day}d").returncode == 0
    day300 = robot.check(faketime="+300d")
    assert day300.returncode == 0
    assert "expires in 65 days" in day300.stdout
    bundle, report = tmp_path / "site.bundle", tmp_path / "site.report"
    hq.run("field", "export", "--expiring-within", "60d", "-o", str(bundle), faketime="+330d")
    with laptop(bundle, report, faketime="+330d") as lp:
        on_site(robot, lp.url)
        assert robot.run("refresh", faketime="+330d").returncode == 0
    renewed = robot.check(faketime="+330d")
    assert renewed.returncode == 0 and "(365 days left)" in renewed.stdout
    assert robot.check(faketime="+600d").returncode == 0  # well past the first year
    hq.run("field", "import", str(report), faketime="+331d")


def test_a_revoked_license_reaches_a_device_through_the_laptop(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    """The device takes HQ's signed revocation and confirms it with its signed status;
    a revocation handed to an anonymous request is nobody's pickup."""
    key, (robot, other) = activated_fleet(hq, make_device, 2, tmp_path)
    hq.run("licenses", "revoke", str(hq.json("licenses", "show", key)["id"]), "--yes")
    bundle, report = tmp_path / "site.bundle", tmp_path / "site.report"
    exported = hq.run("field", "export", "--all", "-o", str(bundle))
    assert "0 renewed machine file(s), 2 signed revocation(s)" in exported.stdout
    ids = {
        e["fingerprint"]: e["activation_id"] for e in json.loads(bundle.read_text())["revocations"]
    }
    with laptop(bundle, report) as lp:
        on_site(robot, lp.url)
        result = robot.run("check", "--online")
        assert result.returncode == 32, result.stdout + result.stderr
        refresh = robot.run("refresh")  # nothing to renew from the bundle: HQ's refusal
        assert refresh.returncode == 77 and "license_revoked" in refresh.stderr
        anonymous = httpx.post(lp.url + "/v1/validate", json={"fingerprint": other.fingerprint})
        assert anonymous.status_code == 200 and "revocation" in anonymous.json()
    assert f"picked up: revocation of {ids[robot.fingerprint]}" in lp.stdout
    assert "Traceback" not in lp.stderr, lp.stderr
    robot.write_config("")
    assert robot.check().returncode == 32  # kept offline
    done = json.loads(report.read_text())
    assert [(p["activation_id"], p["what"]) for p in done["pickups"]] == [
        (ids[robot.fingerprint], "revocation")
    ]
    assert done["served_unconfirmed"] == [] and done["not_picked_up"] == []
    assert done["unidentified_revocation_requests"] == [ids[other.fingerprint]]
    imported = hq.run("field", "import", str(report), "--json")
    assert json.loads(imported.stdout)["pickups"] == 1
    assert [e["activation_id"] for e in audit_events(hq, "field_pickup")] == [
        ids[robot.fingerprint]
    ]


def test_a_revocation_carried_by_hand(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    key, fleet = activated_fleet(hq, make_device, 2, tmp_path)
    robot, other = fleet
    hq.run("licenses", "suspend", str(hq.json("licenses", "show", key)["id"]))
    bundle = tmp_path / "b"
    hq.run("field", "export", "--all", "-o", str(bundle))
    entries = {e["fingerprint"]: e for e in json.loads(bundle.read_text())["revocations"]}
    carried = tmp_path / "revocation.txt"
    carried.write_text(entries[robot.fingerprint]["revocation"])
    foreign = other.run("install", str(carried))
    assert foreign.returncode == 31  # names another device's activation
    assert other.check().returncode == 0
    taken = robot.run("install", str(carried))
    assert taken.returncode == 0, taken.stderr
    assert robot.check().returncode == 32
    forged = carried.read_text().replace("A", "B", 1)
    carried.write_text(forged)
    assert other.run("install", str(carried)).returncode == 31


def test_a_bundle_for_one_site(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    key, fleet = activated_fleet(hq, make_device, 3, tmp_path)

    def doc(*args: str) -> Any:
        return json.loads(hq.run(*args, "--json").stdout)

    site_list = tmp_path / "site-7.txt"
    site_list.write_text(f"# robots at site 7\n{fleet[0].fingerprint}\n\n{fleet[1].fingerprint}\n")
    assert (
        len(doc("sites", "assign", "site-7", "--fingerprints", str(site_list))["activation_ids"])
        == 2
    )
    act_ids = {
        a["fingerprint"]: a["activation_id"] for a in doc("licenses", "show", key)["activations"]
    }
    moved = hq.run("sites", "assign", "mine-north", act_ids[fleet[2].fingerprint])
    assert "field export --site mine-north" in moved.stdout  # what to do next
    sites = [{"site": "mine-north", "devices": 1}, {"site": "site-7", "devices": 2}]

    def site_counts() -> list[dict[str, object]]:  # `sites list` says more (expiries)
        return [{k: s[k] for k in ("site", "devices")} for s in doc("sites", "list")]

    assert site_counts() == sites

    # a list naming an unknown device is refused whole: nobody moves
    unknown = tmp_path / "unknown.txt"
    unknown.write_text(f"{fleet[2].fingerprint}\n{'e' * 64}\n")
    refused = hq.run("sites", "assign", "site-7", "--fingerprints", str(unknown), check=False)
    assert refused.returncode != 0 and "no live activation" in refused.stderr
    assert site_counts() == sites

    bundle = tmp_path / "site-7.bundle"
    hq.run("field", "export", "--site", "site-7", "-o", str(bundle))
    devices = json.loads(bundle.read_text())["devices"]
    assert {d["fingerprint"] for d in devices} == {fleet[0].fingerprint, fleet[1].fingerprint}
    events = doc("audit", "--limit", "1000")
    assert [e["detail"] for e in events if e["action"] == "site_assign"].count("site-7") == 2


def audit_events(hq: HQ, action: str) -> list[dict[str, Any]]:
    events = hq.json("audit", "--limit", "10000")
    listed = events if isinstance(events, list) else events.get("events", [])
    return [e for e in listed if e["action"] == action]


def test_the_report_holds_what_the_devices_confirmed(
    hq: HQ,
    make_device: Callable[..., DeviceRoot],
    tmp_path: Path,
    old_agent: Path,  # noqa: F811 - the fixture imported above
) -> None:
    """A pickup is the device's signed status after its install, with the serial the
    device holds: not a file served (one refused, one taken by an agent of 0.1.0 that
    cannot sign), not the serial the bundle claims. HQ verifies each status at import."""
    key, fleet = activated_fleet(hq, make_device, 3, tmp_path)
    old = make_device()
    hq.image(old)
    machine, key_file = tmp_path / "old.machine", tmp_path / "key.txt"
    hq.run("activate", key, "--fingerprint", old.fingerprint, "-o", str(machine))
    key_file.write_text(key + "\n")
    assert old_fieldpass(old_agent, old, "install", str(machine), "--license-key-file",
                         str(key_file)).returncode == 0  # fmt: skip
    bundle, report = tmp_path / "site.bundle", tmp_path / "site.report"
    hq.run("field", "export", "--license", str(hq.json("licenses", "show", key)["id"]),
           "-o", str(bundle))  # fmt: skip
    doc = json.loads(bundle.read_text())
    entries = {e["fingerprint"]: e for e in doc["devices"]}
    # fleet[1] is offered fleet[0]'s file, which it refuses; fleet[2]'s entry says less
    # than the file it carries (the device's own word is what counts)
    entries[fleet[1].fingerprint]["machine_file"] = entries[fleet[0].fingerprint]["machine_file"]
    entries[fleet[2].fingerprint]["serial"] = 1
    bundle.write_text(json.dumps(doc))
    with laptop(bundle, report) as lp:
        for robot in fleet:
            on_site(robot, lp.url)
        assert fleet[0].run("refresh").returncode == 0
        assert fleet[1].run("refresh").returncode == 31  # another device's file
        assert fleet[2].run("refresh").returncode == 0
        renewed = old_fieldpass(old_agent, old, "refresh", "--server", lp.url)
        assert renewed.returncode == 0, renewed.stderr
    assert "Traceback" not in lp.stderr, lp.stderr
    assert "2 of 4 device(s) picked up" in lp.stdout and "2 more served, unconfirmed" in lp.stdout
    done = json.loads(report.read_text())
    confirmed = {p["fingerprint"]: p["serial"] for p in done["pickups"]}
    assert confirmed == {fleet[0].fingerprint: 2, fleet[2].fingerprint: 2}
    unconfirmed = {p["fingerprint"]: p["agent_version"] for p in done["served_unconfirmed"]}
    assert set(unconfirmed) == {fleet[1].fingerprint, old.fingerprint}
    assert unconfirmed[old.fingerprint] == "0.1.0"
    imported = hq.run("field", "import", str(report))
    assert "recorded 2 pickup(s) confirmed by the devices and 2 served, unconfirmed" in (
        imported.stdout
    )
    pickups = audit_events(hq, "field_pickup")
    assert (
        sorted(e["detail"].split(" status=")[0] for e in pickups)
        == ["machine_file serial=2 via=http confirmed"] * 2
    )
    assert len(audit_events(hq, "field_served")) == 2
    # the statuses registered the devices' keys (HQ had none: provisioned by fingerprint)
    assert len(audit_events(hq, "device_key_register")) == 2
    # the same report, spaced and ordered otherwise, is the same report
    report.write_text(json.dumps(done, indent=4, sort_keys=False))
    again = hq.run("field", "import", str(report), check=False)
    assert again.returncode == 1 and "imported already" in again.stderr
    assert len(audit_events(hq, "field_pickup")) == 2


def test_a_pickup_tells_hq_which_keys_the_device_trusts(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    """A device seen only by the laptop: its signed status names its keyring, and HQ
    records it at import as it does over HTTP, so that `keys list` counts it and
    `keys retire` knows which devices a key would strand."""
    key, (robot, other) = activated_fleet(hq, make_device, 2, tmp_path)
    (old,) = [k["kid"] for k in hq.json("keys", "list")]  # type: ignore[union-attr, index]
    new = str(hq.json("keys", "generate", "--standby")["kid"])
    hq.image(robot)  # its image updated on site: it trusts both keys now
    bundle, report = tmp_path / "site.bundle", tmp_path / "site.report"
    hq.run("field", "export", "--license", str(hq.json("licenses", "show", key)["id"]),
           "-o", str(bundle))  # fmt: skip
    with laptop(bundle, report) as lp:
        for device in (robot, other):
            on_site(device, lp.url)
            assert device.run("refresh").returncode == 0
    assert len(json.loads(report.read_text())["pickups"]) == 2
    listed: Any = hq.json("keys", "list")
    assert {k["kid"]: k["reported_by"] for k in listed} == {old: 0, new: 0}  # provisioned
    hq.run("field", "import", str(report))
    listed = hq.json("keys", "list")
    assert {k["kid"]: k["reported_by"] for k in listed} == {old: 2, new: 1}
    acts: Any = hq.json("activations", "list")
    assert sorted(len(a["keyring"]) for a in acts) == [1, 2]
    hq.run("keys", "activate", new)
    refused = hq.run("keys", "retire", old, check=False)
    assert refused.returncode == 1
    assert f"1 live device(s) trust no other key than {old}" in refused.stderr


def test_a_status_obtained_by_another_laptop_session_is_recorded_once(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    """Two reports of one bundle (a technician serving it on two days) that carry the
    same signed status record it once; a status edited on the way is not a pickup."""
    _, (robot, other) = activated_fleet(hq, make_device, 2, tmp_path)
    bundle = tmp_path / "b"
    hq.run("field", "export", "--all", "-o", str(bundle))
    first, second = tmp_path / "day1.report", tmp_path / "day2.report"
    with laptop(bundle, first) as lp:
        on_site(robot, lp.url)
        on_site(other, lp.url)
        assert robot.run("refresh").returncode == 0
        assert other.run("refresh").returncode == 0
    day1 = json.loads(first.read_text())
    day2 = {**day1, "started_at": day1["started_at"] + 1, "ended_at": day1["ended_at"] + 1}
    forged = dict(day2["pickups"][1])
    status = bytearray(base64.b64decode(forged["status"]))
    status[-1] ^= 1  # the signature no longer verifies
    forged["status"] = base64.b64encode(bytes(status)).decode()
    day2["pickups"] = [day2["pickups"][0], forged]
    second.write_text(json.dumps(day2))
    hq.run("field", "import", str(first))
    result = hq.run("field", "import", str(second))
    assert "1 were recorded already" in result.stdout
    assert "their signed status does not verify" in result.stdout
    assert len(audit_events(hq, "field_pickup")) == 2
    refused = audit_events(hq, "field_served")
    assert len(refused) == 1 and "status-refused=device_unauthenticated" in refused[0]["detail"]


def test_the_http_daemon_renews_from_the_laptop_and_confirms(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    """``fieldpass run`` over HTTP (no broker): the laptop's renewal is installed by the
    daemon, which then posts its signed status: the laptop records the pickup."""
    from tests.mqtt.conftest import Daemon

    _, (robot,) = activated_fleet(hq, make_device, 1, tmp_path)
    bundle, report = tmp_path / "b", tmp_path / "r"
    hq.run("field", "export", "--all", "-o", str(bundle))
    with laptop(bundle, report) as lp:
        robot.write_config(
            f'[online]\nserver = "http://127.0.0.1:9"\nservers = ["{lp.url}"]\ntimeout_s = 2\n'
            "[daemon]\nbackoff_min_ms = 100\nbackoff_max_ms = 1000\nrenew_timeout_s = 10\n"
        )
        daemon = Daemon(robot)
        daemon.start("--once")
        assert daemon.proc is not None
        assert daemon.proc.wait(60) == 0, daemon.text()
    assert robot.verdict()["serial"] == 2
    done = json.loads(report.read_text())
    assert [(p["fingerprint"], p["serial"], p["via"]) for p in done["pickups"]] == [
        (robot.fingerprint, 2, "http")
    ]


def test_an_older_report_imported_last_leaves_the_newer_keyring(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    """Two site visits, their reports imported in the other order: the device's keyring
    HQ records is the one its newer pickup named, never moved back to the older one."""
    key, (robot,) = activated_fleet(hq, make_device, 1, tmp_path)
    license_id = str(hq.json("licenses", "show", key)["id"])
    (old,) = [k["kid"] for k in hq.json("keys", "list")]  # type: ignore[union-attr, index]
    reports = []
    for visit in (1, 2):
        if visit == 2:
            new = str(hq.json("keys", "generate", "--standby")["kid"])
            hq.image(robot)  # its image updated between the visits: it trusts both keys
        bundle, report = tmp_path / f"visit{visit}.bundle", tmp_path / f"visit{visit}.report"
        hq.run("field", "export", "--license", license_id, "-o", str(bundle))
        with laptop(bundle, report) as lp:
            on_site(robot, lp.url)
            assert robot.run("refresh").returncode == 0
        reports.append(report)
    first, second = (json.loads(r.read_text())["pickups"][0]["at"] for r in reports)
    assert first < second
    hq.run("field", "import", str(reports[1]))  # the newer visit's report comes back first
    listed: Any = hq.json("keys", "list")
    assert {k["kid"]: k["reported_by"] for k in listed} == {old: 1, new: 1}
    hq.run("field", "import", str(reports[0]))
    listed = hq.json("keys", "list")
    assert {k["kid"]: k["reported_by"] for k in listed} == {old: 1, new: 1}
    (act,) = hq.json("activations", "list")  # type: ignore[misc]
    assert sorted(act["keyring"]) == sorted([old, new])
    # the older visit's report edited to say its pickup came after the newer one's: the
    # status it carries was signed before, and the device's own time is what stands
    edited = json.loads(reports[0].read_text())
    edited["pickups"][0]["at"] = second + 60
    edited["ended_at"] = max(edited["ended_at"], second + 60)
    forged = tmp_path / "edited.report"
    forged.write_text(json.dumps(edited))
    hq.run("field", "import", str(forged))
    (act,) = hq.json("activations", "list")  # type: ignore[misc]
    assert sorted(act["keyring"]) == sorted([old, new])
