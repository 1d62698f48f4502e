"""The JSON documents HQ hands out, the same from ``fieldpass-hq --json`` and from the
HTTP API: a key, a plan, a license, an activation, an issued machine file, an audit
event, an admin token (its name and times, never the token).

Keys are stable: never renamed; new detail arrives under new keys. No function here
accepts a license key except ``license_doc(..., with_key=True)``, used where a license is
created (the one time its key is shown). No I/O here.
"""

import base64
from typing import Any

from agent.wire import armor
from agent.wire.device_key import key_id as device_key_id

from .models import Activation, AuditEvent, KeyInfo, License, Plan, TokenInfo
from .services import Issued, license_status


def key_doc(k: KeyInfo) -> dict[str, Any]:
    return {
        "kid": k.kid,
        "algorithm": "ed25519",
        "public_key": base64.b64encode(k.public_key).decode("ascii"),
        "created_at": k.created_at,
        "active": k.active,
        "retired_at": k.retired_at,
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
        "device_key_id": None if a.device_key is None else device_key_id(a.device_key),
        "agent_version": a.agent_version,
        "claims_format": a.claims_format,
        "last_seen_at": a.last_seen_at,
        "last_channel": a.last_channel,
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


def token_doc(t: TokenInfo, now: int) -> dict[str, Any]:
    return {
        "name": t.name,
        "status": t.status(now),
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "revoked_at": t.revoked_at,
    }
