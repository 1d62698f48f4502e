"""The field report: what the laptop saw on site, and its import back at HQ into the
audit log.

``make_report`` builds it when ``field serve`` stops (``"v": 2``): the pickups the
devices *confirmed* (each with the device's signed status), what was *served* but not
confirmed (agents of 0.1.0 cannot sign), what nobody picked up, and what the devices
handed the laptop for HQ: their latest signed usage report (``usage_reports``) and their
return receipts (``receipts``). A version-2 report written before those lists existed
has neither, and imports as it did.

``import_report`` checks every field first (types, known activation ids of the right
license and device, times not before the bundle's export nor after the import, no
control character in any text) and refuses a malformed report whole
(``MalformedInput``, exit 65). It verifies each confirming status against the device key
HQ recorded for the activation; a status that does not verify (a key reset since, a
forgery) leaves its pickup "served, unconfirmed". Pickups become ``field_pickup`` events
(confirmed: the serial the device signed) and ``field_served`` events (unconfirmed), one
line each; the report is recorded as ``field_import`` under the digest of a canonical
form of its entries, so that the same report, however it is spaced, imports once, and
an event already recorded (the same status in two reports) is never recorded twice.

Usage reports and receipts go through HQ's own rules (services/usage.py), as if the
device had posted them to HQ (``via`` "laptop"): each is verified against the device
key HQ recorded for its activation, first for all of them (one that names another
activation or sequence than its entry is a malformed report: nothing is recorded), then
each is accepted or refused with a counted reason (a replayed or older report, a foreign
receipt, a plan's return limit: ``--override`` frees those seats, audited). A receipt
frees a seat as ``deactivate --receipt`` does; the laptop never frees one itself.
Importing never changes a license otherwise; it records, at most, a device key a status
registers with its proof. A report holds no secret.
"""

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from agent.wire import device_msg

from ..errors import Conflict, HQError, MalformedInput, NotFound
from ..models import Actor, AuditEvent
from ..services import HQ
from ..services.audit import event
from ..services.device_requests import Verified
from ..services.issuing import Issuing
from ..services.usage import ReceiptHeld, SeatFreedAlready
from .bundle import MAX_BUNDLE_BYTES
from .fields import (
    ACTIVATION_ID,
    BUNDLE_ID,
    FINGERPRINT,
    LICENSE_ID,
    Entry,
    printable,
    read_document,
)

REPORT_FORMAT = "fieldpass-field-report"
REPORT_VERSION = 2
MAX_REPORT_BYTES = MAX_BUNDLE_BYTES
MAX_REPORT_DEPTH = 3  # the report, its lists, their entries
CLOCK_SKEW_S = 600  # how far the laptop's clock may be from HQ's
AUDIT_WINDOW = 100_000  # the newest audit events searched for the bundle and past imports
WHAT = ("machine_file", "revocation")
VIA = ("http", "mqtt")
MAX_SERIAL = (1 << 53) - 1
MAX_STATUS_CHARS = 4096


def make_report(
    bundle: dict[str, Any],
    records: tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]],
    offered: set[str],
    served_from: str,
    operator: str,
    started_at: int,
    ended_at: int,
    carried: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], []),
) -> dict[str, Any]:
    """The report of one ``field serve``: ``records`` and ``carried`` as
    ``FieldServer.records`` and ``FieldServer.carried`` give them; ``offered`` is every
    activation id the bundle had something for."""
    confirmed, unconfirmed, unidentified = records
    usage_reports, receipts = carried
    taken = {r["activation_id"] for r in confirmed} | {r["activation_id"] for r in unconfirmed}
    taken |= set(unidentified)
    return {
        "format": REPORT_FORMAT,
        "v": REPORT_VERSION,
        "bundle_id": bundle["id"],
        "bundle_created_at": bundle["created_at"],
        "served_from": printable(served_from, 300),
        "operator": printable(operator),
        "started_at": started_at,
        "ended_at": ended_at,
        "pickups": confirmed,
        "served_unconfirmed": unconfirmed,
        "unidentified_revocation_requests": unidentified,
        "not_picked_up": sorted(offered - taken),
        "usage_reports": usage_reports,
        "receipts": receipts,
    }


class _Past:
    """What the audit log already holds of field bundles and reports."""

    def __init__(self, hq: HQ) -> None:
        self.exports: dict[str, int] = {}
        self.imports: set[str] = set()
        self.events: set[tuple[str, str | None, int, str | None]] = set()
        self.last_pickup: dict[str, int] = {}  # per activation: its newest confirmed pickup
        for e in hq.audit(AUDIT_WINDOW):
            words = dict(w.split("=", 1) for w in (e.detail or "").split() if "=" in w)
            if e.action == "field_export" and "bundle" in words:
                self.exports[words["bundle"]] = e.at
            elif e.action == "field_import" and "report" in words:
                self.imports.add(words["report"])
            elif e.action in ("field_pickup", "field_served"):
                self.events.add(_key(e))
                if e.action == "field_pickup" and e.activation_id is not None:
                    newest = max(e.at, self.last_pickup.get(e.activation_id, 0))
                    self.last_pickup[e.activation_id] = newest


def _key(e: AuditEvent) -> tuple[str, str | None, int, str | None]:
    return e.action, e.activation_id, e.at, e.detail


def import_report(
    hq: HQ, report_path: Path, now: int, actor: Actor, override: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Record the report at ``report_path`` in the audit log, once, and hand its usage
    reports and receipts to HQ's usage service; return the summary and the checked
    report. With ``override`` (the operator's reason), receipts past a plan's return
    limit free their seats too, and a report imported already may be imported again for
    them (everything else in it is recorded already, or refused as a replay)."""
    raw = read_document(report_path, "field report", MAX_REPORT_BYTES, MAX_REPORT_DEPTH)
    where = str(report_path)
    doc = Entry(raw, where)
    if raw.get("format") != REPORT_FORMAT:
        raise MalformedInput(f"{where}: not a field report")
    if raw.get("v") == 1:
        raise MalformedInput(
            f"{where}: a version-1 report (fieldpass-hq 0.1.0) records a pickup when a file "
            "was served, not when the device took it: nothing imported; serve the bundle "
            "again with this fieldpass-hq"
        )
    if raw.get("v") != REPORT_VERSION:
        raise MalformedInput(f"{where}: not a version-{REPORT_VERSION} field report")
    past = _Past(hq)
    report = _checked(hq, doc, past, now)
    digest = _digest(report)
    if digest in past.imports and override is None:
        raise Conflict(f"{report_path} was imported already (report {digest})")
    who = Actor(f"field:{report['operator']}", f"field-report:{report['served_from']}")
    checked = [(p, _verify(hq, p, where)) for p in report["pickups"]]  # nothing written yet
    handed = _verify_carried(hq, report, where)  # nothing written yet either
    events: list[AuditEvent] = []
    unverified: list[str] = []
    for p, verified in checked:
        if isinstance(verified, HQError):
            unverified.append(p["activation_id"])
            events.append(_served(p, who, f"status-refused={verified.code}"))
            continue
        if verified.registering:
            try:
                hq.device.register(verified, now, actor)
            except HQError:
                pass  # the status verified with its proof; the key is for HQ's next contact
        digest16 = hashlib.sha256(base64.b64decode(p["status"])).hexdigest()[:16]
        detail = f"{p['what']} serial={p['serial']} via={p['via']} confirmed status={digest16}"
        events.append(
            event(p["at"], who, "field_pickup", p["license_id"], p["activation_id"], detail)
        )
    for s in report["served_unconfirmed"]:
        events.append(_served(s, who, f"agent={s['agent_version']}"))
    _take_keyrings(hq, checked, past)
    usage = _hand_over(hq, handed, now, who, override)
    new = [e for e in events if _key(e) not in past.events]
    unconfirmed = sum(1 for e in new if e.action == "field_served")
    confirmed = len(new) - unconfirmed
    detail = (
        f"report={digest} bundle={report['bundle_id']} confirmed={confirmed} "
        f"unconfirmed={unconfirmed} unidentified={len(report['unidentified'])} "
        f"usage_reports={usage['usage_reports']['accepted']} "
        f"receipts={usage['receipts']['accepted']}"
    ) + (" override" if override is not None else "")
    hq.record_audit(*new, event(now, actor, "field_import", detail=detail))
    summary = {
        "report": digest,
        "bundle": report["bundle_id"],
        "pickups": confirmed,
        "served_unconfirmed": unconfirmed,
        "already_recorded": len(events) - len(new),
        "unverified": unverified,
        "unidentified": report["unidentified"],
        "not_picked_up": report["not_picked_up"],
        **usage,
    }
    return summary, report


# What the laptop carried for HQ: the list in the report, the device message type, the
# entry's field that holds it, and the signed field the entry must agree with.
CARRIED = (("usage_reports", "report", "seq"), ("receipts", "receipt", "serial"))


def _verify_carried(
    hq: HQ, report: dict[str, Any], where: str
) -> dict[str, list[tuple[bytes, HQError | None]]]:
    """Each usage report and receipt verified against the device key HQ holds for it
    (``live=False``: a returned device's report still counts), as (bytes, refusal or
    None); MalformedInput if one names another activation or number than its entry."""
    out: dict[str, list[tuple[bytes, HQError | None]]] = {}
    for name, msg_type, number in CARRIED:
        out[name] = []
        for entry in report[name]:
            data = base64.b64decode(entry[msg_type])
            try:
                verified = hq.device.verify(data, msg_type, live=False)
            except HQError as e:
                out[name].append((data, e))
                continue
            m = verified.message
            if verified.activation.id != entry["activation_id"] or m[number] != entry[number]:
                raise MalformedInput(
                    f"{where}: the {msg_type} of {entry['activation_id']} does not say what "
                    f"its signature covers (another activation or {number})"
                )
            out[name].append((data, None))
    return out


def _hand_over(
    hq: HQ,
    handed: dict[str, list[tuple[bytes, HQError | None]]],
    now: int,
    who: Actor,
    override: str | None,
) -> dict[str, Any]:
    """Give the verified reports and receipts to HQ's usage service, as HQ's own routes
    do (``via`` "laptop"); count what it accepted and, by code, what it refused."""
    counts: dict[str, Any] = {}
    for name, _, _ in CARRIED:
        accepted, freed, held, by_hand = 0, 0, 0, 0
        refused: dict[str, int] = {}
        for data, refusal in handed[name]:
            try:
                if refusal is not None:
                    raise refusal
                if name == "usage_reports":
                    hq.usage.accept_report(data, now, "laptop", who)
                else:
                    freed += hq.usage.accept_receipt(
                        data, now, "laptop", who, override=override
                    ).freed
            except ReceiptHeld:
                held += 1  # HQ took this very receipt already (a relay, a resend)
                continue
            except SeatFreedAlready:
                by_hand += 1  # the operator freed the seat before the receipt came
                continue
            except HQError as e:
                refused[e.code] = refused.get(e.code, 0) + 1
                continue
            accepted += 1
        counts[name] = {"accepted": accepted, "refused": refused}
        if name == "receipts":
            counts[name].update(freed=freed, held=held, freed_by_hand=by_hand)
    return counts


def _take_keyrings(
    hq: HQ, checked: list[tuple[dict[str, Any], Verified | HQError]], past: _Past
) -> None:
    """The keyring each confirmed pickup's signed status names (the signing keys the
    device trusts: what ``keys retire`` counts), recorded as a status over HTTP records
    it, unless HQ heard from the device after the pickup (its newer word stands): a
    contact, or a newer pickup an earlier import recorded (an older report imported
    last never moves the keyring back). The pickup is as old as the earlier of the
    report's time and the time the device signed its status: an old status in an
    edited report moves nothing back either."""
    named = [
        (p, v, kids)
        for p, v in checked
        if not isinstance(v, HQError) and (kids := device_msg.keyring_of(v.message)) is not None
    ]
    if not named:
        return
    with hq.store.write() as tx:
        for p, verified, kids in sorted(named, key=lambda n: int(n[0]["at"])):
            act = tx.get_activation(verified.activation.id)
            if act is None:
                continue
            heard = max(act.last_seen_at or 0, past.last_pickup.get(act.id, 0))
            # the pickup's time is the laptop's word, in the report (which anyone may
            # edit); the status is no newer than when the device signed it
            if heard <= min(int(p["at"]), int(str(verified.message["at"]))):
                Issuing.take_keyring(tx, act, kids)


def _served(p: dict[str, Any], who: Actor, why: str) -> AuditEvent:
    serial = f" serial={p['serial']}" if p["serial"] is not None else ""
    detail = f"{p['what']}{serial} via={p['via']} unconfirmed {why}"
    return event(p["at"], who, "field_served", p["license_id"], p["activation_id"], detail)


def _verify(hq: HQ, p: dict[str, Any], where: str) -> Verified | HQError:
    """The pickup's status verified against the device key HQ holds for it (or the
    refusal); MalformedInput if it is another activation's, or of another serial."""
    try:
        verified = hq.device.verify(base64.b64decode(p["status"]), "status")
    except HQError as e:
        return e
    if verified.activation.id != p["activation_id"] or verified.message["serial"] != p["serial"]:
        raise MalformedInput(
            f"{where}: the pickup of {p['activation_id']} does not say what its signed status "
            "says (another activation or serial)"
        )
    return verified


def _checked(hq: HQ, doc: Entry, past: _Past, now: int) -> dict[str, Any]:
    """The report's fields, every one checked; MalformedInput at the first that fails."""
    where = doc.where
    bundle_id = doc.text("bundle_id", BUNDLE_ID) if doc.has("bundle_id") else None
    if bundle_id is None:
        raise MalformedInput(
            f"{where}: the report names no bundle (one exported by an older fieldpass-hq): "
            "its pickups cannot be tied to an export"
        )
    exported_at = past.exports.get(bundle_id)
    if exported_at is None:
        raise MalformedInput(f"{where}: bundle {bundle_id} was not exported by this HQ")
    if doc.time("bundle_created_at") != exported_at:
        raise MalformedInput(f"{where}: bundle_created_at is not when {bundle_id} was exported")
    earliest, latest = exported_at - CLOCK_SKEW_S, now + CLOCK_SKEW_S
    started = doc.time("started_at", earliest, latest)
    ended = doc.time("ended_at", started, latest)
    report: dict[str, Any] = {
        "bundle_id": bundle_id,
        "bundle_created_at": exported_at,
        "served_from": doc.text("served_from", max_chars=300),
        "operator": doc.text("operator"),
        "started_at": started,
        "ended_at": ended,
    }
    seen: set[str] = set()

    def entry(e: Entry) -> dict[str, Any]:
        act_id = e.text("activation_id", ACTIVATION_ID)
        if act_id in seen:
            raise MalformedInput(f"{e.where}: {act_id} is in the report twice")
        seen.add(act_id)
        checked = {
            "activation_id": act_id,
            "license_id": e.text("license_id", LICENSE_ID),
            "fingerprint": e.text("fingerprint", FINGERPRINT),
            "what": e.choice("what", WHAT),
            "at": e.time("at", started - CLOCK_SKEW_S, ended + CLOCK_SKEW_S),
            "via": e.choice("via", VIA),
        }
        checked["serial"] = (
            e.integer("serial", 0, MAX_SERIAL)
            if checked["what"] == "machine_file" or e.has("serial")
            else None
        )
        _known(hq, checked, e.where)
        return checked

    pickups = []
    for i, value in enumerate(doc.items("pickups")):
        e = Entry(value, f"{where}: pickups[{i}]")
        p = entry(e)
        p["status"] = e.text("status", max_chars=MAX_STATUS_CHARS)
        try:
            base64.b64decode(p["status"], validate=True)
        except ValueError:
            raise MalformedInput(f"{e.where}: status must be base64") from None
        pickups.append(p)
    served = []
    for i, value in enumerate(doc.items("served_unconfirmed")):
        e = Entry(value, f"{where}: served_unconfirmed[{i}]")
        s = entry(e)
        s["agent_version"] = e.text("agent_version", max_chars=100)
        served.append(s)

    def activation_ids(name: str) -> list[str]:
        ids = []
        for i, value in enumerate(doc.items(name)):
            here = f"{where}: {name}[{i}]"
            act_id = Entry({"activation_id": value}, here).text("activation_id", ACTIVATION_ID)
            if act_id in seen:
                raise MalformedInput(f"{where}: {act_id} is in the report twice")
            seen.add(act_id)
            _known(hq, {"activation_id": act_id}, here)
            ids.append(act_id)
        return sorted(ids)

    report.update(
        pickups=pickups,
        served_unconfirmed=served,
        unidentified=activation_ids("unidentified_revocation_requests"),
        not_picked_up=activation_ids("not_picked_up"),
    )
    for name, msg_type, number in CARRIED:
        report[name] = _carried_entries(hq, doc, name, msg_type, number, started, ended)
    return report


def _carried_entries(
    hq: HQ, doc: Entry, name: str, msg_type: str, number: str, started: int, ended: int
) -> list[dict[str, Any]]:
    """The report's ``name`` list (absent in reports written before it existed), every
    field checked: one entry per activation, its signed message in base64."""
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, value in enumerate(doc.items(name, optional=True)):
        e = Entry(value, f"{doc.where}: {name}[{i}]")
        act_id = e.text("activation_id", ACTIVATION_ID)
        signed = e.text(msg_type, max_chars=MAX_STATUS_CHARS)
        if signed in seen:
            raise MalformedInput(f"{e.where}: this {msg_type} is in {name} twice")
        seen.add(signed)
        try:
            base64.b64decode(signed, validate=True)
        except ValueError:
            raise MalformedInput(f"{e.where}: {msg_type} must be base64") from None
        checked: dict[str, Any] = {
            "activation_id": act_id,
            "license_id": e.text("license_id", LICENSE_ID),
            "fingerprint": e.text("fingerprint", FINGERPRINT),
            "at": e.time("at", started - CLOCK_SKEW_S, ended + CLOCK_SKEW_S),
            "via": e.choice("via", VIA),
            number: e.integer(number, 0, MAX_SERIAL),
            msg_type: signed,
        }
        _known(hq, checked, e.where)
        entries.append(checked)
    return entries


def _known(hq: HQ, entry: dict[str, Any], where: str) -> None:
    """The activation exists at HQ, of the license and device the entry names."""
    try:
        act = hq.get_activation(entry["activation_id"])
    except NotFound:
        raise MalformedInput(f"{where}: HQ has no activation {entry['activation_id']}") from None
    if "license_id" in entry and (
        act.license_id != entry["license_id"] or act.fingerprint != entry["fingerprint"]
    ):
        raise MalformedInput(
            f"{where}: activation {act.id} is of another license or device than the report says"
        )
    if entry.get("what") == "machine_file" and entry["serial"] > act.serial:
        raise MalformedInput(
            f"{where}: serial {entry['serial']} of {act.id} was never issued "
            f"(HQ is at {act.serial})"
        )


def _digest(report: dict[str, Any]) -> str:
    """The report's identity: SHA-256 of the canonical JSON of its checked entries (the
    bundle, when it was served, what was picked up), so that spacing, key order or an
    edited operator name never make the same report import twice."""
    canonical = {
        k: report[k]
        for k in (
            "bundle_id",
            "started_at",
            "ended_at",
            "pickups",
            "served_unconfirmed",
            "unidentified",
            "not_picked_up",
        )
    }
    canonical["pickups"] = sorted(report["pickups"], key=lambda p: str(p["activation_id"]))
    canonical["served_unconfirmed"] = sorted(
        report["served_unconfirmed"], key=lambda p: str(p["activation_id"])
    )
    for name, kind, _ in CARRIED:  # absent from older reports: their digest stays theirs
        if report[name]:
            canonical[name] = sorted(report[name], key=lambda p: (p["activation_id"], p[kind]))
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
