"""The local CLI (issue 2, HQ part): keys, plans, licenses, activate, renew, deactivate."""

import calendar
import os
import stat
import subprocess
from pathlib import Path

import pytest

from agent.wire import armor, license_key
from agent.wire.keys import Keyring
from agent.wire.machine_file import open_machine_file

from .conftest import FIELDPASS_HQ, Run, fingerprint


def keyring(hq: Run) -> Keyring:
    res = hq("keys", "export")
    assert res.code == 0
    return Keyring.loads(res.out.encode())


def test_keys_are_private_and_never_printed(hq: Run, home: Path) -> None:
    res = hq("keys", "generate", "--json")
    assert res.code == 0
    kid = res.json()["kid"]
    seed_file = home / "keys" / f"{kid}.seed"
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "hq.sqlite3").stat().st_mode) == 0o600
    seed_text = seed_file.read_text().strip()
    for args in (["keys", "list"], ["keys", "list", "--json"], ["keys", "export"]):
        out = hq(*args).out
        assert kid in out
        assert seed_text not in out


def test_second_key_becomes_active_and_export_has_both(hq: Run, tmp_path: Path) -> None:
    first = hq("keys", "generate").out.strip()
    second = hq("keys", "generate").out.strip()
    listed = hq("keys", "list", "--json").json()
    assert [k["active"] for k in listed if k["kid"] == second] == [True]
    assert [k["active"] for k in listed if k["kid"] == first] == [False]
    out = tmp_path / "keyring"
    assert hq("keys", "export", "-o", str(out)).code == 0
    assert set(Keyring.loads(out.read_bytes()).keys) == {first, second}


def test_full_flow_file_opens_on_the_device(hq: Run, license_key: str, tmp_path: Path) -> None:
    fp = fingerprint(1)
    out = tmp_path / "m.lic"
    res = hq("activate", license_key, "--fingerprint", fp, "-o", str(out), "--json")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["serial"] == 1 and doc["file"] == str(out) and doc["created"] is True
    claims = open_machine_file(out.read_bytes(), keyring(hq), license_key, fp)
    assert claims.activation_id == doc["activation_id"]
    assert claims.expires_at - claims.issued_at == 365 * 86400
    assert claims.grace_s == 30 * 86400
    assert claims.warn_s == 365 * 86400 // 3
    assert claims.issued_at == claims.not_before
    assert claims.product == "default" and claims.plan == "std"
    assert claims.license_id == license_key_id(license_key)


def license_key_id(key: str) -> str:
    return license_key.license_id(key)


def test_armored_to_stdout_and_armored_file(hq: Run, license_key: str, tmp_path: Path) -> None:
    fp = fingerprint(2)
    res = hq("activate", license_key, "--fingerprint", fp)
    assert res.code == 0
    data = armor.unarmor(res.out, armor.MACHINE_FILE)
    assert open_machine_file(data, keyring(hq), license_key, fp).serial == 1
    out = tmp_path / "m.txt"
    assert hq("activate", license_key, "--fingerprint", fp, "--armor", "-o", str(out)).code == 0
    claims = open_machine_file(
        armor.unarmor(out.read_text(), armor.MACHINE_FILE), keyring(hq), license_key, fp
    )
    assert claims.serial == 2


def test_seat_limit_and_same_device_again(hq: Run, license_key: str) -> None:
    a = hq("activate", license_key, "--fingerprint", fingerprint(1), "--json").json()
    hq("activate", license_key, "--fingerprint", fingerprint(2), "--json")
    refused = hq("activate", license_key, "--fingerprint", fingerprint(3), "--json")
    assert refused.code == 1
    assert refused.out == ""
    assert refused.err.startswith("fieldpass-hq: error: ") and "seats" in refused.err
    assert refused.err.count("\n") == 1
    again = hq("activate", license_key, "--fingerprint", fingerprint(1), "--json")
    assert again.code == 0
    assert again.json()["activation_id"] == a["activation_id"]
    assert again.json()["serial"] == 2 and again.json()["created"] is False
    shown = hq("licenses", "show", license_key_id(license_key), "--json").json()
    assert shown["seats_used"] == 2


def test_renew_and_deactivate(hq: Run, license_key: str, tmp_path: Path) -> None:
    fp = fingerprint(1)
    act = hq("activate", license_key, "--fingerprint", fp, "--json").json()["activation_id"]
    hq("activate", license_key, "--fingerprint", fingerprint(2))
    out = tmp_path / "r.lic"
    res = hq("machine-file", act, "--ttl", "30d", "-o", str(out), "--json")
    assert res.code == 0, res.err
    claims = open_machine_file(out.read_bytes(), keyring(hq), license_key, fp)
    assert claims.serial == 2 and claims.expires_at - claims.issued_at == 30 * 86400
    capped = hq("machine-file", act, "--ttl", "9999d", "--json").json()
    assert capped["expires_at"] - capped["issued_at"] == 365 * 86400
    assert capped["serial"] == 3
    assert hq("deactivate", act).code == 0
    assert hq("machine-file", act).code == 3
    assert hq("deactivate", act).code == 3
    assert hq("activate", license_key, "--fingerprint", fingerprint(3)).code == 0


def test_suspend_reinstate_revoke(hq: Run, license_key: str) -> None:
    lid = license_key_id(license_key)
    fp = fingerprint(1)
    act = hq("activate", license_key, "--fingerprint", fp, "--json").json()["activation_id"]
    assert hq("licenses", "suspend", lid).code == 0
    res = hq("activate", license_key, "--fingerprint", fp)
    assert res.code == 1 and "suspended" in res.err
    assert hq("machine-file", act).code == 1
    assert hq("licenses", "reinstate", lid).code == 0
    assert hq("machine-file", act).code == 0
    assert hq("licenses", "revoke", lid, "--yes", "--json").json()["status"] == "revoked"
    assert "revoked" in hq("activate", license_key, "--fingerprint", fp).err
    assert hq("licenses", "reinstate", lid).code == 1
    actions = [e["action"] for e in hq("audit", "--json").json()]
    for action in ("activate", "renew", "suspend", "reinstate", "revoke"):
        assert action in actions


def test_expired_license_refused(hq: Run, license_key: str) -> None:
    res = hq("licenses", "create", "--plan", "std", "--expires", "2000-01-01")
    assert res.code == 2  # expires before it is created


def test_license_expiry_caps_the_file_and_entitlements_carry(hq: Run, license_key: str) -> None:
    res = hq(
        "licenses",
        "create",
        "--plan",
        "std",
        "--expires",
        "2099-01-01",
        "--entitlement",
        "weld",
        "--entitlement",
        "vision:2098-06-30",
        "--json",
    )
    assert res.code == 0, res.err
    key = res.json()["key"]
    fp = fingerprint(9)
    out = hq("activate", key, "--fingerprint", fp, "--json").json()
    data = armor.unarmor(out["machine_file"], armor.MACHINE_FILE)
    claims = open_machine_file(data, keyring(hq), key, fp)
    assert claims.license_expires_at == calendar.timegm((2099, 1, 1, 0, 0, 0))
    assert {(e.feature, e.expires_at) for e in claims.entitlements} == {
        ("weld", None),
        ("vision", calendar.timegm((2098, 6, 30, 0, 0, 0))),
    }


def test_keys_never_listed(hq: Run, license_key: str) -> None:
    for args in (
        ["licenses", "list"],
        ["licenses", "list", "--json"],
        ["audit", "--json"],
        ["licenses", "show", license_key_id(license_key), "--json"],
    ):
        assert license_key not in hq(*args).out


def test_errors_and_exit_codes(hq: Run, license_key: str) -> None:
    assert hq("activate", license_key, "--fingerprint", "xyz").code == 2
    assert hq("activate", "not-a-key", "--fingerprint", fingerprint(1)).code == 2
    unknown = license_key[:-1] + ("A" if license_key[-1] != "A" else "B")
    assert hq("activate", unknown, "--fingerprint", fingerprint(1)).code == 3
    assert hq("machine-file", "act_nope").code == 3
    assert hq("licenses", "create", "--plan", "nope").code == 3
    assert hq("plans", "create", "std", "--offline-ttl", "1d", "--seats", "1").code == 1
    assert hq("plans", "create", "x", "--offline-ttl", "forever", "--seats", "1").code == 2
    assert hq("no-such-command").code == 2


def test_no_signing_key_is_a_config_error(hq: Run) -> None:
    hq("plans", "create", "p", "--offline-ttl", "1d", "--seats", "1")
    key = hq("licenses", "create", "--plan", "p").out.strip()
    res = hq("activate", key, "--fingerprint", fingerprint(1))
    assert res.code == 78 and "keys generate" in res.err


def test_unwritable_output_is_cantcreat(hq: Run, license_key: str, tmp_path: Path) -> None:
    res = hq(
        "activate",
        license_key,
        "--fingerprint",
        fingerprint(1),
        "-o",
        str(tmp_path / "missing-dir" / "m.lic"),
    )
    assert res.code == 73


def test_no_arguments_show_the_help_not_an_error(hq: Run) -> None:
    for group in ([], ["keys"], ["licenses"], ["field"]):
        res = hq(*group)
        assert res.code == 0, res.err
        assert res.err == ""
        assert res.out.startswith(f"Usage: fieldpass-hq {' '.join(group)}".rstrip())
        assert "Commands:" in res.out and "Examples:" in res.out
        assert res.out.count("\n") > 10  # the help as printed, not squeezed on one line


def test_no_arguments_from_the_installed_script(tmp_path: Path) -> None:
    env = {**os.environ, "FIELDPASS_HQ_HOME": str(tmp_path / "hq")}
    res = subprocess.run([FIELDPASS_HQ], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == ""
    assert "Commands:" in res.stdout and "tokens" in res.stdout


NEWLINE_NAMES = ["nl\n", "nl\r\n", "\nnl", "a\nb", "nl\x00"]


@pytest.mark.parametrize("bad", NEWLINE_NAMES)
def test_no_name_field_takes_a_newline(hq: Run, license_key: str, bad: str) -> None:
    """Every name a person gives (plan, product, feature, site, token) is matched
    whole: `$` alone lets a trailing newline through into the database and the audit."""
    fp = fingerprint(1)
    act = hq("activate", license_key, "--fingerprint", fp, "--json").json()["activation_id"]
    ttl = ["--offline-ttl", "1d", "--seats", "1"]
    assert hq("plans", "create", bad, *ttl).code == 2
    assert hq("plans", "create", "p-ok", *ttl, "--product", bad).code == 2
    assert hq("sites", "assign", bad, act).code == 2
    assert hq("tokens", "create", bad).code == 2
    # a feature is trimmed at the command line ("weld\n" is "weld"); a newline or NUL
    # inside is refused
    assert hq("licenses", "create", "--plan", "std", "--entitlement", f"x{bad}y").code == 2
    names = [p["name"] for p in hq("plans", "list", "--json").json()]
    names += [p["product"] for p in hq("plans", "list", "--json").json()]
    names += [s["site"] for s in hq("sites", "list", "--json").json()]
    names += [t["name"] for t in hq("tokens", "list", "--json").json()]
    for lic in hq("licenses", "list", "--json").json():
        names += [e["feature"] for e in lic["entitlements"]]
    assert not [n for n in names if n != n.strip() or "\n" in n or "\x00" in n]
    assert all("\n" not in (e["detail"] or "") for e in hq("audit", "--json").json())


def test_home_option_and_xdg_default(
    tmp_path: Path, hq: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    assert hq("--home", str(other), "keys", "generate").code == 0
    assert (other / "hq.sqlite3").exists()
    monkeypatch.delenv("FIELDPASS_HQ_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert hq("keys", "generate").code == 0
    assert (tmp_path / "xdg" / "fieldpass-hq" / "keys").is_dir()


def test_installed_console_script(tmp_path: Path) -> None:
    env = {**os.environ, "FIELDPASS_HQ_HOME": str(tmp_path / "hq")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FIELDPASS_HQ, *args], env=env, capture_output=True, text=True, timeout=60
        )

    assert run("keys", "generate").returncode == 0
    assert run("plans", "create", "p", "--offline-ttl", "30d", "--seats", "1").returncode == 0
    key = run("licenses", "create", "--plan", "p").stdout.strip()
    assert license_key.normalize(key) == key
    ok = run("activate", key, "--fingerprint", fingerprint(1), "-o", str(tmp_path / "m"))
    assert ok.returncode == 0, ok.stderr
    refused = run("activate", key, "--fingerprint", fingerprint(2))
    assert refused.returncode == 1
    assert refused.stderr.startswith("fieldpass-hq: error: ")
    assert key not in refused.stderr + ok.stdout + ok.stderr
