"""The field bundle: what a technician carries from HQ to a site, and how it is made.

A bundle (JSON, ``"format": "fieldpass-field-bundle"``, ``"v": 1``) holds, for each
chosen device, a fresh machine file (signed, and encrypted to that device) and, for a
device whose license is revoked or suspended, HQ's signed revocation. It holds nothing
that could activate a new seat and no secret: a lost bundle gives nobody a license.

``select`` chooses the devices, ``export`` renews them (audited as renewals) and builds
the document, ``load_bundle`` reads one back with a size bound.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.wire import armor

from ..errors import CannotRead, InvalidRequest
from ..models import Activation, Actor, License
from ..services import HQ, license_status

BUNDLE_FORMAT = "fieldpass-field-bundle"
MAX_BUNDLE_BYTES = 64 * 1024 * 1024


def select(
    hq: HQ,
    licenses: tuple[str, ...],
    plan: str | None,
    fingerprints: set[str] | None,
    expiring_within_s: int | None,
    now: int,
    site: str | None = None,
) -> list[tuple[Activation, License]]:
    """The live activations (with their licenses) that match every criterion given."""
    at_site = hq.site_activations(site) if site is not None else None
    chosen = []
    for act in hq.list_activations():
        if act.deactivated_at is not None:
            continue
        if at_site is not None and act.id not in at_site:
            continue
        lic, _ = hq.get_license(act.license_id)
        if licenses and act.license_id not in licenses:
            continue
        if plan and lic.plan != plan:
            continue
        if fingerprints is not None and act.fingerprint not in fingerprints:
            continue
        if expiring_within_s is not None and act.last_expires_at > now + expiring_within_s:
            continue
        chosen.append((act, lic))
    return chosen


def export(
    hq: HQ,
    chosen: list[tuple[Activation, License]],
    ttl_s: int | None,
    now: int,
    actor: Actor,
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, Any]:
    """Renew ``chosen`` (a revocation instead where the license is revoked or
    suspended; nothing where it expired) and return the bundle. ``progress(1)`` is
    called as each device is taken up."""
    devices: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    revocations: list[dict[str, Any]] = []
    for act, lic in chosen:
        progress(1)
        status = license_status(lic, now)
        if status != "active":
            signed = hq.signed_revocation(act.id, now)
            if signed is None:  # an expired license: nothing to carry
                skipped.append({"activation_id": act.id, "license_id": lic.id, "status": status})
                continue
            revocations.append(
                {
                    "activation_id": act.id,
                    "license_id": lic.id,
                    "fingerprint": act.fingerprint,
                    "reason": status,
                    "revocation": armor.armor(signed, armor.REVOCATION),
                }
            )
            continue
        issued = hq.renew(now, actor, activation_id=act.id, ttl_s=ttl_s)
        devices.append(
            {
                "activation_id": act.id,
                "license_id": lic.id,
                "fingerprint": act.fingerprint,
                # the device's public key, so the laptop can check its signed requests
                "device_key": _b64(issued.activation.device_key),
                "serial": issued.claims.serial,
                "expires_at": issued.claims.expires_at,
                "machine_file": armor.armor(issued.machine_file, armor.MACHINE_FILE),
            }
        )
    return {
        "format": BUNDLE_FORMAT,
        "v": 1,
        "created_at": now,
        "created_by": actor.who,
        "devices": devices,
        "revocations": revocations,
        "skipped": skipped,
    }


def _b64(data: bytes | None) -> str | None:
    import base64

    return None if data is None else base64.b64encode(data).decode("ascii")


def to_bytes(doc: dict[str, Any]) -> bytes:
    """The text of a bundle or a report: JSON, one space indents, sorted keys."""
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def load_bundle(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()[:MAX_BUNDLE_BYTES]
    except OSError as e:
        raise CannotRead(f"cannot read the bundle {path}: {e.strerror or e}") from None
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise InvalidRequest(f"{path}: not a field bundle ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT or doc.get("v") != 1:
        raise InvalidRequest(f"{path}: not a version-1 field bundle")
    return doc
