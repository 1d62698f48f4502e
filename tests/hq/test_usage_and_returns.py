"""What the device tells HQ (issue 16), end to end with the real `fieldpass`, the real
`fieldpass-hq` and a real `fieldpass-hq serve`: usage counted on the device, reported
signed over HTTP and by hand, HQ's totals matching; forged, replayed and foreign reports
and receipts refused; a metered limit enforced offline and reset by the next period's
renewal; a returned device that cannot be brought back with a kept file.
"""

import base64
import json
import time as _time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.wire import armor, device_msg
from agent.wire.device_key import DeviceKey
from agent.wire.license_key import license_id
from tests.answering_server import AnsweringServer
from tests.conftest import HQ, DeviceRoot
from tests.hq.server import Server, start_server

DAY = 86400


@pytest.fixture
def hqc(tmp_path: Path) -> HQ:
    return HQ(tmp_path / "hq-home")


@pytest.fixture
def server(hqc: HQ) -> Iterator[Server]:
    hqc.setup(seats=3)
    hqc.run(
        "usage", "terms", "industrial", "--counter", "units",
        "--meter", "welding:units:100:30d", "--returns-per-year", "1",
    )  # fmt: skip
    s = start_server(hqc.home)
    yield s
    s.stop()


def activated(hqc: HQ, server: Server, device: DeviceRoot) -> str:
    key = str(
        hqc.json("licenses", "create", "--plan", "industrial", "--entitlement", "welding")["key"]
    )
    hqc.image(device)
    device.write_config(f'[online]\nserver = "{server.url}"\n')
    done = device.run("activate", key, "--server", server.url)
    assert done.returncode == 0, done.stderr
    return key


def test_counters_reported_over_http_and_by_hand_match_hqs_totals(
    hqc: HQ, server: Server, device: DeviceRoot
) -> None:
    activated(hqc, server, device)
    for n in (5, 7):
        assert device.run("usage", "add", "units", str(n)).returncode == 0
    bad = device.run("usage", "add", "coffee")
    assert bad.returncode == 64 and "declares no counter" in bad.stderr
    assert json.loads(device.run("usage", "show", "--json").stdout)["units"] == 12
    assert device.run("refresh").returncode == 0  # renewal: the report travels with it
    shown = hqc.json("usage", "show")
    assert shown[0]["counters"]["units"] == 12  # type: ignore[index]
    # by hand: an air-gapped site
    assert device.run("usage", "add", "units", "30").returncode == 0
    report = device.path.parent / "robot.report"
    assert device.run("report", "-o", str(report)).returncode == 0
    imported = hqc.json("usage", "import", str(report))
    assert imported[0]["accepted"] is True  # type: ignore[index]
    assert hqc.json("usage", "show")[0]["counters"]["units"] == 42  # type: ignore[index]
    # the same report again is a replay: refused, nothing changed
    again = hqc.run("usage", "import", str(report), check=False)
    assert again.returncode == 1 and "report_refused" in again.stdout
    csv_text = hqc.run("usage", "show", "--csv").stdout
    assert "units,42," in csv_text


def test_forged_and_foreign_reports_and_receipts_change_nothing(
    hqc: HQ, server: Server, device: DeviceRoot, tmp_path: Path
) -> None:
    activated(hqc, server, device)
    fp = device.fingerprint
    stranger = DeviceKey.generate()
    for kind, fields in (
        ("report", {"seq": 99, "counters": {"units": 10**9}, "challenge": None}),
        ("receipt", {"serial": 1, "returned_at": 1, "reason": "returned"}),
        # a key "registered" with a proof made without the license key
        (
            "report",
            {
                "seq": 99,
                "counters": {"units": 1},
                "challenge": None,
                "device_key": stranger.public_key,
                "proof": bytes(32),
            },
        ),
    ):
        forged = device_msg.sign(
            stranger,
            kind,
            {"activation_id": "", "fingerprint": fp, "at": 0, "agent_version": "x",
             "device_key": None, "proof": None, **fields},
        )  # fmt: skip
        f = tmp_path / f"forged.{kind}"
        label = armor.REPORT if kind == "report" else armor.RECEIPT
        f.write_text(armor.armor(forged, label))
        cmd = (
            ("usage", "import", str(f)) if kind == "report" else ("deactivate", "--receipt", str(f))
        )
        refused = hqc.run(*cmd, check=False)
        assert refused.returncode != 0, refused.stdout
    assert hqc.json("usage", "show") == []
    licenses = hqc.json("licenses", "list")
    assert sum(int(item["seats_used"]) for item in licenses) == 1  # type: ignore[index]


def test_a_metered_limit_is_enforced_offline_and_reset_by_the_next_periods_renewal(
    hqc: HQ, server: Server, device: DeviceRoot
) -> None:
    key = activated(hqc, server, device)
    assert device.check().returncode == 0
    assert device.verdict()["exhausted"] == []
    assert device.run("usage", "add", "units", "150").returncode == 0
    offline = device.check()
    assert offline.returncode == 0  # the license stands: the application decides
    assert device.verdict()["exhausted"] == ["welding"]
    env = (device.verdict_dir / "verdict.env").read_text()
    assert "FIELDPASS_EXHAUSTED='welding'" in env
    # a renewal inside the same period changes nothing: the base is HQ's, fixed
    assert device.run("refresh").returncode == 0
    assert device.check().returncode == 0 and device.verdict()["exhausted"] == ["welding"]
    # the next period (31 days on): HQ's file carries a new base, the reported 150
    report = device.path.parent / "late.report"
    assert device.run("report", "-o", str(report), faketime="+31d").returncode == 0
    hqc.run("usage", "import", str(report), faketime="+31d")
    renewal = device.path.parent / "period2.machine"
    act = hqc.json("licenses", "show", license_id(key))
    act_id = act["activations"][0]["activation_id"]  # type: ignore[index]
    hqc.run("machine-file", act_id, "-o", str(renewal), faketime="+31d")
    assert device.run("install", str(renewal), faketime="+31d").returncode == 0
    assert device.check(faketime="+31d").returncode == 0
    assert device.verdict()["exhausted"] == []


def test_a_returned_device_cannot_be_brought_back_with_a_kept_file(
    hqc: HQ, server: Server, device: DeviceRoot, tmp_path: Path
) -> None:
    key = activated(hqc, server, device)
    kept = tmp_path / "kept.machine"
    kept.write_bytes(device.machine_file.read_bytes())
    receipt = tmp_path / "robot.receipt"
    given = device.run("return", "--yes", "-o", str(receipt))
    assert given.returncode == 0, given.stderr
    assert not device.machine_file.exists() and not (device.state_dir / "license.key").exists()
    assert device.check().returncode == 30
    assert device.verdict()["reason"] == "returned"
    key_file = tmp_path / "key.txt"
    key_file.write_text(key + "\n")
    back = device.run("install", str(kept), "--license-key-file", str(key_file))
    assert back.returncode == 31 and "gave activation" in back.stderr
    assert device.check().returncode == 30
    # HQ: the receipt verifies; without a TPM the seat frees after the file's expiry+grace
    freed = hqc.json("deactivate", "--receipt", str(receipt))
    assert freed["freed"] is False and freed["frees_at"] > 0
    again = hqc.run("deactivate", "--receipt", str(receipt), check=False)
    assert again.returncode != 0  # a receipt counts once
    lic = license_id(key)
    assert hqc.json("licenses", "show", lic)["activations"][0]["live"] is True  # type: ignore[index]
    late = hqc.json("licenses", "show", lic, faketime="+400d")
    del late
    audit = hqc.run("audit", "--json").stdout
    assert '"return"' in audit


def test_a_tpm_bound_device_frees_its_seat_at_once_and_the_plan_limits_returns(
    hqc: HQ, server: Server, make_device: object, tmp_path: Path
) -> None:
    from tests.tpm_server import Swtpm

    with Swtpm(tmp_path / "tpmstate") as tpm:
        robots = [make_device() for _ in range(2)]  # type: ignore[operator]
        receipts = []
        key = str(hqc.json("licenses", "create", "--plan", "industrial")["key"])
        for n, robot in enumerate(robots):
            robot.write_config(
                f'[online]\nserver = "{server.url}"\n[tpm]\nenabled = true\n'
                f'nv_index = "{0x01500016 + 3 * n:#010x}"\ntcti = "{tpm.tcti}"\n'
            )
            hqc.image(robot)
            done = robot.run("activate", key, "--server", server.url)
            assert done.returncode == 0, done.stderr
            receipt = tmp_path / f"robot{n}.receipt"
            assert robot.run("return", "--yes", "-o", str(receipt)).returncode == 0
            receipts.append(receipt)
        first = hqc.json("deactivate", "--receipt", str(receipts[0]))
        assert first["freed"] is True  # bound to its TPM counter: no copy can come back
        # the plan allows one return a year: the second is refused, then overridden
        limited = hqc.run("deactivate", "--receipt", str(receipts[1]), check=False)
        assert limited.returncode == 1 and "return limit is reached" in limited.stderr
        over = hqc.json(
            "deactivate", "--receipt", str(receipts[1]), "--override", "mainboard swap, ticket 42"
        )
        assert over["freed"] is True
        assert "mainboard swap" in hqc.run("audit", "--json").stdout


def test_counters_survive_sigkill_and_never_go_back(
    hqc: HQ, server: Server, device: DeviceRoot
) -> None:
    import random
    import signal
    import subprocess
    import time as _time

    from tests.conftest import FIELDPASS, clean_env

    activated(hqc, server, device)
    done = 0
    seen = 0
    rng = random.Random()
    for attempt in range(1, 41):
        proc = subprocess.Popen(
            [FIELDPASS, "--root", str(device.path), "usage", "add", "units", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=clean_env(),
        )
        _time.sleep(rng.uniform(0, 0.08))
        proc.send_signal(signal.SIGKILL)
        if proc.wait() == 0:
            done += 1
        value = json.loads(device.run("usage", "show", "--json").stdout).get("units", 0)
        # every add that finished is counted, none twice, and the counter never goes back
        assert seen <= value and done <= value <= attempt
        seen = value
    assert device.check().returncode == 0


def test_the_daemons_socket_counts_without_a_process_per_event(
    hqc: HQ, server: Server, device: DeviceRoot
) -> None:
    import socket
    import time as _time

    from tests.mqtt.conftest import Daemon, wait_for

    activated(hqc, server, device)
    daemon = Daemon(device)
    daemon.start()
    try:
        path = device.verdict_dir / "usage.sock"
        wait_for(path.exists, 20, "the usage socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for datagram in (b"units", b"units 41", b"x" * 5000, b"\xff\xfe", b"units -3",
                             b"nope 1", b"units 99999999999"):  # fmt: skip
                try:
                    s.sendto(datagram, str(path))
                except OSError:
                    pass  # a datagram over the socket's limit: the kernel refuses it
        wait_for(
            lambda: json.loads(device.run("usage", "show", "--json").stdout).get("units") == 42,
            20,
            "the socket's counts written",
        )
        _time.sleep(1.5)
        assert daemon.proc is not None and daemon.proc.poll() is None  # bad datagrams: counted
    finally:
        assert daemon.stop() == 0


def test_activating_again_sends_the_waiting_receipt_first(
    hqc: HQ, server: Server, make_device: object, tmp_path: Path
) -> None:
    """A robot gives its license back while HQ is out of reach, then is activated again.
    Its receipt goes to HQ first: with a TPM the seat frees at once and the robot takes a
    new activation; without one HQ says when the seat frees; past the plan's return limit
    HQ's refusal of the receipt is the answer, and the receipt stays. Before, HQ (not
    knowing of the return) handed back the returned activation and the robot refused to
    install it, saying to activate again."""
    from tests.tpm_server import Swtpm

    with Swtpm(tmp_path / "tpmstate") as tpm:
        robot, plain = make_device(), make_device()  # type: ignore[operator]
        robot.write_config(
            f'[online]\nserver = "{server.url}"\n[tpm]\nenabled = true\n'
            f'nv_index = "0x01500030"\ntcti = "{tpm.tcti}"\n'
        )
        plain.write_config(f'[online]\nserver = "{server.url}"\n')
        keys, returned = {}, {}
        for device in (robot, plain):  # a license each: the plan allows one return a year
            keys[device] = str(hqc.json("licenses", "create", "--plan", "industrial")["key"])
            hqc.image(device)
            done = device.run("activate", keys[device], "--server", server.url)
            assert done.returncode == 0, done.stderr
            returned[device] = device.verdict()["activation_id"]
            given = device.run("return", "--yes", "-o", str(tmp_path / "given.receipt"))
            assert given.returncode == 0, given.stderr
            assert (device.state_dir / "return.receipt").exists()  # waiting for HQ
        again = robot.run("activate", keys[robot], "--server", server.url)
        assert again.returncode == 0, again.stderr
        assert not (robot.state_dir / "return.receipt").exists()
        assert robot.check().returncode == 0
        assert robot.verdict()["activation_id"] != returned[robot]
        refused = plain.run("activate", keys[plain], "--server", server.url)
        assert refused.returncode == 77 and "activation_returned" in refused.stderr
        assert "frees on" in refused.stderr and "Traceback" not in refused.stderr
        assert not (plain.state_dir / "return.receipt").exists()  # HQ holds it
        # the robot's license had its one return this year: a second is refused
        second = tmp_path / "second.receipt"
        assert robot.run("return", "--yes", "-o", str(second)).returncode == 0
        limited = robot.run("activate", keys[robot], "--server", server.url)
        assert limited.returncode == 77 and "return limit" in limited.stderr, limited.stderr
        assert "the return receipt waiting on this device (kept" in limited.stderr
        assert limited.stderr.count("fieldpass: error:") == 1 and "Traceback" not in limited.stderr
        assert (robot.state_dir / "return.receipt").exists()  # kept for an override
    acts = hqc.json("activations", "list", "--all")
    live = {a["activation_id"]: a["deactivated_at"] for a in acts}  # type: ignore[attr-defined]
    assert live[returned[robot]] is not None and live[returned[plain]] is None
    returns = [e for e in hqc.json("audit") if e["action"] == "return"]  # type: ignore[attr-defined]
    assert {e["activation_id"] for e in returns} == {returned[robot], returned[plain]}


def test_a_receipt_hq_does_not_know_does_not_stop_the_activation(
    hqc: HQ, server: Server, device: DeviceRoot, tmp_path: Path
) -> None:
    """HQ restored from a backup taken before the robot was activated: the robot, which
    gave its license back while HQ was out of reach, is activated against it. That HQ
    has no record of the returned activation (401 to the receipt) and nothing to free,
    so the receipt does not stop the activation: the robot takes a new one, and keeps
    the receipt (the HQ that knew the activation may yet see it)."""
    passphrase = tmp_path / "pass"
    passphrase.write_text("correct horse battery staple\n")
    backup = tmp_path / "hq.backup"
    key = str(hqc.json("licenses", "create", "--plan", "industrial")["key"])
    hqc.run("backup", "-o", str(backup), "--with-secrets", "--passphrase-file", str(passphrase))
    device.write_config(f'[online]\nserver = "{server.url}"\n')
    hqc.image(device)
    done = device.run("activate", key, "--server", server.url)
    assert done.returncode == 0, done.stderr
    returned = device.verdict()["activation_id"]
    given = device.run("return", "--yes", "-o", str(tmp_path / "given.receipt"))
    assert given.returncode == 0, given.stderr
    server.stop()  # HQ lost; the vendor restores the backup
    older = HQ(tmp_path / "restored")
    older.run("restore", str(backup), "--passphrase-file", str(passphrase))
    restored = start_server(older.home)
    try:
        again = device.run("activate", key, "--server", restored.url)
    finally:
        restored.stop()
    assert again.returncode == 0, again.stderr
    assert device.check().returncode == 0
    assert device.verdict()["activation_id"] not in ("", returned)
    assert (device.state_dir / "return.receipt").exists()
    (act,) = older.json("activations", "list", "--all")  # type: ignore[misc]
    assert act["activation_id"] == device.verdict()["activation_id"]


def test_a_file_hq_issued_a_returned_activation_after_the_next_one_never_runs(
    hqc: HQ, server: Server, device: DeviceRoot, tmp_path: Path
) -> None:
    """The robot, activated by hand by its fingerprint (HQ knows no device key of that
    activation), gives its license back, the receipt not yet at HQ, and is activated
    anew by hand at HQ on another license; then an operator, not knowing of the
    return, issues the returned activation a file. Issued later than the new
    activation's, it was taken as newer; it is of an activation given back: `install`
    refuses it, and put in place with its key the gate says "returned" (30)."""
    import shutil
    import time

    hqc.image(device)
    keys = {name: tmp_path / f"{name}.key" for name in ("a", "b")}
    for name in keys:
        key = str(hqc.json("licenses", "create", "--plan", "industrial")["key"])
        keys[name].write_text(key + "\n")
    first = tmp_path / "a.machine"
    act_a = hqc.json(
        "activate", keys["a"].read_text().strip(), "--fingerprint", device.fingerprint,
        "-o", str(first),
    )["activation_id"]  # fmt: skip
    done = device.run("install", str(first), "--license-key-file", str(keys["a"]))
    assert done.returncode == 0, done.stderr
    assert device.run("return", "--yes", "-o", str(tmp_path / "robot.receipt")).returncode == 0
    # HQ's times are whole seconds: a file of another activation issued in the second of
    # the last one is older unless bound to a nonce (the request's, without a TPM, is not)
    time.sleep(1.1)
    request, answer = tmp_path / "b.request", tmp_path / "b.machine"
    assert device.run("request", "-o", str(request)).returncode == 0
    activated_b = hqc.json(
        "activate", keys["b"].read_text().strip(), "--request", str(request), "-o", str(answer)
    )
    act_b = activated_b["activation_id"]
    done = device.run("install", str(answer), "--license-key-file", str(keys["b"]))
    assert done.returncode == 0, done.stderr
    assert device.check().returncode == 0
    time.sleep(1.1)  # HQ's times are whole seconds: the late file is issued later
    late = tmp_path / "late.machine"
    issued = hqc.json("machine-file", str(act_a), "-o", str(late))
    assert issued["issued_at"] > activated_b["issued_at"]  # type: ignore[operator]
    refused = device.run("install", str(late), "--license-key-file", str(keys["a"]))
    assert refused.returncode == 31 and f"gave activation {act_a} back" in refused.stderr
    assert device.check().returncode == 0 and device.verdict()["activation_id"] == act_b
    shutil.copy(late, device.machine_file)  # root on the data partition: file and key back
    shutil.copy(keys["a"], device.state_dir / "license.key")
    put_back = device.check()
    assert put_back.returncode == 30, put_back.stdout
    assert device.verdict()["reason"] == "returned"


def test_a_server_that_lies_about_a_receipt_does_not_take_it_from_the_device(
    hqc: HQ, server: Server, make_device: object, answering_server: AnsweringServer, tmp_path: Path
) -> None:
    """A server in the robot's config answers its return receipt as if HQ held it (200,
    409 conflict, 404 activation_not_found) with no acknowledgement, with a damaged one,
    one signed by a key the robot does not trust, HQ's own acknowledgement of another
    device's receipt, and HQ's signed status of this very activation bound to another
    nonce: each time the robot keeps its receipt and says so, and HQ's seat stays taken.
    Then the real HQ: its signed acknowledgement verifies, the receipt goes, and the
    TPM-bound seat is free at once. Before, any such answer made the robot drop its
    copy, and the seat stayed taken until the operator freed it."""
    from agent.daemon.topics import ack_nonce
    from agent.wire.keys import SigningKey
    from agent.wire.signed_time import sign_time
    from provisioning.services import HQ as Service
    from tests.tpm_server import Swtpm

    with Swtpm(tmp_path / "tpmstate") as tpm:
        robot, other = make_device(), make_device()  # type: ignore[operator]
        with_tpm = f'[tpm]\nenabled = true\nnv_index = "0x01500030"\ntcti = "{tpm.tcti}"\n'
        acts, lics = {}, {}
        for device in (robot, other):
            key = str(hqc.json("licenses", "create", "--plan", "industrial")["key"])
            hqc.image(device)
            device.write_config(
                f'[online]\nserver = "{server.url}"\n' + with_tpm * (device is robot)
            )
            done = device.run("activate", key, "--server", server.url)
            assert done.returncode == 0, done.stderr
            acts[device], lics[device] = str(device.verdict()["activation_id"]), license_id(key)
            assert device.run("return", "--yes").returncode == 0
        receipts = {d: (d.state_dir / "return.receipt").read_bytes() for d in (robot, other)}
        service = Service(hqc.home)
        try:
            now = int(_time.time())
            others_ack = service.usage.acknowledgement(acts[other], ack_nonce(receipts[other]), now)
            another_nonce = service.usage.acknowledgement(acts[robot], ack_nonce(b"other"), now)
        finally:
            service.store.close()
        forged = sign_time(
            SigningKey.generate(), now, robot.fingerprint, ack_nonce(receipts[robot]),
            "deactivated", license_id=lics[robot], activation_id=acts[robot],
        )  # fmt: skip
        b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
        taken = {"activation_id": acts[robot], "freed": True, "frees_at": now}
        conflict = {"error": {"code": "conflict", "message": "returned already"}}
        gone = {"error": {"code": "activation_not_found", "message": "freed by hand"}}
        lies = [
            (200, taken),
            (409, conflict),
            (404, gone),
            (200, {**taken, "ack": "not base64!"}),
            (409, {**conflict, "ack": b64(forged)}),
            (404, {**gone, "ack": b64(others_ack)}),
            (200, {**taken, "ack": b64(another_nonce)}),
        ]
        robot.write_config(
            f'[online]\nserver = "{answering_server.url}"\ntimeout_s = 5\n' + with_tpm
        )
        for status, body in lies:
            answering_server.answer("/v1/receipt", status, json.dumps(body).encode())
            ran = robot.run("run", "--once")
            assert ran.returncode == 0, ran.stderr
            assert (robot.state_dir / "return.receipt").exists(), (status, body)
            assert "the receipt is kept" in ran.stderr, (status, ran.stderr)
            assert "Traceback" not in ran.stderr
        assert answering_server.asked.count("/v1/receipt") == len(lies)
        live = {
            a["activation_id"]: a["deactivated_at"]
            for a in hqc.json("activations", "list", "--all")
        }  # type: ignore[attr-defined]
        assert live[acts[robot]] is None  # the seat is still taken: HQ never saw the receipt
        # the real HQ: the receipt is taken, acknowledged, signed; the robot drops it
        robot.write_config(f'[online]\nserver = "{server.url}"\ntimeout_s = 5\n' + with_tpm)
        ran = robot.run("run", "--once")
        assert ran.returncode == 0, ran.stderr
        assert not (robot.state_dir / "return.receipt").exists(), ran.stderr
    live = {
        a["activation_id"]: a["deactivated_at"] for a in hqc.json("activations", "list", "--all")
    }  # type: ignore[attr-defined]
    assert live[acts[robot]] is not None  # TPM-bound: the seat is free at once


def test_a_second_return_never_replaces_a_receipt_hq_has_not_taken(
    hqc: HQ, server: Server, device: DeviceRoot, tmp_path: Path
) -> None:
    """Given back with no HQ in reach, activated anew by hand (the receipt still on the
    robot), then given back again: the first receipt would be replaced, and its seat
    stay taken at HQ. The second return is refused (75, receipt_waiting), changing
    nothing; once the first receipt is gone, it goes ahead."""
    import time

    hqc.image(device)
    keys = {name: tmp_path / f"{name}.key" for name in ("a", "b")}
    for name in keys:
        keys[name].write_text(str(hqc.json("licenses", "create", "--plan", "industrial")["key"]))
    first = tmp_path / "a.machine"
    hqc.run(
        "activate", keys["a"].read_text(), "--fingerprint", device.fingerprint, "-o", str(first)
    )
    assert device.run("install", str(first), "--license-key-file", str(keys["a"])).returncode == 0
    assert device.run("return", "--yes", "-o", str(tmp_path / "a.receipt")).returncode == 0
    receipt = (device.state_dir / "return.receipt").read_bytes()
    time.sleep(1.1)  # HQ's times are whole seconds: B's file is issued later than A's
    request, answer = tmp_path / "b.request", tmp_path / "b.machine"
    assert device.run("request", "-o", str(request)).returncode == 0
    hqc.run("activate", keys["b"].read_text(), "--request", str(request), "-o", str(answer))
    assert device.run("install", str(answer), "--license-key-file", str(keys["b"])).returncode == 0
    again = device.run("return", "--yes")
    assert again.returncode == 75, again.stderr
    assert "still waits for HQ" in again.stderr and "nothing was changed" in again.stderr
    assert (device.state_dir / "return.receipt").read_bytes() == receipt
    assert device.check().returncode == 0  # B still runs
    (device.state_dir / "return.receipt").unlink()  # HQ took it (carried by hand)
    assert device.run("return", "--yes").returncode == 0
    assert device.check().returncode == 30


def test_a_receipt_registering_its_key_of_a_seat_freed_by_hand_is_acknowledged(
    hqc: HQ, server: Server, device: DeviceRoot
) -> None:
    """HQ forgot the robot's device key (`activations reset-key`), the robot gave its
    license back, and the operator freed the seat by hand before the receipt came. The
    receipt carries its key and the proof of the license key: HQ verifies that proof,
    answers 404 `activation_not_found` with its signed acknowledgement, and records no
    key on the freed activation; the robot drops its receipt. Before, HQ refused the
    receipt before the proof (404 without an acknowledgement) and the robot sent it
    again at every contact."""
    from agent.config import load
    from agent.device import Device
    from agent.wire.device_key import key_proof

    key = activated(hqc, server, device)
    act = str(device.verdict()["activation_id"])
    hqc.run("activations", "reset-key", act)
    assert device.run("return", "--yes").returncode == 0
    # The receipt an activation made without a key carries (its file names none, as
    # the previous agent's by-hand activations were): this agent's file names the key,
    # so its receipt is signed again here with the key and the proof added.
    robot = Device(load(str(device.path)))
    dev_key = robot.device_key()
    assert dev_key is not None
    path = device.state_dir / "return.receipt"
    proof = key_proof(key, dev_key.public_key, act, "")
    fields = {**_receipt_fields(path, dev_key), "device_key": dev_key.public_key, "proof": proof}
    path.write_bytes(device_msg.sign(dev_key, "receipt", fields))
    assert hqc.run("deactivate", act).returncode == 0  # freed by hand meanwhile
    ran = device.run("run", "--once")
    assert ran.returncode == 0, ran.stderr
    assert not (device.state_dir / "return.receipt").exists(), ran.stderr
    assert "Traceback" not in ran.stderr
    (row,) = [a for a in hqc.json("activations", "list", "--all") if a["activation_id"] == act]  # type: ignore[attr-defined]
    assert row["deactivated_at"] is not None
    audit = hqc.run("audit", "--json").stdout
    assert "device_key_register" not in audit  # a freed activation takes no key
    again = device.run("run", "--once")  # nothing left to send
    assert again.returncode == 0 and "receipt" not in again.stderr, again.stderr


def _receipt_fields(path: Path, key: DeviceKey) -> dict[str, object]:
    """The fields of the device's receipt at ``path``, verified with its key."""
    m = device_msg.open_message(path.read_bytes(), lambda _kid: key.public_key, "receipt")
    return dict(m.fields)
