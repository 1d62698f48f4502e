"""Every ``fieldpass-hq`` command that can fail exits with the code docs/hq.md gives for
the failure, through ``main`` (the same function the console script runs), and says why
in one line on stderr.

The table names each command at least once; ``test_the_table_names_every_command``
walks the command tree so that a new command cannot go untested. ``bridge`` and ``push``
against a real broker are in tests/mqtt/test_hq_bridge.py.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import click
import pytest

from provisioning.cli import cli
from tests.hq.server import free_port
from tests.test_cli_help import subcommands

from .conftest import FIELDPASS_HQ, Result, Run, fingerprint

# (command line, exit code). {key} {keyfile} {lid} {act} {kid} {tmp} {fifo} {report}
# {revoked} are filled in by the ``world`` fixture; {broken} is a file: a home below it is
# unusable.
FAILURES: list[tuple[str, int]] = [
    ("--home {broken}/home keys generate", 78),
    ("--home {broken}/home keys list", 78),
    ("--home {tmp}/fresh keys export", 78),
    ("keys export -o {tmp}/missing/keyring", 73),
    ("keys export -o {fifo}", 73),  # never a file in place of a FIFO (or of /dev/null)
    ("keys retire fpk_nosuchkey", 3),
    ("keys retire {kid}", 1),
    ("keys activate fpk_nosuchkey", 3),
    ("keys activate {kid}", 1),  # it signs already
    ("keys generate --standby --json --nosuch", 2),
    ("plans create std --offline-ttl 1d --seats 1", 1),
    ("plans create other --offline-ttl forever --seats 1", 2),
    ("--home {broken}/home plans list", 78),
    ("plans update nope --seats 3", 3),
    ("plans update std --seats 1", 1),  # a license of it uses 2
    ("plans update std --grace forever", 2),
    ("licenses create --plan nope", 3),
    ("--home {broken}/home licenses list", 78),
    ("licenses show lic_00000000000000000000", 3),
    ("licenses suspend lic_00000000000000000000", 3),
    ("licenses reinstate {revoked}", 1),
    ("licenses seats {lid} 1", 1),  # 2 in use
    ("licenses seats {lid} many", 2),
    ("licenses seats lic_00000000000000000000 3", 3),
    ("licenses list --status lost", 2),
    ("--home {broken}/home licenses list --expiring-within 30d", 78),
    ("activations reset-key act_00000000000000000000", 3),
    ("activations list --expiring-within soon", 2),
    ("activations list --limit 0", 2),
    ("--home {broken}/home activations list", 78),
    ("licenses revoke {lid}", 2),
    ("licenses revoke lic_00000000000000000000 --yes", 3),
    ("activate {key} --fingerprint xyz", 2),
    ("activate {key} --fingerprint " + fingerprint(9), 1),
    ("activate {key} --request {tmp}/no-such.request", 66),
    ("activate {key} --fingerprint " + fingerprint(9) + " --receipt {tmp}/no-such.receipt", 66),
    ("activate {key} --fingerprint " + fingerprint(9) + " --receipt {report}", 2),  # none in it
    ("machine-file act_00000000000000000000", 3),
    ("deactivate act_00000000000000000000", 3),
    ("deactivate --receipt {tmp}/no-such.receipt", 66),
    ("deactivate --receipt {report}", 2),  # no receipt in it: bad input
    ("activations reset-key act_00000000000000000000", 3),
    ("usage show --since yesterday", 2),
    ("usage import {tmp}/no-such.report", 66),
    ("usage import {report}", 2),
    ("usage terms nope --counter units", 3),
    ("usage terms std --meter welding:units:0:30d", 2),
    ("provision {key} --root {tmp}", 2),
    ("provision {key} --csv {tmp}/no-such.csv", 66),
    ("sites assign site-7 --fingerprints /nonexistent", 66),
    ("sites assign site-7 act_00000000000000000000", 3),
    ("--home {broken}/home sites list", 78),
    ("sites remove {act}", 3),  # at no site
    ("field export -o {tmp}/b", 2),
    ("field export --fingerprints /nonexistent -o {tmp}/b", 66),
    ("field serve {tmp}/no-such.bundle", 66),
    ("field serve {tmp}/bad.bundle", 65),
    ("field import {report}", 1),
    ("field import {tmp}/no-such.report", 66),
    ("field import {tmp}/bad.report", 65),
    ("field import {tmp}/bad-usage.report", 65),  # a usage report entry without its fields
    ("activations reset-key act_00000000000000000000", 3),
    ("field relay --hq http://192.0.2.1 --license-key-file {keyfile} --request {report} -o a", 2),
    ("field relay --hq https://h --license-key-file {report} --request {report} -o a", 2),
    ("field relay --hq https://h --license-key-file {keyfile} --request {tmp}/no -o a", 66),
    (
        "field relay --hq https://127.0.0.1:{closed} --license-key-file {keyfile} "
        "--request {report} -o {tmp}/a",
        69,
    ),
    ("serve --tls-cert {report}", 2),
    ("tokens create tests", 1),
    ("tokens create bad/name", 2),
    ("--home {broken}/home tokens list", 78),
    ("tokens revoke nosuchtoken", 3),
    ("audit --limit 0", 2),
    ("bridge --broker http://127.0.0.1:{closed}", 2),
    ("bridge --broker mqtt://127.0.0.1:{closed}", 69),
    ("push --broker mqtt://127.0.0.1:{closed}", 2),
    ("push --broker mqtt://127.0.0.1:{closed} --license {lid}", 69),
    ("broker-config -o {report}/sub", 73),
    ("--home {broken}/home db status", 78),
    ("--home {broken}/home db upgrade", 78),
    ("--home {broken}/home db seal-keys", 78),
    ("db copy --to mysql://db/hq", 78),
    ("db copy --to sqlite://{tmp}/missing/copy.sqlite3", 78),
    ("--database postgresql://127.0.0.1:{closed}/hq db status", 74),
    ("backup -o {tmp}/missing/hq.backup", 73),
    ("backup -o {tmp}/hq.backup --with-secrets", 2),
    ("restore {report}", 78),  # this home is not empty
    ("--home {tmp}/fresh restore {tmp}/no-such.backup", 65),
    ("--home {tmp}/fresh restore {report}", 65),  # not a backup
    ("no-such-command", 2),
]


def leaf_commands(group: click.Group, prefix: str = "") -> set[str]:
    found: set[str] = set()
    for name, command in subcommands(group):
        if isinstance(command, click.Group):
            found |= leaf_commands(command, f"{prefix}{name} ")
        else:
            found.add(prefix + name)
    return found


def command_of(line: str) -> str:
    words = re.sub(r"^--home \S+ ", "", line).split()
    return " ".join(words[:2]) if " ".join(words[:2]) in leaf_commands(cli) else words[0]


def test_the_table_names_every_command() -> None:
    assert leaf_commands(cli) - {command_of(line) for line, _ in FAILURES} == set()


@pytest.fixture
def world(hq: Run, license_key: str, tmp_path: Path) -> dict[str, str]:
    """One license on the 2-seat plan with both seats taken, a revoked license, a key,
    a report already imported, a file that is no directory."""
    first = hq("activate", license_key, "--fingerprint", fingerprint(1), "--json").json()
    hq("activate", license_key, "--fingerprint", fingerprint(2))
    assert hq("tokens", "create", "tests").code == 0
    revoked = hq("licenses", "create", "--plan", "std", "--json").json()["id"]
    assert hq("licenses", "revoke", revoked, "--yes").code == 0
    bundle = tmp_path / "site.bundle"
    assert hq("field", "export", "--all", "-o", str(bundle)).code == 0
    exported = json.loads(bundle.read_text())
    report = tmp_path / "site.report"
    report.write_text(
        json.dumps(
            {
                "format": "fieldpass-field-report",
                "v": 2,
                "bundle_id": exported["id"],
                "bundle_created_at": exported["created_at"],
                "served_from": "127.0.0.1:8750",
                "operator": "tech",
                "started_at": exported["created_at"],
                "ended_at": exported["created_at"],
                "pickups": [],
                "served_unconfirmed": [],
                "unidentified_revocation_requests": [],
                "not_picked_up": [],
            }
        )
    )
    (tmp_path / "bad.report").write_text(report.read_text().replace('"v": 2', '"v": "2"'))
    usage = json.loads(report.read_text())
    usage["usage_reports"] = [{"activation_id": first["activation_id"], "report": "AAAA"}]
    (tmp_path / "bad-usage.report").write_text(json.dumps(usage))
    (tmp_path / "bad.bundle").write_text(bundle.read_text().replace('"devices"', '"devises"'))
    assert hq("field", "import", str(report)).code == 0
    (tmp_path / "license.key").write_text(license_key + "\n")
    broken = tmp_path / "not-a-directory"
    broken.write_text("")
    os.mkfifo(tmp_path / "fifo")
    return {
        "key": license_key,
        "keyfile": str(tmp_path / "license.key"),
        "lid": first["license_id"],
        "act": first["activation_id"],
        "kid": hq("keys", "list", "--json").json()[0]["kid"],
        "revoked": revoked,
        "report": str(report),
        "broken": str(broken),
        "tmp": str(tmp_path),
        "fifo": str(tmp_path / "fifo"),
        "closed": str(free_port()),  # nothing listens there
    }


@pytest.mark.parametrize(("line", "code"), FAILURES)
def test_each_failure_has_its_documented_code(
    hq: Run, home: Path, world: dict[str, str], line: str, code: int
) -> None:
    args = line.format(**world).split()
    if args[0] == "bridge":  # it takes over SIGTERM and SIGINT: not inside pytest
        done = subprocess.run(
            [FIELDPASS_HQ, "--home", str(home), *args], capture_output=True, text=True, timeout=60
        )
        res = Result(done.returncode, done.stdout, done.stderr)
    else:
        res = hq(*args)
    assert res.code == code, res.err
    assert res.err.startswith("fieldpass-hq: error: ")
    assert res.err.count("\n") == 1, res.err  # one line
    assert "Errno" not in res.err and "Traceback" not in res.err
    assert world["key"] not in res.err + res.out


def test_every_documented_code_is_in_docs() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "hq.md").read_text()
    table = doc[doc.index("### Exit codes") :]
    for code in {c for _, c in FAILURES} | {0, 70, 74, 130}:
        assert f"\n| {code} |" in table, f"exit {code} is not in docs/hq.md"
