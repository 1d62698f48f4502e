"""The technician's laptop: field export at HQ, field serve on site over the devices'
own HTTP path, field import back at HQ; and the 365-day robot acceptance story, with
the clocks of HQ, laptop and robot all moved by libfaketime."""

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import FIELDPASS_HQ, HQ, DeviceRoot, clean_env, faketime_env
from tests.hq.server import free_port


@contextmanager
def laptop(
    hq: HQ, bundle: Path, report: Path, faketime: str | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    proc = subprocess.Popen(
        [
            FIELDPASS_HQ,
            "--home",
            str(hq.home),
            "field",
            "serve",
            str(bundle),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--report",
            str(report),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(**(faketime_env(faketime) if faketime else {})),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise RuntimeError(proc.stderr.read() if proc.stderr else "laptop did not start")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


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
    with laptop(hq, bundle, report) as (url, proc):
        for robot in fleet[:2]:
            on_site(robot, url)
            renewed = robot.run("refresh")
            assert renewed.returncode == 0, renewed.stderr
            assert robot.check().returncode == 0
            assert robot.verdict()["serial"] == 2  # 1: provisioned; 2: the bundle
        stranger = make_device()
        on_site(stranger, url)
        refused = stranger.run("activate", key)
        assert refused.returncode == 77 and "not_available_in_the_field" in refused.stderr
        fleet[2].write_config('[online]\nserver = "http://127.0.0.1:9"\ntimeout_s = 2\n')
        assert fleet[2].run("check", "--online").returncode == 0  # offline fallback
    out, _ = proc.communicate()
    assert "2 of 3 device(s) picked up their renewal or revocation" in out
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
    with laptop(hq, bundle, report) as (url, _):
        entry = json.loads(bundle.read_text())["devices"][0]
        answer = httpx.post(
            url + "/v1/machine-file",
            json={
                "license_key": "FP-ABCDE-FGHJK-LMNPQ-RSTUV-WXYZ2",
                "fingerprint": entry["fingerprint"],
            },
        )
        assert answer.status_code == 403
        assert httpx.post(url + "/v1/machine-file", content=b"{").status_code == 400
        assert httpx.post(url + "/v1/machine-file", content=b"x" * 100_000).status_code == 413


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
    with laptop(hq, bundle, report, faketime="+330d") as (url, _):
        on_site(robot, url)
        assert robot.run("refresh", faketime="+330d").returncode == 0
    renewed = robot.check(faketime="+330d")
    assert renewed.returncode == 0 and "(365 days left)" in renewed.stdout
    assert robot.check(faketime="+600d").returncode == 0  # well past the first year
    hq.run("field", "import", str(report), faketime="+331d")


def test_a_revoked_license_reaches_a_device_through_the_laptop(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    key, fleet = activated_fleet(hq, make_device, 1, tmp_path)
    robot = fleet[0]
    hq.run("licenses", "revoke", str(hq.json("licenses", "show", key)["id"]), "--yes")
    bundle, report = tmp_path / "site.bundle", tmp_path / "site.report"
    exported = hq.run("field", "export", "--all", "-o", str(bundle))
    assert "0 renewed machine file(s), 1 signed revocation(s)" in exported.stdout
    with laptop(hq, bundle, report) as (url, _):
        on_site(robot, url)
        result = robot.run("check", "--online")
        assert result.returncode == 32, result.stdout + result.stderr
        assert robot.run("refresh").returncode == 77  # nothing to renew from the bundle
    robot.write_config("")
    assert robot.check().returncode == 32  # kept offline
    assert json.loads(report.read_text())["pickups"][0]["activation_id"]


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
