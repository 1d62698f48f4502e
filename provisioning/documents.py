"""The JSON documents HQ hands out, the same from ``fieldpass-hq --json`` and from the
HTTP API: a key, a plan, a license, an activation, an issued machine file, an audit
event, an admin token (its name and times, never the token).

Keys are stable: never renamed; new detail arrives under new keys. Every time is Unix
seconds under its name and, beside it, ISO 8601 in UTC under ``NAME_iso`` (null where
there is none). No function here
accepts a license key except ``license_doc(..., with_key=True)``, used where a license is
created (the one time its key is shown). No I/O here.
"""

import base64
from typing import Any

from agent.wire import armor
from agent.wire.device_key import key_id as device_key_id

from .models import Activation, AuditEvent, KeyInfo, License, Plan, TokenInfo
from .services import Issued, license_status
from .services.fleet import Device, Overview
from .storage.views import LicenseSummary, SiteSummary
from .units import format_time


def iso(t: int | None) -> str | None:
    return None if t is None else format_time(t)


def _with_iso(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with ``NAME_iso`` beside each time ``NAME`` (``*_at`` keys)."""
    for name in [k for k in doc if k.endswith("_at")]:
        doc[f"{name}_iso"] = iso(doc[name])
    return doc


def key_doc(k: KeyInfo, reported_by: int | None = None) -> dict[str, Any]:
    """A key's public document; ``reported_by``: how many live activations said their
    keyring holds it (``keys list``)."""
    doc: dict[str, Any] = {
        "kid": k.kid,
        "algorithm": "ed25519",
        "public_key": base64.b64encode(k.public_key).decode("ascii"),
        "created_at": k.created_at,
        "active": k.active,
        "retired_at": k.retired_at,
    }
    if reported_by is not None:
        doc["reported_by"] = reported_by
    return _with_iso(doc)


def plan_doc(p: Plan) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": p.name,
        "product": p.product,
        "offline_ttl_s": p.offline_ttl_s,
        "grace_s": p.grace_s,
        "warn_s": p.warn_s,
        "seats": p.seats,
        "created_at": p.created_at,
    }
    return _with_iso(doc)


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
    return _with_iso(doc)


def license_summary_doc(s: LicenseSummary, now: int) -> dict[str, Any]:
    """A license as the fleet views list it: ``license_doc`` and its seat limit (its own,
    else its plan's), its own limit if it has one, the earliest expiry of its live
    devices' files."""
    doc = license_doc(s.license, now)
    doc["seats_limit"] = s.seat_limit
    doc["seats_own"] = s.license.seats
    doc["first_file_expires_at"] = s.first_file_expires_at
    return _with_iso(doc)


def activation_doc(a: Activation) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "activation_id": a.id,
        "license_id": a.license_id,
        "fingerprint": a.fingerprint,
        "serial": a.serial,
        "created_at": a.created_at,
        "last_issued_at": a.last_issued_at,
        "last_expires_at": a.last_expires_at,
        "deactivated_at": a.deactivated_at,
        "live": a.deactivated_at is None,
        "device_key_id": None if a.device_key is None else device_key_id(a.device_key),
        "agent_version": a.agent_version,
        "claims_format": a.claims_format,
        "last_seen_at": a.last_seen_at,
        "last_channel": a.last_channel,
        "keyring": list(a.keyring),  # the signing keys the device said it trusts
    }
    return _with_iso(doc)


def device_doc(d: Device) -> dict[str, Any]:
    """An activation as the fleet views list it: ``activation_doc``, its license's plan,
    its site and its verdict as HQ last heard it (services/verdicts.py)."""
    doc = activation_doc(d.row.activation)
    doc["plan"] = d.row.plan
    doc["site"] = d.row.site
    doc["verdict"] = d.verdict
    return doc


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
    for name in ("issued_at", "not_before", "expires_at"):
        doc[f"{name}_iso"] = iso(doc[name])
    return doc


def audit_doc(e: AuditEvent) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": e.id,
        "at": e.at,
        "actor": e.actor,
        "source": e.source,
        "action": e.action,
        "license_id": e.license_id,
        "activation_id": e.activation_id,
        "detail": e.detail,
    }
    return _with_iso(doc)


def token_doc(t: TokenInfo, now: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": t.name,
        "status": t.status(now),
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "revoked_at": t.revoked_at,
    }
    return _with_iso(doc)


def site_doc(s: SiteSummary) -> dict[str, Any]:
    return _with_iso(
        {"site": s.site, "devices": s.devices, "first_file_expires_at": s.first_file_expires_at}
    )


def overview_doc(o: Overview) -> dict[str, Any]:
    return _with_iso(
        {
            "at": o.now,
            "devices": o.devices,
            "verdicts": o.verdicts,
            "weeks": [
                {"starts_at": w.starts_at, "starts_at_iso": iso(w.starts_at), "files": w.files}
                for w in o.weeks
            ],
            "files_expiring_later": o.later,
            "quiet_days": o.quiet_days,
            "not_heard_from": o.quiet,
            "clock_not_advancing": o.clock_not_advancing,
            "recent_audit": [audit_doc(e) for e in o.recent],
        }
    )
