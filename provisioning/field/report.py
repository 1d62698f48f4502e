"""The field report: what the laptop saw on site (which device picked up what, when,
over HTTP or MQTT), and its import back at HQ into the audit log.

``make_report`` builds it when ``field serve`` stops; ``import_report`` records each
pickup as a ``field_pickup`` event and the report itself as ``field_import`` (by the
SHA-256 of its bytes), so that a report is imported once. A report is read with a size
bound and holds no secret (activation and license ids, serials, times); importing one
never changes a license or an activation, it only adds to the audit log.
"""

import json
from pathlib import Path
from typing import Any

from agent.wire import sodium

from ..errors import CannotRead, Conflict, InvalidRequest
from ..models import Actor, AuditEvent
from ..services import HQ
from ..services.audit import event
from .bundle import MAX_BUNDLE_BYTES

REPORT_FORMAT = "fieldpass-field-report"
MAX_REPORT_BYTES = MAX_BUNDLE_BYTES


def make_report(
    bundle: dict[str, Any],
    pickups: list[dict[str, Any]],
    offered: set[str],
    served_from: str,
    operator: str,
    started_at: int,
    ended_at: int,
) -> dict[str, Any]:
    """The report of one ``field serve``: ``offered`` is every activation id the bundle
    had something for; those without a pickup are listed as not picked up."""
    picked = {p["activation_id"] for p in pickups}
    return {
        "format": REPORT_FORMAT,
        "v": 1,
        "bundle_created_at": bundle["created_at"],
        "served_from": served_from,
        "operator": operator,
        "started_at": started_at,
        "ended_at": ended_at,
        "pickups": pickups,
        "not_picked_up": sorted(offered - picked),
    }


def import_report(
    hq: HQ, report_path: Path, now: int, actor: Actor
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Record the report at ``report_path`` in the audit log, once; return the summary
    (report digest, pickups, not picked up) and the report."""
    try:
        raw = report_path.read_bytes()[:MAX_REPORT_BYTES]
    except OSError as e:
        raise CannotRead(f"cannot read the report {report_path}: {e.strerror or e}") from None
    try:
        report = json.loads(raw)
    except ValueError as e:
        raise InvalidRequest(f"{report_path}: not a field report ({e})") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise InvalidRequest(f"{report_path}: not a field report")
    digest = sodium.sha256(raw).hex()[:32]
    if any(
        e.action == "field_import" and e.detail and digest in e.detail for e in hq.audit(100_000)
    ):
        raise Conflict(f"{report_path} was imported already (report {digest})")
    who = f"field:{report.get('operator', 'unknown')}"
    pickups = report.get("pickups", [])
    hq.record_audit(
        *(
            AuditEvent(
                int(p["at"]),
                who,
                f"field-report:{report.get('served_from', '?')}",
                "field_pickup",
                str(p["license_id"]),
                str(p["activation_id"]),
                f"serial={int(p['serial'])} via={p['via']}",
            )
            for p in pickups
        ),
        event(now, actor, "field_import", detail=f"report={digest} pickups={len(pickups)}"),
    )
    summary = {
        "report": digest,
        "pickups": len(pickups),
        "not_picked_up": report.get("not_picked_up", []),
    }
    return summary, report
