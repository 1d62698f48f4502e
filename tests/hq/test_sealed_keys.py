"""License keys are sealed at rest (storage/sealing.py, provisioning/sealed_keys.py), on
both engines: the database, a dump of it or a backup without secrets holds no license
key in clear; a home without the secret, or with another one, says so in one line and
makes none of its own; keys left in clear by an HQ before schema 12 are sealed at the
next start."""

import base64
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.wire import license_key
from provisioning.errors import ConfigError, StorageError
from provisioning.storage import sealing
from tests.engines import Engine, connect, snapshot, url_of

from .conftest import fingerprint
from .server import free_port
from .test_db import populated, run

SECRET = "license-keys.secret"


def _every_value(home: Path) -> str:
    return repr(snapshot(home))


def _second_home(home: Path, tmp_path: Path, name: str) -> Path:
    """Another HQ home on the same database, holding nothing but the database setting
    (as a second host before its secrets are copied)."""
    other = tmp_path / name
    other.mkdir()
    url = url_of(home)
    target = url if url is not None else f"sqlite:///{(home / 'hq.sqlite3').absolute()}"
    (other / "hq.toml").write_text(f'[database]\nurl = "{target}"\n')
    return other


def test_a_database_holds_no_license_key_in_clear(hq_engine: Engine, tmp_path: Path) -> None:
    home = tmp_path / "hq"
    key = populated(home, hq_engine)
    rows = snapshot(home)["licenses"]
    assert rows and all(str(r[1]).startswith(sealing.PREFIX) for r in rows)
    everything = _every_value(home)
    assert key not in everything and key.replace("-", "") not in everything
    assert (home / SECRET).stat().st_mode & 0o777 == 0o600
    # and HQ reads its keys as before: a new activation, a license found by its key
    assert run(home, "activate", key, "--fingerprint", fingerprint(7)).returncode == 0
    shown = json.loads(run(home, "licenses", "show", key, "--json").stdout)
    assert shown["id"] == license_key.license_id(key)


def test_a_home_without_the_secret_says_so_and_makes_none(
    hq_engine: Engine, tmp_path: Path
) -> None:
    """A second host on the same database before its secrets are copied, or with
    another home's secret, or with a corrupt one: one line, exit 78, no key in it, no
    secret made; with the first host's secret copied, it works."""
    home = tmp_path / "hq"
    key = populated(home, hq_engine)
    other = _second_home(home, tmp_path, "host-b")

    def refused(why: str) -> None:
        res = run(other, "activate", key, "--fingerprint", fingerprint(8), check=False)
        line = res.stderr.strip()
        assert res.returncode == 78 and "\n" not in line and why in line, res.stderr
        assert key not in res.stderr and SECRET in line

    refused("missing")
    assert not (other / SECRET).exists()  # no secret of its own, nothing sealed with it
    assert run(other, "audit", "--json").returncode == 0  # what reads no key still works
    # a server or a bridge there would take traffic it cannot answer: neither starts
    port = str(free_port())
    for args in (("serve", "--port", port), ("bridge", "--broker", f"mqtt://127.0.0.1:{port}")):
        res = run(other, *args, check=False)
        assert res.returncode == 78 and SECRET in res.stderr, res.stderr
    # nor is a backup with secrets made there: it could not open the keys
    (other / "pass").write_text("correct horse battery staple\n")
    res = run(other, "backup", "-o", str(other / "b"), "--with-secrets", "--passphrase-file",
              str(other / "pass"), check=False)  # fmt: skip
    assert res.returncode == 78 and not (other / "b").exists(), res.stderr
    (other / SECRET).write_bytes(base64.b64encode(os.urandom(32)) + b"\n")  # another home's
    refused("holds secret")
    (other / SECRET).write_text("not base64!\n")
    refused("corrupt")
    (other / SECRET).unlink()
    shutil.copy(home / SECRET, other / SECRET)
    shutil.copytree(home / "keys", other / "keys", dirs_exist_ok=True)  # and the seeds
    assert run(other, "activate", key, "--fingerprint", fingerprint(8)).returncode == 0


def _key_in_clear(home: Path, key: str) -> None:
    """Put ``key`` back in clear in its license's row, as an HQ before schema 12 held it."""
    with connect(home) as conn:
        sql = "UPDATE licenses SET license_key = {p} WHERE id = {p}"
        conn.execute(
            sql.format(p="%s" if url_of(home) else "?"), (key, license_key.license_id(key))
        )
        if url_of(home) is None:
            conn.commit()


def _key_state(home: Path) -> str:
    doc = json.loads(run(home, "db", "status", "--json").stdout)
    return str(doc["license_keys"]["state"])


def test_an_upgraded_database_keeps_its_keys_in_clear_until_seal_keys(
    hq_engine: Engine, tmp_path: Path
) -> None:
    """Upgraded from schema 11, the keys stay in clear (an HQ of the release before,
    still running beside this one in a rolling upgrade, reads them so) until
    ``db seal-keys``; a key an older HQ writes in clear after that is sealed at the next
    start."""
    home = tmp_path / "hq"
    key = populated(home, hq_engine)
    (home / SECRET).unlink()
    _key_in_clear(home, key)
    with connect(home) as conn:  # back to schema 11
        conn.execute("DROP TABLE sealing")
        conn.execute("DELETE FROM schema_version WHERE version = 12")
        if url_of(home) is None:
            conn.commit()
    assert run(home, "activate", key, "--fingerprint", fingerprint(3)).returncode == 0
    assert key in _every_value(home) and not (home / SECRET).exists()
    assert _key_state(home) == "in_clear"
    assert "seal-keys" in run(home, "db", "status").stdout
    done = json.loads(run(home, "db", "seal-keys", "--json").stdout)
    assert (done["sealed"], done["created"]) == (1, True)
    assert key not in _every_value(home) and _key_state(home) == "sealed"
    assert run(home, "activate", key, "--fingerprint", fingerprint(4)).returncode == 0
    again = json.loads(run(home, "db", "seal-keys", "--json").stdout)
    assert (again["sealed"], again["created"], again["secret"]) == (0, False, done["secret"])
    _key_in_clear(home, key)  # an older HQ, still running, wrote it so
    assert run(home, "activate", key, "--fingerprint", fingerprint(5)).returncode == 0
    assert key not in _every_value(home)


def test_a_backup_without_secrets_holds_no_license_key(tmp_path: Path) -> None:
    import gzip

    home = tmp_path / "hq"
    key = populated(home, Engine("sqlite"))
    out = tmp_path / "plain.backup"
    run(home, "backup", "-o", str(out))
    text = gzip.decompress(out.read_bytes())
    assert key.encode() not in text and key.replace("-", "").encode() not in text
    assert (home / SECRET).read_bytes().strip() not in text


# -- the sealing itself -----------------------------------------------------------------


@given(key=st.builds(license_key.generate), license_id=st.text(min_size=1, max_size=40))
def test_a_sealed_key_opens_to_itself_and_only_on_its_own_row(key: str, license_id: str) -> None:
    box = sealing.SealedLicenseKeys(b"\x01" * 32)
    sealed = box.seal(license_id, key)
    assert sealed.startswith(f"{sealing.PREFIX}{box.kid}:") and key not in sealed
    assert box.open(license_id, sealed) == key
    with pytest.raises(StorageError):
        box.open(license_id + "x", sealed)  # moved to another license's row
    with pytest.raises(ConfigError):
        sealing.SealedLicenseKeys(b"\x02" * 32).open(license_id, sealed)  # another secret
    with pytest.raises(ConfigError):
        sealing.UNSEALED.open(license_id, sealed)
    assert sealing.UNSEALED.open(license_id, key) == key  # a key in clear reads as it is


def test_an_altered_sealed_key_does_not_open() -> None:
    box = sealing.SealedLicenseKeys(b"\x03" * 32)
    key = license_key.generate()
    sealed = box.seal("lic_1", key)
    for i in range(len(box.seal("lic_1", key)) - 1, len(sealing.PREFIX) + 17, -7):
        flipped = sealed[:i] + ("A" if sealed[i] != "A" else "B") + sealed[i + 1 :]
        with pytest.raises((StorageError, ConfigError)):
            box.open("lic_1", flipped)


def test_a_lost_record_never_makes_a_new_secret(hq_engine: Engine, tmp_path: Path) -> None:
    """The ``sealing`` row deleted by hand (a partial dump, a hand migration): the
    sealed keys name their secret, so a home without it refuses as before, and the
    home that holds it records it again."""
    home = tmp_path / "hq"
    key = populated(home, hq_engine)
    with connect(home) as conn:
        conn.execute("DELETE FROM sealing")
        if url_of(home) is None:
            conn.commit()
    other = _second_home(home, tmp_path, "host-b")
    res = run(other, "activate", key, "--fingerprint", fingerprint(8), check=False)
    assert res.returncode == 78 and "missing" in res.stderr, res.stderr
    assert not (other / SECRET).exists()
    assert run(home, "activate", key, "--fingerprint", fingerprint(9)).returncode == 0
    assert _key_state(home) == "sealed" and _key_state(other) == "secret_missing"


def test_a_process_started_before_seal_keys_opens_the_keys_sealed_since(
    hq_engine: Engine, tmp_path: Path
) -> None:
    """A process of this release that started on keys in clear (before ``db
    seal-keys``) goes on working once they are sealed: it opens them with its home's
    secret, and seals the keys it writes from then on."""
    from provisioning.models import Actor
    from provisioning.services import HQ
    from provisioning.storage.sealing import ClearLicenseKeys

    home = tmp_path / "hq"
    key = populated(home, hq_engine)
    (home / SECRET).unlink()
    _key_in_clear(home, key)
    with connect(home) as conn:
        conn.execute("DELETE FROM sealing")
        if url_of(home) is None:
            conn.commit()
    running = HQ(home)
    try:
        assert isinstance(running.store.license_keys, ClearLicenseKeys)
        assert run(home, "db", "seal-keys").returncode == 0
        assert running.get_license(key)[0].license_key == key  # found by its sealed key
        new = running.create_license("std", [], None, 1000, Actor("test", "local"))
        assert new.license_key not in _every_value(home)
    finally:
        running.store.close()
