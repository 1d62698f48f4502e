"""What the CLI prints and writes: JSON documents for ``--json``, tables for people, and
crash-safe output files. Data goes to stdout; ``cli.main`` writes errors to stderr.

JSON keys are stable: never renamed; new detail arrives under new keys. No function here
accepts a license key except ``license_doc(..., with_key=True)``, used by the one command
that creates a license.
"""

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from agent.wire import armor

from .errors import CannotWrite
from .models import Activation, AuditEvent, KeyInfo, License, Plan
from .services import Issued, license_status
from .units import format_duration, format_time


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp file, fsync, rename, fsync the directory: ``path`` is old or new, never half."""
    directory = path.parent if str(path.parent) else Path(".")
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise CannotWrite(f"cannot write {path}: {e.strerror}") from e


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def emit_text(text: str) -> None:
    click.echo(text)


def key_doc(k: KeyInfo) -> dict[str, Any]:
    import base64

    return {
        "kid": k.kid,
        "algorithm": "ed25519",
        "public_key": base64.b64encode(k.public_key).decode("ascii"),
        "created_at": k.created_at,
        "active": k.active,
    }


def plan_doc(p: Plan) -> dict[str, Any]:
    return {
        "name": p.name,
        "product": p.product,
        "offline_ttl_s": p.offline_ttl_s,
        "grace_s": p.grace_s,
        "warn_s": p.warn_s,
        "seats": p.seats,
        "created_at": p.created_at,
    }


def license_doc(lic: License, now: int, *, with_key: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": lic.id,
        "plan": lic.plan,
        "status": license_status(lic, now),
        "expires_at": lic.expires_at,
        "created_at": lic.created_at,
        "updated_at": lic.updated_at,
        "seats_used": lic.seats_used,
        "entitlements": [
            {"feature": e.feature, "expires_at": e.expires_at} for e in lic.entitlements
        ],
    }
    if with_key:
        doc["key"] = lic.license_key
    return doc


def activation_doc(a: Activation) -> dict[str, Any]:
    return {
        "activation_id": a.id,
        "license_id": a.license_id,
        "fingerprint": a.fingerprint,
        "serial": a.serial,
        "created_at": a.created_at,
        "last_issued_at": a.last_issued_at,
        "last_expires_at": a.last_expires_at,
        "deactivated_at": a.deactivated_at,
        "live": a.deactivated_at is None,
    }


def issued_doc(i: Issued, file: str | None) -> dict[str, Any]:
    c = i.claims
    doc: dict[str, Any] = {
        "activation_id": i.activation.id,
        "license_id": c.license_id,
        "fingerprint": c.fingerprint,
        "created": i.created,
        "serial": c.serial,
        "issued_at": c.issued_at,
        "not_before": c.not_before,
        "expires_at": c.expires_at,
        "grace_s": c.grace_s,
        "warn_s": c.warn_s,
        "kid": c.kid,
        "product": c.product,
        "plan": c.plan,
        "file": file,
    }
    if file is None:
        doc["machine_file"] = armor.armor(i.machine_file, armor.MACHINE_FILE)
    return doc


def audit_doc(e: AuditEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": e.at,
        "actor": e.actor,
        "source": e.source,
        "action": e.action,
        "license_id": e.license_id,
        "activation_id": e.activation_id,
        "detail": e.detail,
    }


def table(rows: list[list[str]], header: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def plan_row(p: Plan) -> list[str]:
    warn = "ttl/3" if p.warn_s is None else format_duration(p.warn_s)
    return [
        p.name,
        p.product,
        format_duration(p.offline_ttl_s),
        format_duration(p.grace_s),
        warn,
        str(p.seats),
    ]


def issued_text(i: Issued, file: str | None) -> str:
    c = i.claims
    what = "activated (new seat)" if i.created else "machine file issued"
    where = f" -> {file}" if file else ""
    return (
        f"{what}: {i.activation.id} serial {c.serial}, valid until "
        f"{format_time(c.expires_at)}{where}"
    )
