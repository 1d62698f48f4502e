"""``fieldpass-hq db status|upgrade|copy`` and ``backup|restore`` on both engines, and
the schema rules: the same migrations create and upgrade both, a server refuses a
schema newer than it knows, the audit log is append-only in each engine itself."""

import gzip
import json
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx

from provisioning.storage import SCHEMA_VERSION, copy, open_store
from provisioning.storage import postgres as pg_engine
from provisioning.storage import sqlite as sqlite_engine
from tests.engines import Engine, connect, snapshot, url_of
from tests.pg_server import Postgres

from .conftest import fingerprint
from .server import FIELDPASS_HQ, hq_cli, hq_json, prepare_home, start_server


def run(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [FIELDPASS_HQ, "--home", str(home), *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert res.returncode == 0, res.stderr
    return res


def populated(home: Path, engine: Engine) -> str:
    """A home on ``engine`` with a key, a plan, a license, two activations (one off), a
    site, a token and their audit lines; returns the license key."""
    engine.configure(home)
    prepare_home(home, seats=5)
    key = str(hq_json(home, "licenses", "create", "--plan", "std", "--entitlement", "nav")["key"])
    ids = [
        str(hq_json(home, "activate", key, "--fingerprint", fingerprint(n))["activation_id"])
        for n in (1, 2)
    ]
    hq_cli(home, "deactivate", ids[1])
    hq_cli(home, "sites", "assign", "plant-7", ids[0])
    return key


def test_status_and_upgrade_from_version_1(hq_engine: Engine, tmp_path: Path) -> None:
    """A database made at schema 1 (by each engine's own version-1 DDL) is reported as
    behind, upgraded by ``db upgrade`` with its seats counted, then current."""
    home = tmp_path / "hq"
    url = hq_engine.configure(home)
    statements = (pg_engine if url_of(home) else sqlite_engine).MIGRATIONS[0][1]
    with connect(home) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in statements:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute("INSERT INTO plans VALUES ('std', 'default', 86400, 0, NULL, 5, 0)")
        conn.execute("INSERT INTO licenses VALUES ('lic_a', 'FP-A', 'std', 'active', NULL, 0, 0)")
        for n, off in enumerate([None, None, 10]):
            conn.execute(
                f"INSERT INTO activations VALUES ('act_{n}', 'lic_a', '{fingerprint(n)}', 1, 0,"
                f" 0, 1, {'NULL' if off is None else off})"
            )
        if url_of(home) is None:
            conn.commit()
    status = json.loads(run(home, "db", "status", "--json").stdout)
    assert status["state"] == "behind" and status["schema_version"] == 1
    assert [p["version"] for p in status["pending"]] == list(range(2, SCHEMA_VERSION + 1))
    up = json.loads(run(home, "db", "upgrade", "--json").stdout)
    assert up["from"] == 1 and up["to"] == SCHEMA_VERSION
    assert up["applied"] == list(range(2, SCHEMA_VERSION + 1))
    assert json.loads(run(home, "db", "status", "--json").stdout)["state"] == "current"
    again = json.loads(run(home, "db", "upgrade", "--json").stdout)
    assert again["applied"] == []
    lic = next(r for r in snapshot(home)["licenses"] if r[0] == "lic_a")
    assert lic[7] == 2  # seats_used counted by migration 2
    assert url.split("@")[-1] not in run(home, "db", "status").stdout  # never the URL


def test_waiting_returns_carried_over_version_10_free_their_seats_when_due(
    hq_engine: Engine, tmp_path: Path
) -> None:
    """Returns recorded at schema 9 (without a TPM, each seat waiting for its file's
    expiry and grace): ``db upgrade`` puts each one's time on its activation, and an
    activation on the full license frees the one that is due, not the other."""
    import time

    from provisioning.models import ReturnRecord

    home = tmp_path / "hq"
    url = hq_engine.configure(home)
    prepare_home(home, seats=2)
    key = str(hq_json(home, "licenses", "create", "--plan", "std")["key"])
    due, waiting = (
        str(hq_json(home, "activate", key, "--fingerprint", fingerprint(n))["activation_id"])
        for n in (1, 2)
    )
    now = int(time.time())
    store = open_store(url)
    try:
        with store.write() as tx:
            for act, frees_at in ((due, now - 60), (waiting, now + 86_400)):
                tx.insert_return(
                    ReturnRecord(act, 1, now - 120, now - 120, "http", "-", frees_at, None)
                )
    finally:
        store.close()
    with connect(home) as conn:  # back to schema 9: what an HQ of the release before held
        conn.execute("DROP TABLE sealing")  # version 12
        conn.execute("ALTER TABLE activations DROP COLUMN files_run_until")  # version 11
        conn.execute("DROP INDEX activations_returning")
        conn.execute("ALTER TABLE activations DROP COLUMN return_frees_at")
        conn.execute("UPDATE schema_version SET version = 9")
        if url_of(home) is None:
            conn.commit()
    up = json.loads(run(home, "db", "upgrade", "--json").stdout)
    assert up["from"] == 9 and up["applied"] == list(range(10, SCHEMA_VERSION + 1))
    third = hq_json(home, "activate", key, "--fingerprint", fingerprint(3))
    assert third["created"] is True  # the due return's seat freed for it
    full = run(home, "activate", key, "--fingerprint", fingerprint(4), check=False)
    assert full.returncode == 1 and "seats in use" in full.stderr
    live = {
        str(a["activation_id"])
        for a in hq_json(home, "licenses", "show", key)["activations"]
        if a["live"]
    }  # type: ignore[attr-defined, index]
    assert live == {waiting, str(third["activation_id"])}


def test_a_newer_schema_is_refused_by_every_command_and_the_server(
    hq_engine: Engine, tmp_path: Path
) -> None:
    home = tmp_path / "hq"
    hq_engine.configure(home)
    prepare_home(home)
    with connect(home) as conn:
        conn.execute(f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION + 1})")
        if url_of(home) is None:
            conn.commit()
    for args in (("plans", "list"), ("db", "upgrade"), ("serve", "--port", "0")):
        res = run(home, *args, check=False)
        assert res.returncode == 78, (args, res.stderr)
        assert "newer than this fieldpass-hq" in res.stderr and len(res.stderr.splitlines()) == 1
    status = json.loads(run(home, "db", "status", "--json").stdout)
    assert status["state"] == "newer"


def test_db_copy_moves_everything_from_sqlite_to_postgresql_verified(
    tmp_path: Path, postgres_server: Postgres
) -> None:
    home = tmp_path / "hq"
    key = populated(home, Engine("sqlite"))
    before = snapshot(home)
    target = postgres_server.database()
    res = run(home, "db", "copy", "--to", target, "--json")
    doc = json.loads(res.stdout)
    assert doc["verified"] is True and doc["from"] == "sqlite" and doc["to"] == "postgresql"
    assert postgres_server.password not in res.stdout + res.stderr
    assert doc["tables"]["activations"]["rows"] == 2 and doc["tables"]["audit"]["rows"] >= 8
    # the same rows, table by table, in the new database
    (home / "hq.toml").write_text(f'[database]\nurl = "{target}"\n')
    after = snapshot(home)
    assert after == before
    # and HQ goes on there: the audit ids continue, the seats count, the key works
    again = hq_json(home, "activate", key, "--fingerprint", fingerprint(3))
    assert again["created"] is True
    audit = snapshot(home)["audit"]
    assert max(r[0] for r in audit) == max(r[0] for r in before["audit"]) + 1
    assert {r[0]: r[7] for r in snapshot(home)["licenses"]}[again["license_id"]] == 2
    # a second copy into the same (now not empty) database is refused, nothing changed
    res = run(
        home.parent / "other", "--database", target, "db", "copy", "--to", target, check=False
    )
    assert res.returncode == 78 and "not empty" in res.stderr


def test_db_copy_refuses_a_target_that_cannot_be_reached_without_echoing_it(
    tmp_path: Path, postgres_server: Postgres
) -> None:
    home = tmp_path / "hq"
    populated(home, Engine("sqlite"))
    wrong = postgres_server.database().replace(postgres_server.password, "not-the-password")
    res = run(home, "db", "copy", "--to", wrong, check=False)
    assert res.returncode == 74 and len(res.stderr.splitlines()) == 1
    assert "not-the-password" not in res.stderr and "password authentication failed" in res.stderr


def activate_stream(url: str, key: str, first: int, stop: threading.Event, out: list[Any]) -> None:
    """Activate devices first, first+8, ... until stopped; record (answered-at order,
    activation id) of every 201."""
    n = first
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            res = client.post(
                url + "/v1/activate", json={"license_key": key, "fingerprint": fingerprint(n)}
            )
            if res.status_code == 201:
                out.append(res.json()["activation_id"])
            n += 8


def test_a_backup_taken_under_load_restores_every_answered_activation(
    hq_engine: Engine, tmp_path: Path
) -> None:
    """Activations stream into a running server while ``backup`` runs; the backup,
    restored into an empty home (and a new database), holds every activation answered
    201 before the backup started, each with its audit line, and serves again."""
    home = tmp_path / "hq"
    hq_engine.configure(home)
    prepare_home(home, seats=1_000_000)
    key = str(hq_json(home, "licenses", "create", "--plan", "std")["key"])
    hq_cli(home, "broker-config", "-o", str(tmp_path / "broker"))  # makes the MQTT secret
    server = start_server(home, "--workers", "2")
    answered: list[str] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=activate_stream, args=(server.url, key, k, stop, answered))
        for k in range(8)
    ]
    try:
        for t in threads:
            t.start()
        while len(answered) < 200:
            threading.Event().wait(0.05)
        before_backup = set(answered)
        passphrase = tmp_path / "pass"
        passphrase.write_text("correct horse battery staple\n")
        out = tmp_path / "hq.backup"
        run(home, "backup", "-o", str(out), "--with-secrets", "--passphrase-file", str(passphrase))
        during = len(answered)
        while len(answered) < during + 100:  # the server went on while it ran
            threading.Event().wait(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        server.stop()
    assert out.stat().st_mode & 0o777 == 0o600
    restored = tmp_path / "restored"
    hq_engine.configure(restored)
    doc = json.loads(
        run(restored, "restore", str(out), "--passphrase-file", str(passphrase), "--json").stdout
    )
    assert doc["verified"] is True
    assert sorted(doc["secrets_restored"]) == sorted(
        [f"keys/{p.name}" for p in (home / "keys").iterdir()]
        + ["mqtt.secret", "license-keys.secret"]
    )
    for name in ("mqtt.secret", "license-keys.secret"):
        assert (restored / name).read_bytes() == (home / name).read_bytes()
    snap = snapshot(restored)
    acts = {r[0] for r in snap["activations"]}
    assert before_backup <= acts  # nothing answered 201 before the backup is missing
    audited = {r[6] for r in snap["audit"] if r[4] == "activate"}
    assert audited == acts  # and the backup is one moment: each row with its audit line
    seats = {r[0]: r[7] for r in snap["licenses"]}
    assert set(seats.values()) == {len(acts)}
    # the restored HQ signs with the restored key
    again = hq_json(restored, "activate", key, "--fingerprint", fingerprint(10**6))
    assert again["created"] is True


def test_a_backup_without_secrets_holds_no_seed_and_a_bad_one_is_refused(
    tmp_path: Path,
) -> None:
    home = tmp_path / "hq"
    populated(home, Engine("sqlite"))
    out = tmp_path / "plain.backup"
    run(home, "backup", "-o", str(out))
    text = gzip.decompress(out.read_bytes())
    for seed in (home / "keys").iterdir():
        assert seed.read_bytes().strip() not in text
    assert b'"secrets"' not in text
    # restore needs an empty home and an intact file
    res = run(home, "restore", str(out), check=False)
    assert res.returncode == 78 and "empty home" in res.stderr
    lines = text.splitlines()
    for broken in (
        b"\n".join(lines[:-3]) + b"\n",  # cut short
        text.replace(b'"plans"', b'"plans2"', 1),
        b"\n".join([lines[0], b"[" * 100000 + b"]" * 100000, *lines[1:]]) + b"\n",
        b"\n".join([lines[0], b'"' + b"A" * (2 * 1024 * 1024) + b'"', *lines[1:]]) + b"\n",
        b"not gzip at all",
    ):
        bad = tmp_path / "bad.backup"
        bad.write_bytes(broken if broken == b"not gzip at all" else gzip.compress(broken))
        target = tmp_path / f"r{len(broken)}"
        res = run(target, "restore", str(bad), check=False)
        assert res.returncode == 65, res.stderr
        assert len(res.stderr.splitlines()) == 1 and "Traceback" not in res.stderr
        with sqlite3.connect(target / "hq.sqlite3") as conn:
            assert conn.execute("SELECT COUNT(*) FROM licenses").fetchone() == (0,)
    # with secrets, a wrong passphrase restores the database but no secret
    passphrase = tmp_path / "pass"
    passphrase.write_text("correct horse battery staple\n")
    sealed = tmp_path / "sealed.backup"
    run(home, "backup", "-o", str(sealed), "--with-secrets", "--passphrase-file", str(passphrase))
    for seed in (home / "keys").iterdir():  # sealed: the seed's text is not in the file
        assert seed.read_bytes().strip() not in gzip.decompress(sealed.read_bytes())
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase at all\n")
    res = run(
        tmp_path / "r-wrong", "restore", str(sealed), "--passphrase-file", str(wrong), check=False
    )
    assert res.returncode == 65 and "wrong passphrase" in res.stderr


def test_copy_digests_are_the_same_on_both_engines(
    tmp_path: Path, postgres_server: Postgres
) -> None:
    home = tmp_path / "hq"
    populated(home, Engine("sqlite"))
    source = open_store(f"sqlite://{home / 'hq.sqlite3'}")
    target = open_store(postgres_server.database())
    try:
        assert copy.copy(source, target) == copy.sums(source) == copy.sums(target)
    finally:
        source.close()
        target.close()
