"""The verdict as applications read it: a JSON document and an environment file.

Both are written under the verdict directory (default /run/fieldpass) as
``verdict.json`` and ``verdict.env`` (a systemd EnvironmentFile= that sh can also
source). Keys are stable: new detail arrives under new keys, none is ever renamed.
Nothing secret is written: no license key, no raw hardware id. Every run of the gate
writes them, an error too (verdict "error", ``error_document``): an application never
reads "valid" after a gate that failed. Every value in verdict.env passes
``jsonout.env_clean``, and entitlement names are checked against what HQ issues.
"""

import os

from . import __version__, clock, fsio, jsonout
from .config import Config
from .device import Outcome
from .verdict import days_ceil
from .wire.machine_file import Claims

JSON_NAME = "verdict.json"
ENV_NAME = "verdict.env"
ERROR = "error"  # the verdict of a run that could not decide (config, lock, access, bug)
_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_NAME_REST = _NAME_FIRST | frozenset("._-")


def is_feature_name(name: str) -> bool:
    """A name HQ's CLI accepts for a feature (``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``),
    checked without ``re`` (the gate cannot afford the import)."""
    return 0 < len(name) <= 64 and name[0] in _NAME_FIRST and all(c in _NAME_REST for c in name)


iso = clock.iso  # never overflows, whatever the date


def document(outcome: Outcome, now: int) -> dict[str, object]:
    v = outcome.verdict
    c = v.claims
    t = v.effective_now if v.effective_now is not None else now
    doc = _skeleton(v.name, v.exit_code, v.message, v.reason, now)
    doc.update(
        warning=v.warning,
        limited=v.limited,
        fingerprint_source=outcome.identity.source,
        boot_counter=outcome.state.boot if outcome.state else None,
        notes=list(outcome.notes),
    )
    if c is not None:
        doc.update(
            license_id=c.license_id,
            product=c.product,
            plan=c.plan,
            activation_id=c.activation_id,
            serial=c.serial,
            issued_at=iso(c.issued_at),
            expires_at=iso(c.expires_at),
            grace_ends_at=iso(c.grace_ends_at),
            license_expires_at=iso(c.license_expires_at),
            days_left=max(0, days_ceil(c.expires_at - t)),
            entitlements=_entitlements(c, t, doc) if v.exit_code in (0, 10) else [],
        )
        if outcome.state is not None:
            from . import usage

            doc.update(
                usage=usage.counters(outcome.state),
                exhausted=usage.exhausted(c, outcome.state, t) if v.exit_code in (0, 10) else [],
            )
    return doc


def _entitlements(claims: Claims, t: int, doc: dict[str, object]) -> list[str]:
    """The active features; a name HQ never issues is left out, with a note."""
    names = [e.feature for e in claims.entitlements if e.active_at(t)]
    good = [n for n in names if is_feature_name(n)]
    if len(good) < len(names):
        notes = doc["notes"]
        assert isinstance(notes, list)
        notes.append(
            f"{len(names) - len(good)} entitlement(s) ignored: their names are not "
            "feature names HQ issues (letters, digits, '.', '_', '-')"
        )
    return good


def error_document(code: int, reason: str, message: str, now: int) -> dict[str, object]:
    """What the verdict files say after a run that could not decide: verdict "error",
    the run's exit code and why; every license key is null, nothing is entitled."""
    return _skeleton(ERROR, code, message, reason, now)


def _skeleton(verdict: str, code: int, message: str, reason: str, now: int) -> dict[str, object]:
    """Every key of the document (stable: new detail arrives under new keys), the
    license's null until a verified machine file fills them in."""
    return {
        "verdict": verdict,
        "exit_code": code,
        "message": message,
        "warning": "",
        "reason": reason,
        "limited": False,
        "checked_at": iso(now),
        "agent_version": __version__,
        "fingerprint_source": None,
        "boot_counter": None,
        "notes": [],
        "license_id": None,
        "product": None,
        "plan": None,
        "activation_id": None,
        "serial": None,
        "issued_at": None,
        "expires_at": None,
        "grace_ends_at": None,
        "license_expires_at": None,
        "days_left": None,
        "entitlements": [],
        "exhausted": [],
        "usage": {},
    }


def env_value(value: object) -> str:
    """A value as it appears in verdict.env and in a hook's environment."""
    return jsonout.env_clean("" if value is None else str(value))


def env_pairs(doc: dict[str, object]) -> list[tuple[str, str]]:
    """The variables of verdict.env, cleaned: the file and the hooks use these."""
    entitlements = doc.get("entitlements")
    names = (
        [e for e in entitlements if isinstance(e, str) and is_feature_name(e)]
        if isinstance(entitlements, list)
        else []
    )
    pairs = [
        ("FIELDPASS_VERDICT", doc.get("verdict")),
        ("FIELDPASS_EXIT", doc.get("exit_code")),
        ("FIELDPASS_LIMITED", "1" if doc.get("limited") else "0"),
        ("FIELDPASS_MESSAGE", doc.get("message")),
        ("FIELDPASS_WARNING", doc.get("warning")),
        ("FIELDPASS_REASON", doc.get("reason")),
        ("FIELDPASS_EXPIRES_AT", doc.get("expires_at")),
        ("FIELDPASS_GRACE_ENDS_AT", doc.get("grace_ends_at")),
        ("FIELDPASS_DAYS_LEFT", doc.get("days_left")),
        ("FIELDPASS_ENTITLEMENTS", ",".join(names)),
        ("FIELDPASS_EXHAUSTED", ",".join(_names(doc.get("exhausted")))),
        ("FIELDPASS_CHECKED_AT", doc.get("checked_at")),
    ]
    return [(k, env_value(v)) for k, v in pairs]


def _names(value: object) -> list[str]:
    return (
        [e for e in value if isinstance(e, str) and is_feature_name(e)]
        if isinstance(value, list)
        else []
    )


def env_text(doc: dict[str, object]) -> str:
    return "".join(f"{k}='{v}'\n" for k, v in env_pairs(doc))


def write_files(cfg: Config, doc: dict[str, object]) -> list[str]:
    """Write both files; return the problems (never raise: the verdict stands)."""
    return write_files_in(cfg.verdict_dir, doc)


def write_files_in(verdict_dir: str, doc: dict[str, object]) -> list[str]:
    """``write_files`` into a directory named directly (when the config is unknown)."""
    try:
        os.makedirs(verdict_dir, mode=0o755, exist_ok=True)
        fsio.atomic_write(
            os.path.join(verdict_dir, JSON_NAME),
            (jsonout.dumps(doc, pretty=True) + "\n").encode("utf-8"),
            durable=False,  # /run is a tmpfs: atomic, but no fsync to pay at every boot
        )
        fsio.atomic_write(
            os.path.join(verdict_dir, ENV_NAME), env_text(doc).encode("utf-8"), durable=False
        )
    except OSError as e:
        return [f"could not write the verdict files in {verdict_dir}: {fsio.describe(e)}"]
    return []


def no_access_message(cfg: Config) -> str:
    """The sentence for a user who may not read the data directory (exit 71)."""
    return (
        f"cannot read the device's data in {cfg.state_dir}: the gate runs as root; "
        f"applications read {os.path.join(cfg.verdict_dir, JSON_NAME)}, never the data "
        "directory"
    )


def text_lines(doc: dict[str, object]) -> list[str]:
    lines = [str(doc["message"])]
    if doc.get("warning"):
        lines.append(str(doc["warning"]))
    return lines
