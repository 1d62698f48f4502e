"""The verdict as applications read it: a JSON document and an environment file.

Both are written under the verdict directory (default /run/fieldpass) as
``verdict.json`` and ``verdict.env`` (a systemd EnvironmentFile= that sh can also
source). Keys are stable: new detail arrives under new keys, none is ever renamed.
Nothing secret is written: no license key, no raw hardware id.
"""

import os
import time

from . import __version__, fsio, jsonout
from .config import Config
from .device import Outcome
from .verdict import days_ceil

JSON_NAME = "verdict.json"
ENV_NAME = "verdict.env"


def iso(ts: int | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def document(outcome: Outcome, now: int) -> dict[str, object]:
    v = outcome.verdict
    c = v.claims
    t = v.effective_now if v.effective_now is not None else now
    doc: dict[str, object] = {
        "verdict": v.name,
        "exit_code": v.exit_code,
        "message": v.message,
        "warning": v.warning,
        "reason": v.reason,
        "limited": v.limited,
        "checked_at": iso(now),
        "agent_version": __version__,
        "fingerprint_source": outcome.identity.source,
        "boot_counter": outcome.state.boot if outcome.state else None,
        "notes": list(outcome.notes),
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
    }
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
            entitlements=[e.feature for e in c.entitlements if e.active_at(t)]
            if v.exit_code in (0, 10)
            else [],
        )
    return doc


def env_text(doc: dict[str, object]) -> str:
    def text(key: str) -> str:
        value = doc.get(key)
        return "" if value is None else str(value)

    entitlements = doc.get("entitlements")
    pairs = [
        ("FIELDPASS_VERDICT", text("verdict")),
        ("FIELDPASS_EXIT", text("exit_code")),
        ("FIELDPASS_LIMITED", "1" if doc.get("limited") else "0"),
        ("FIELDPASS_MESSAGE", text("message")),
        ("FIELDPASS_WARNING", text("warning")),
        ("FIELDPASS_REASON", text("reason")),
        ("FIELDPASS_EXPIRES_AT", text("expires_at")),
        ("FIELDPASS_GRACE_ENDS_AT", text("grace_ends_at")),
        ("FIELDPASS_DAYS_LEFT", text("days_left")),
        (
            "FIELDPASS_ENTITLEMENTS",
            ",".join(entitlements) if isinstance(entitlements, list) else "",
        ),
        ("FIELDPASS_CHECKED_AT", text("checked_at")),
    ]
    return "".join(f"{k}={jsonout.env_quote(v)}\n" for k, v in pairs)


def write_files(cfg: Config, doc: dict[str, object]) -> list[str]:
    """Write both files; return the problems (never raise: the verdict stands)."""
    problems = []
    try:
        os.makedirs(cfg.verdict_dir, mode=0o755, exist_ok=True)
        fsio.atomic_write(
            os.path.join(cfg.verdict_dir, JSON_NAME),
            (jsonout.dumps(doc, pretty=True) + "\n").encode("utf-8"),
            durable=False,  # /run is a tmpfs: atomic, but no fsync to pay at every boot
        )
        fsio.atomic_write(
            os.path.join(cfg.verdict_dir, ENV_NAME), env_text(doc).encode("utf-8"), durable=False
        )
    except OSError as e:
        problems.append(f"could not write the verdict files in {cfg.verdict_dir}: {e}")
    return problems


def text_lines(doc: dict[str, object]) -> list[str]:
    lines = [str(doc["message"])]
    if doc.get("warning"):
        lines.append(str(doc["warning"]))
    return lines
