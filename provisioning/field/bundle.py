"""The field bundle: what a technician carries from HQ to a site, and how it is made.

A bundle (JSON, ``"format": "fieldpass-field-bundle"``, ``"v": 1``) holds, for each
chosen device, a fresh machine file (signed, and encrypted to that device) and, for a
device whose license is revoked or suspended, HQ's signed revocation, each with the
device's public key (so that the laptop can check what the device signs). It holds
nothing that could activate a new seat and no secret: a lost bundle gives nobody a
license. Its ``id`` is recorded at HQ (a ``field_export`` audit event), so that its report
can be tied to it.

``select`` chooses the devices, ``export`` renews them (audited as renewals) and builds
the document, ``load_bundle`` reads one back with a size and depth bound and checks
every field of it (``MalformedInput``, exit 65, for anything else).
"""

import base64
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.wire import armor, sodium
from agent.wire.errors import FormatError

from ..errors import ActivationReturned, MalformedInput
from ..models import Activation, Actor, License
from ..services import HQ, license_status
from ..services.audit import event
from .fields import ACTIVATION_ID, BUNDLE_ID, FINGERPRINT, LICENSE_ID, Entry, read_document

BUNDLE_FORMAT = "fieldpass-field-bundle"
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_BUNDLE_DEPTH = 4  # the bundle, its lists, their entries, an entry's values
REASONS = ("suspended", "revoked")


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
    suspended; nothing where it expired, nor for a device that gave its license back:
    ``skipped``, status ``returned``) and return the bundle, its id audited
    (``field_export``). ``progress(1)`` is called as each device is taken up."""
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
                    "device_key": _b64(act.device_key),
                    "reason": status,
                    "revocation": armor.armor(signed, armor.REVOCATION),
                }
            )
            continue
        given_back = {"activation_id": act.id, "license_id": lic.id, "status": "returned"}
        if act.return_frees_at is not None:  # it gave its license back: HQ issues no file
            skipped.append(given_back)
            continue
        try:
            issued = hq.renew(now, actor, activation_id=act.id, ttl_s=ttl_s)
        except ActivationReturned:  # its receipt came after it was chosen
            skipped.append(given_back)
            continue
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
    bundle_id = "fb_" + secrets.token_hex(10)
    detail = f"bundle={bundle_id} files={len(devices)} revocations={len(revocations)}"
    hq.record_audit(event(now, actor, "field_export", detail=detail))
    return {
        "format": BUNDLE_FORMAT,
        "v": 1,
        "id": bundle_id,
        "created_at": now,
        "created_by": actor.who,
        "devices": devices,
        "revocations": revocations,
        "skipped": skipped,
    }


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def to_bytes(doc: dict[str, Any]) -> bytes:
    """The text of a bundle or a report: JSON, one space indents, sorted keys."""
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def load_bundle(path: Path) -> dict[str, Any]:
    """The bundle at ``path``, every field checked; only the fields it defines."""
    doc = Entry(read_document(path, "field bundle", MAX_BUNDLE_BYTES, MAX_BUNDLE_DEPTH), str(path))
    if doc.doc.get("format") != BUNDLE_FORMAT or doc.doc.get("v") != 1:
        raise MalformedInput(f"{path}: not a version-1 field bundle")
    devices = [
        _device(Entry(d, f"{path}: devices[{i}]")) for i, d in enumerate(doc.items("devices"))
    ]
    revocations = [
        _revocation(Entry(r, f"{path}: revocations[{i}]"))
        for i, r in enumerate(doc.items("revocations", optional=True))
    ]
    seen: set[str] = set()
    for entry in devices + revocations:
        for value in (entry["activation_id"], entry["fingerprint"]):
            if value in seen:
                raise MalformedInput(f"{path}: {value} is in the bundle twice")
            seen.add(value)
    return {
        "format": BUNDLE_FORMAT,
        "v": 1,
        # bundles exported before ids were recorded have none: their reports cannot be
        # tied to them at import
        "id": doc.text("id", BUNDLE_ID) if doc.has("id") else None,
        "created_at": doc.time("created_at"),
        "created_by": doc.text("created_by"),
        "devices": devices,
        "revocations": revocations,
    }


def _common(e: Entry) -> dict[str, Any]:
    key = None
    if e.has("device_key"):
        try:
            raw = base64.b64decode(e.text("device_key", max_chars=64), validate=True)
        except ValueError:
            raw = b""
        if len(raw) != sodium.PUBLIC_KEY_BYTES:
            raise MalformedInput(f"{e.where}: device_key must be a public key in base64")
        key = base64.b64encode(raw).decode("ascii")
    return {
        "activation_id": e.text("activation_id", ACTIVATION_ID),
        "license_id": e.text("license_id", LICENSE_ID),
        "fingerprint": e.text("fingerprint", FINGERPRINT),
        "device_key": key,
    }


def _armored(e: Entry, name: str, label: str) -> str:
    value = e.doc.get(name)
    try:
        if not isinstance(value, str):
            raise FormatError("not a text")
        armor.unarmor(value, label)
    except FormatError:
        raise MalformedInput(f"{e.where}: {name} must be an armored {label.lower()}") from None
    return value


def _device(e: Entry) -> dict[str, Any]:
    return {
        **_common(e),
        "serial": e.integer("serial", 1, (1 << 53) - 1),
        "expires_at": e.time("expires_at"),
        "machine_file": _armored(e, "machine_file", armor.MACHINE_FILE),
    }


def _revocation(e: Entry) -> dict[str, Any]:
    return {
        **_common(e),
        "reason": e.choice("reason", REASONS),
        "revocation": _armored(e, "revocation", armor.REVOCATION),
    }
