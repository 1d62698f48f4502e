"""A mainboard swap relayed by the technician's laptop (`fieldpass-hq field relay`) to a
real `fieldpass-hq serve` over TLS on 127.0.0.1, and the same by hand at HQ
(`fieldpass-hq activate --request --receipt`), with the real `fieldpass` on both boards.

The certificates are made with the `openssl` CLI (tests/tls_pki.py: a throwaway CA and
HQ's certificate for 127.0.0.1, and a second CA that did not sign it) and live in the
test's temporary folder only. The TPM-bound old board runs against a real swtpm.
"""

import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.wire import armor
from tests.conftest import HQ, DeviceRoot, clean_env
from tests.hq.server import FIELDPASS_HQ, Server, free_port, start_server
from tests.tls_pki import make_pki
from tests.tpm_server import Swtpm


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Site:
    hq: HQ
    server: Server
    key: str
    work: Path
    ca: Path

    def relay(self, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
        """`field relay` as the laptop runs it: no HQ home, no signing key."""
        return subprocess.run(
            [FIELDPASS_HQ, "field", "relay", "--hq", url or self.server.url,
             "--license-key-file", "license.key", "--timeout", "10", *args],
            cwd=self.work, capture_output=True, text=True, timeout=120,
            env=clean_env(FIELDPASS_HQ_HOME=str(self.work / "no-hq-here")),
        )  # fmt: skip

    def returns(self) -> list[dict[str, object]]:
        return [e for e in self.hq.json("audit", "--limit", "1000") if e["action"] == "return"]  # type: ignore[attr-defined]

    def live(self) -> list[str]:
        acts = self.hq.json("licenses", "show", self.key)["activations"]
        return sorted(str(a["activation_id"]) for a in acts if a["live"])  # type: ignore[attr-defined]


@pytest.fixture
def site(hq: HQ, pki: Path, tmp_path: Path) -> Iterator[Site]:
    key = hq.setup(seats=1)
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    tls = ("--tls-cert", str(pki / "hq.pem"), "--tls-key", str(pki / "hq.key"))
    server = start_server(hq.home, *tls, tls=context)
    work = tmp_path / "laptop"
    work.mkdir()
    (work / "license.key").write_text(key + "\n")
    try:
        yield Site(hq, server, key, work, pki / "ca.pem")
    finally:
        server.stop()


def installed(site: Site, board: DeviceRoot, key: str | None = None) -> str:
    """The board activated by hand at HQ from its request (TPM-bound when its config
    enables the TPM) and its file installed; its activation id."""
    site.hq.image(board)
    request, answer = board.path.parent / "first.request", board.path.parent / "first.lic"
    assert board.run("request", "-o", str(request)).returncode == 0
    doc = site.hq.json("activate", key or site.key, "--request", str(request), "-o", str(answer))
    keyfile = board.path.parent / "key.txt"
    keyfile.write_text((key or site.key) + "\n")
    done = board.run("install", str(answer), "--license-key-file", str(keyfile))
    assert done.returncode == 0, done.stderr
    return str(doc["activation_id"])


def returned(site: Site, board: DeviceRoot, name: str) -> Path:
    receipt = site.work / name
    done = board.run("return", "--yes", "-o", str(receipt))
    assert done.returncode == 0, done.stderr
    return receipt


def requested(site: Site, board: DeviceRoot) -> Path:
    site.hq.image(board)
    request = site.work / "new.request"
    assert board.run("request", "-o", str(request)).returncode == 0
    return request


def one_line(res: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("fieldpass-hq: error: ")
    for word in words:
        assert word in res.stderr, res.stderr
    assert site_key_never_shown(res)


def site_key_never_shown(res: subprocess.CompletedProcess[str]) -> bool:
    return "FP-" not in res.stdout + res.stderr


def stored_receipt(site: Site, activation_id: str) -> str:
    from provisioning.services import HQ as Service

    hq = Service(site.hq.home)
    with hq.store.read() as tx:
        record = tx.get_return(activation_id)
    assert record is not None
    return record.receipt


def test_a_tpm_bound_board_swapped_through_the_laptop_over_tls(
    site: Site, make_device: object, tmp_path: Path
) -> None:
    old, new = make_device(), make_device()  # type: ignore[operator]
    with Swtpm(tmp_path / "tpmstate") as tpm:
        old.write_config(f'[tpm]\nenabled = true\nnv_index = "0x01500016"\ntcti = "{tpm.tcti}"\n')
        old_act = installed(site, old)
        receipt = returned(site, old, "old.receipt")
        assert old.check().returncode == 30  # the old board gave its license back
    request = requested(site, new)
    done = site.relay("--ca-file", str(site.ca), "--request", "new.request",
                      "--receipt", "old.receipt", "-o", "new.answer")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"HQ took the return receipt of {old_act}: seat freed" in done.stdout
    assert "(a new seat)" in done.stdout and site_key_never_shown(done)
    # the bodies were the devices' bytes: HQ holds the very receipt, the request's key
    assert stored_receipt(site, old_act) == receipt.read_text()
    assert new.run("install", str(site.work / "new.answer"), "--license-key-file",
                   str(site.work / "license.key")).returncode == 0  # fmt: skip
    assert new.check().returncode == 0
    [new_act] = site.live()
    assert new_act != old_act
    # the link dropped before the answer came: the same command again is safe
    again = site.relay("--ca-file", str(site.ca), "--request", str(request),
                       "--receipt", "old.receipt", "-o", "new.answer", "--json")  # fmt: skip
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["activation_id"] == new_act and doc["created"] is False and doc["serial"] == 2
    assert doc["receipts"] == [
        {"activation_id": old_act, "freed": True, "frees_at": doc["receipts"][0]["frees_at"],
         "taken_before": True}
    ]  # fmt: skip
    assert site.live() == [new_act] and len(site.returns()) == 1


def test_a_board_without_tpm_waits_for_the_operator_then_the_relay_runs_again(
    site: Site, make_device: object
) -> None:
    old, new = make_device(), make_device()  # type: ignore[operator]
    old_act = installed(site, old)
    returned(site, old, "old.receipt")
    requested(site, new)
    args = ("--ca-file", str(site.ca), "--request", "new.request", "--receipt", "old.receipt")
    full = site.relay(*args, "-o", "new.answer")
    one_line(full, 1, "HQ refused: seat_limit_reached", f"the receipt of {old_act} is taken",
             "frees on", f"fieldpass-hq deactivate {old_act} --reason")  # fmt: skip
    assert not (site.work / "new.answer").exists()
    assert len(site.returns()) == 1 and site.live() == [old_act]  # the receipt: a fact
    site.hq.run("deactivate", old_act, "--reason", "mainboard swap: receipt seen, ticket 4711")
    done = site.relay(*args, "-o", "new.answer", "--armor")
    assert done.returncode == 0, done.stderr
    assert f"HQ took the return receipt of {old_act} (taken before): seat freed" in done.stdout
    assert (site.work / "new.answer").read_text().startswith("-----BEGIN FIELDPASS")
    assert new.run("install", str(site.work / "new.answer"), "--license-key-file",
                   str(site.work / "license.key")).returncode == 0  # fmt: skip
    assert new.check().returncode == 0
    assert len(site.returns()) == 1


def test_the_operator_freed_the_old_seat_first_then_the_relay_runs(
    site: Site, make_device: object
) -> None:
    """The operator freed the old board's seat by hand before the technician relayed its
    receipt: nothing is left to free, so the receipt is no refusal and the swap runs."""
    old, new = make_device(), make_device()  # type: ignore[operator]
    old_act = installed(site, old)
    returned(site, old, "old.receipt")
    requested(site, new)
    site.hq.run("deactivate", old_act, "--reason", "mainboard swap, ticket 4712")
    args = ("--ca-file", str(site.ca), "--request", "new.request", "--receipt", "old.receipt")
    done = site.relay(*args, "-o", "new.answer", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["created"] is True
    [taken] = doc["receipts"]
    assert taken["activation_id"] == old_act and taken["freed"] is True
    assert taken["taken_before"] is False
    assert site.returns() == []  # no return recorded: the seat was freed by the operator
    assert new.run("install", str(site.work / "new.answer"), "--license-key-file",
                   str(site.work / "license.key")).returncode == 0  # fmt: skip
    assert new.check().returncode == 0
    assert site.live() == [str(doc["activation_id"])]


def test_a_dead_board_relayed_without_a_receipt(site: Site, make_device: object) -> None:
    old, new = make_device(), make_device()  # type: ignore[operator]
    old_act = installed(site, old)
    site.hq.run("deactivate", old_act, "--reason", "mainboard swap: board dead")
    requested(site, new)
    done = site.relay("--ca-file", str(site.ca), "--request", "new.request", "-o", "a")
    assert done.returncode == 0, done.stderr
    assert "HQ took" not in done.stdout and "(a new seat)" in done.stdout


def test_plain_http_to_another_host_is_refused_before_anything_is_sent(site: Site) -> None:
    (site.work / "new.request").write_text("not even read\n")
    res = site.relay("--request", "new.request", "-o", "a", url="http://192.0.2.1:8750")
    one_line(res, 2, "refusing to send the license key to http://192.0.2.1:8750", "https://")


def test_a_certificate_of_another_ca_is_not_trusted(
    site: Site, pki: Path, make_device: object
) -> None:
    old, new = make_device(), make_device()  # type: ignore[operator]
    installed(site, old)
    returned(site, old, "old.receipt")
    requested(site, new)
    args = ("--request", "new.request", "--receipt", "old.receipt", "-o", "a")
    for ca in (("--ca-file", str(pki / "other-ca.pem")), ()):  # another CA; the system's
        res = site.relay(*ca, *args)
        one_line(res, 78, "is not trusted", "certificate", "--ca-file", "Nothing was sent")
    assert site.returns() == [] and not (site.work / "a").exists()


def test_hq_unreachable_or_silent_is_one_line_and_69(site: Site, make_device: object) -> None:
    requested(site, make_device())  # type: ignore[operator]
    url = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    res = site.relay("--ca-file", str(site.ca), "--request", "new.request", "-o", "a", url=url)
    one_line(res, 69, f"HQ at {url} is unreachable", "run the same command again")
    with socket.socket() as silent:  # a link that takes the connection and goes quiet
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        res = site.relay("--ca-file", str(site.ca), "--timeout", "1", "--request",
                         "new.request", "-o", "a", url=url)  # fmt: skip
    one_line(res, 69, f"HQ at {url} is unreachable", "timed out", "run the same command again")
    assert not (site.work / "a").exists()


def test_a_receipt_of_another_license_changes_nothing(site: Site, make_device: object) -> None:
    other_key = str(site.hq.json("licenses", "create", "--plan", "industrial")["key"])
    foreign, new = make_device(), make_device()  # type: ignore[operator]
    foreign_act = installed(site, foreign, other_key)
    returned(site, foreign, "foreign.receipt")
    requested(site, new)
    res = site.relay("--ca-file", str(site.ca), "--request", "new.request",
                     "--receipt", "foreign.receipt", "-o", "a")  # fmt: skip
    one_line(res, 1, "HQ refused: receipt_other_license", foreign_act, "nothing was taken")
    by_hand = site.hq.run("activate", site.key, "--request", str(site.work / "new.request"),
                          "--receipt", str(site.work / "foreign.receipt"), check=False)  # fmt: skip
    one_line(by_hand, 1, f"the receipt of activation {foreign_act} is of another license")
    assert site.returns() == [] and site.live() == []


def test_a_tampered_request_is_refused_by_hq_and_passed_through(
    site: Site, make_device: object
) -> None:
    old, new = make_device(), make_device()  # type: ignore[operator]
    installed(site, old)
    returned(site, old, "old.receipt")
    data = bytearray(armor.unarmor(requested(site, new).read_bytes(), armor.REQUEST))
    data[-10] ^= 0x01  # one bit of the signature
    (site.work / "tampered.request").write_bytes(bytes(data))
    res = site.relay("--ca-file", str(site.ca), "--request", "tampered.request",
                     "--receipt", "old.receipt", "-o", "a")  # fmt: skip
    one_line(res, 65, "HQ refused: invalid_request: the activation request does not verify")
    assert site.returns() == []  # refused before the receipt was taken


def test_by_hand_the_receipt_then_the_activation_and_the_return_limit(
    site: Site, make_device: object
) -> None:
    site.hq.run("usage", "terms", "industrial", "--returns-per-year", "0")
    old, new = make_device(), make_device()  # type: ignore[operator]
    old_act = installed(site, old)
    receipt = returned(site, old, "old.receipt")
    request = requested(site, new)
    swap = ("activate", site.key, "--request", str(request), "--receipt", str(receipt))
    limited = site.hq.run(*swap, check=False)
    one_line(limited, 1, "return limit is reached", "--override")
    assert site.returns() == []
    full = site.hq.run(*swap, "--override", "mainboard swap, ticket 4711", check=False)
    one_line(full, 1, "all its seats in use", "frees on", f"deactivate {old_act} --reason")
    assert len(site.returns()) == 1  # the receipt is taken: a fact, audited with the reason
    assert "override=mainboard swap" in str(site.returns()[0]["detail"])
    site.hq.run("deactivate", old_act, "--reason", "mainboard swap: receipt seen")
    answer = site.work / "new.answer"
    doc = site.hq.json(*swap, "-o", str(answer))
    assert doc["created"] is True and doc["receipts"][0]["taken_before"] is True  # type: ignore[index]
    assert new.run("install", str(answer), "--license-key-file",
                   str(site.work / "license.key")).returncode == 0  # fmt: skip
    assert new.check().returncode == 0
