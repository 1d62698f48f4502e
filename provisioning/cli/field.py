"""The technician's laptop: field bundles exported at HQ, served on site, reported back.

- ``fieldpass-hq field export`` (at HQ) renews the chosen devices and writes a bundle:
  their fresh machine files (signed and device-encrypted, so the bundle holds no
  secret) and nothing that could activate a new seat.
- ``fieldpass-hq field serve BUNDLE`` (on the laptop) answers the devices' existing HTTP
  path (``POST /v1/machine-file``) from the bundle, shows each pickup as it happens and
  writes a report when stopped (Ctrl-C, SIGTERM or ``--duration``). A device needs no
  change beyond the laptop's URL in its ``[online] servers``. It cannot activate,
  deactivate or validate: those answer with an error the device falls back from.
- ``fieldpass-hq field import REPORT`` (back at HQ) records every pickup in the audit log,
  once per report.
"""

import http.server
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click

from agent.wire import armor, sodium
from agent.wire import license_key as lk

from .. import output
from ..errors import InvalidRequest
from ..models import AuditEvent
from ..services import HQ, license_status
from ..services.audit import event
from ..units import format_time
from . import _actor, _duration, _now, _state, cli, json_option

BUNDLE_FORMAT = "fieldpass-field-bundle"
REPORT_FORMAT = "fieldpass-field-report"
MAX_BODY_BYTES = 16 * 1024
MAX_BUNDLE_BYTES = 64 * 1024 * 1024


@cli.group()
def field() -> None:
    """Field bundles for a technician's laptop: export, serve on site, import the report.

    \b
    Examples:
      fieldpass-hq field export --license lic_0123456789abcdef0123 -o site-7.bundle
      fieldpass-hq field serve site-7.bundle --host 192.168.7.1 --report site-7.report
      fieldpass-hq field import site-7.report
    """


def read_fingerprints(path: Path) -> set[str]:
    """A site's list: device fingerprints, one a line; blank lines and # comments skipped."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"cannot read the fingerprint list {path}: {e}") from e
    return {
        line.strip().lower()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }


def select(
    hq: HQ,
    licenses: tuple[str, ...],
    plan: str | None,
    fingerprints: set[str] | None,
    expiring_within_s: int | None,
    now: int,
    site: str | None = None,
) -> list[Any]:
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


@field.command("export")
@click.option("--site", help="Devices placed at this site (fieldpass-hq sites assign).")
@click.option("--license", "licenses", multiple=True, help="Devices of this license id.")
@click.option("--plan", help="Devices on this plan.")
@click.option(
    "--fingerprints",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A file of device fingerprints, one a line (a site's list).",
)
@click.option(
    "--expiring-within",
    callback=_duration(),
    metavar="DURATION",
    help="Only devices whose file expires within DURATION.",
)
@click.option("--all", "everything", is_flag=True, help="Every live activation.")
@click.option("--ttl", callback=_duration(), metavar="DURATION", help="Validity of the files.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True)
@json_option
@click.pass_context
def export(
    ctx: click.Context,
    site: str | None,
    licenses: tuple[str, ...],
    plan: str | None,
    fingerprints: Path | None,
    expiring_within: int | None,
    everything: bool,
    ttl: int | None,
    out: Path,
    as_json: bool,
) -> None:
    """Renew the chosen devices and write a field bundle for the technician.

    \b
    Examples:
      fieldpass-hq field export --site site-7 -o site-7.bundle
      fieldpass-hq field export --license lic_0123456789abcdef0123 -o site-7.bundle
      fieldpass-hq field export --fingerprints site-7.txt --ttl 365d -o site-7.bundle
      fieldpass-hq field export --all --expiring-within 60d -o tour.bundle
    """
    if not (site or licenses or plan or fingerprints or expiring_within or everything):
        raise InvalidRequest(
            "choose devices: --site, --license, --plan, --fingerprints, --expiring-within or --all"
        )
    fps = read_fingerprints(fingerprints) if fingerprints is not None else None
    hq = _state(ctx).hq
    now = _now()
    devices: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    revocations: list[dict[str, Any]] = []
    for act, lic in select(hq, licenses, plan, fps, expiring_within, now, site):
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
        issued = hq.renew(now, _actor(), activation_id=act.id, ttl_s=ttl)
        devices.append(
            {
                "activation_id": act.id,
                "license_id": lic.id,
                "fingerprint": act.fingerprint,
                "serial": issued.claims.serial,
                "expires_at": issued.claims.expires_at,
                "machine_file": armor.armor(issued.machine_file, armor.MACHINE_FILE),
            }
        )
    bundle = {
        "format": BUNDLE_FORMAT,
        "v": 1,
        "created_at": now,
        "created_by": _actor().who,
        "devices": devices,
        "revocations": revocations,
        "skipped": skipped,
    }
    output.write_file(out, (json.dumps(bundle, indent=1, sort_keys=True) + "\n").encode())
    summary = {
        "bundle": str(out),
        "devices": len(devices),
        "revocations": len(revocations),
        "skipped": skipped,
    }
    if as_json:
        output.emit_json(summary)
        return
    lines = [
        f"field bundle {out}: {len(devices)} renewed machine file(s), "
        f"{len(revocations)} signed revocation(s)"
    ]
    lines += [f"  skipped {s['activation_id']}: license {s['status']}" for s in skipped]
    lines.append(
        f"Next: copy {out} to the laptop and run `fieldpass-hq field serve {out.name}` on site."
    )
    output.emit_text("\n".join(lines))


def load_bundle(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()[:MAX_BUNDLE_BYTES]
        doc = json.loads(raw)
    except (OSError, ValueError) as e:
        raise InvalidRequest(f"{path}: not a field bundle ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT or doc.get("v") != 1:
        raise InvalidRequest(f"{path}: not a version-1 field bundle")
    return doc


class FieldServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], bundle: dict[str, Any], echo: bool) -> None:
        self.by_fingerprint = {d["fingerprint"]: d for d in bundle["devices"]}
        self.revocations = {r["fingerprint"]: r for r in bundle.get("revocations", [])}
        self.pickups: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.echo = echo
        super().__init__(address, _Handler)

    def picked(self, entry: dict[str, Any], via: str) -> None:
        record = {
            "activation_id": entry["activation_id"],
            "license_id": entry["license_id"],
            "fingerprint": entry["fingerprint"],
            "serial": entry.get("serial", 0),
            "at": int(time.time()),
            "via": via,
        }
        with self.lock:
            self.pickups.append(record)
        if self.echo:
            click.echo(
                f"picked up: {entry['activation_id']} (device "
                f"{entry['fingerprint'][:12]}…) serial {entry['serial']} via {via}"
            )


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FieldServer
    server_version = "fieldpass-field"

    def _send(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error": {"code": code, "message": message}})

    def log_message(self, format: str, *args: Any) -> None:
        pass  # request lines could carry nothing secret, but keep the console for pickups

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"ok": True, "field": True})
        else:
            self._error(404, "not_found", "no such endpoint")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._error(413, "invalid_request", "request body too large")
            return
        try:
            body = json.loads(self.rfile.read(length))
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            self._error(400, "invalid_request", "the body is not a JSON object")
            return
        if self.path == "/v1/machine-file":
            self._machine_file(body)
        elif self.path in ("/v1/activate", "/v1/deactivate"):
            self._error(
                403,
                "not_available_in_the_field",
                "a technician's laptop cannot activate or deactivate: ask HQ",
            )
        elif self.path == "/v1/validate":
            self._validate(body)
        else:
            self._error(404, "not_found", "no such endpoint")

    def _validate(self, body: dict[str, Any]) -> None:
        """The laptop cannot sign HQ's time; it can hand over a revocation HQ signed."""
        entry = self.server.revocations.get(str(body.get("fingerprint", "")))
        if entry is None:
            self._error(
                503, "hq_unreachable", "a technician's laptop cannot validate: offline verdict"
            )
            return
        self._send(200, {"revocation": entry["revocation"], "status": entry["reason"]})
        self.server.picked(entry, "http")

    def _machine_file(self, body: dict[str, Any]) -> None:
        entry = self.server.by_fingerprint.get(str(body.get("fingerprint", "")))
        if entry is None:
            self._error(404, "activation_not_found", "no renewal for this device in the bundle")
            return
        try:
            key_id = lk.license_id(lk.normalize(str(body.get("license_key", ""))))
        except ValueError:
            key_id = ""
        if not sodium.constant_time_equal(key_id.encode(), entry["license_id"].encode()):
            self._error(403, "license_not_found", "the license key does not match this device")
            return
        self._send(
            200, {k: entry[k] for k in ("activation_id", "serial", "expires_at", "machine_file")}
        )
        self.server.picked(entry, "http")


def offer_over_mqtt(server: FieldServer, url: str, username: str, password: str) -> Any:
    """Publish every renewal and revocation of the bundle, retained, on each device's
    topics, and count a pickup when the device's status reports the new serial (or the
    revoked verdict). The device's daemon verifies everything it receives."""
    from agent.daemon import messages, topics

    from ..mqtt.connection import connect

    prefix = topics.DEFAULT_PREFIX
    by_device = {topics.device_id(fp): e for fp, e in server.by_fingerprint.items()}
    revoked = {topics.device_id(fp): e for fp, e in server.revocations.items()}
    seen: set[str] = set()

    def on_message(client: object, userdata: object, message: Any) -> None:
        parsed = topics.parse(prefix, message.topic)
        if parsed is None or parsed[1] != topics.STATUS or parsed[0] in seen:
            return
        try:
            status = messages.parse_status(bytes(message.payload))
        except Exception:
            return
        dev = parsed[0]
        entry = by_device.get(dev)
        serial = status.get("serial")
        if entry is not None and type(serial) is int and serial >= entry["serial"]:
            seen.add(dev)
            server.picked(entry, "mqtt")
        elif dev in revoked and status.get("verdict") == "revoked":
            seen.add(dev)
            server.picked(revoked[dev], "mqtt")

    client = connect(
        url,
        f"fieldpass-field-{os.getpid()}",
        username,
        password,
        on_message=on_message,
        subscriptions=[f"{prefix}/dev/+/{topics.STATUS}"],
    )
    for dev, entry in by_device.items():
        data = armor.unarmor(entry["machine_file"], armor.MACHINE_FILE)
        client.publish(topics.topic(prefix, dev, topics.MACHINE_FILE), data, qos=1, retain=True)
    for dev, entry in revoked.items():
        data = armor.unarmor(entry["revocation"], armor.REVOCATION)
        client.publish(topics.topic(prefix, dev, topics.REVOCATION), data, qos=1, retain=True)
    click.echo(f"offering the bundle on {url} too", err=True)
    return client


@field.command("serve")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on: the laptop's address on the local link.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8750, show_default=True)
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path),
    help="Where to write the report [default: BUNDLE.report].",
)
@click.option(
    "--duration",
    type=click.IntRange(1, 7 * 86400),
    help="Stop after this many seconds [default: until Ctrl-C or SIGTERM].",
)
@click.option(
    "--broker",
    metavar="URL",
    help="Also offer the bundle over MQTT on this broker (the site's, or the laptop's own "
    "mosquitto): mqtt://HOST[:PORT] or mqtts://.",
)
@click.option("--broker-username", default="fieldpass-hq", show_default=True)
@click.option(
    "--broker-password-file",
    type=click.Path(dir_okay=False),
    help="The password of that user in the broker's password file.",
)
def serve(
    bundle_path: Path,
    host: str,
    port: int,
    report_path: Path | None,
    duration: int | None,
    broker: str | None,
    broker_username: str,
    broker_password_file: str | None,
) -> None:
    """On site: offer the bundle's renewals to the devices over the local link.

    Devices pick them up through their usual HTTP path once the laptop's URL is in
    their `[online] servers`, and through their MQTT daemon once the broker given with
    --broker is in their `[mqtt] brokers`. Each pickup is shown; the report is written
    on exit.

    \b
    Examples:
      fieldpass-hq field serve site-7.bundle --host 192.168.7.1
      fieldpass-hq field serve site-7.bundle --host 192.168.7.1 --duration 3600
      fieldpass-hq field serve site-7.bundle --host 192.168.7.1 --broker mqtt://192.168.7.1
    """
    bundle = load_bundle(bundle_path)
    server = FieldServer((host, port), bundle, echo=True)
    started = int(time.time())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    mqtt_client = None
    if broker:
        password = Path(broker_password_file).read_text().strip() if broker_password_file else ""
        mqtt_client = offer_over_mqtt(server, broker, broker_username, password)
    click.echo(
        f"serving {len(server.by_fingerprint)} renewal(s) on http://{host}:{port} "
        f"(Ctrl-C to stop and write the report)",
        err=True,
    )
    stop.wait(timeout=duration)
    if mqtt_client is not None:
        mqtt_client.loop_stop()
        mqtt_client.disconnect()
    server.shutdown()
    server.server_close()
    picked = {p["activation_id"] for p in server.pickups}
    offered = {e["activation_id"] for e in server.by_fingerprint.values()}
    offered |= {e["activation_id"] for e in server.revocations.values()}
    report = {
        "format": REPORT_FORMAT,
        "v": 1,
        "bundle_created_at": bundle["created_at"],
        "served_from": f"{host}:{port}",
        "operator": _actor().who,
        "started_at": started,
        "ended_at": int(time.time()),
        "pickups": server.pickups,
        "not_picked_up": sorted(offered - picked),
    }
    out = report_path or bundle_path.with_name(bundle_path.name + ".report")
    output.write_file(out, (json.dumps(report, indent=1, sort_keys=True) + "\n").encode())
    click.echo(
        f"{len(picked)} of {len(offered)} device(s) picked up their renewal or "
        f"revocation; report written to {out}. Next: bring it to HQ: "
        f"`fieldpass-hq field import {out.name}`."
    )


@field.command("import")
@click.argument("report_path", metavar="REPORT", type=click.Path(path_type=Path, dir_okay=False))
@json_option
@click.pass_context
def import_report(ctx: click.Context, report_path: Path, as_json: bool) -> None:
    """Back at HQ: record a field report's pickups in the audit log (once per report).

    \b
    Examples:
      fieldpass-hq field import site-7.report
    """
    try:
        raw = report_path.read_bytes()[:MAX_BUNDLE_BYTES]
        report = json.loads(raw)
    except (OSError, ValueError) as e:
        raise InvalidRequest(f"{report_path}: not a field report ({e})") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise InvalidRequest(f"{report_path}: not a field report")
    digest = sodium.sha256(raw).hex()[:32]
    hq = _state(ctx).hq
    if any(
        e.action == "field_import" and e.detail and digest in e.detail for e in hq.audit(100_000)
    ):
        raise InvalidRequest(f"{report_path} was imported already (report {digest})")
    now = _now()
    actor = _actor()
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
    if as_json:
        output.emit_json(summary)
        return
    missing = summary["not_picked_up"]
    output.emit_text(
        f"recorded {len(pickups)} pickup(s) from {report_path} in the audit log"
        + (f"; not picked up: {', '.join(missing)}" if missing else "")
        + f" (since {format_time(int(report['started_at']))})"
    )


# -- sites ----------------------------------------------------------------------------------
@cli.group()
def sites() -> None:
    """Sites: where devices stand, so a technician's bundle can name one.

    \b
    Examples:
      fieldpass-hq sites assign site-7 --fingerprints site-7.txt
      fieldpass-hq sites assign site-7 act_0123456789abcdef0123
      fieldpass-hq sites list
      fieldpass-hq field export --site site-7 -o site-7.bundle
    """


@sites.command("assign")
@click.argument("site")
@click.argument("activation_ids", nargs=-1)
@click.option(
    "--fingerprints",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A file of device fingerprints, one a line.",
)
@json_option
@click.pass_context
def sites_assign(
    ctx: click.Context,
    site: str,
    activation_ids: tuple[str, ...],
    fingerprints: Path | None,
    as_json: bool,
) -> None:
    """Place devices (live activations, by id or by fingerprint) at SITE.

    A device is at one site at a time: assigning it again moves it. Recorded in the
    audit log.

    \b
    Examples:
      fieldpass-hq sites assign site-7 --fingerprints site-7.txt
      fieldpass-hq sites assign mine-north act_0123456789abcdef0123 act_89abcdef0123456789ab
    """
    fps = read_fingerprints(fingerprints) if fingerprints is not None else set()
    if not (activation_ids or fps):
        raise InvalidRequest("name the devices: activation ids or --fingerprints FILE")
    acts = _state(ctx).hq.assign_site(site, list(activation_ids), fps, _now(), _actor())
    if as_json:
        output.emit_json({"site": site, "activation_ids": sorted(a.id for a in acts)})
        return
    output.emit_text(
        f"{len(acts)} device(s) at site {site}.\n"
        f"Next: fieldpass-hq field export --site {site} -o {site}.bundle"
    )


@sites.command("list")
@json_option
@click.pass_context
def sites_list(ctx: click.Context, as_json: bool) -> None:
    """Every site and how many live devices it has.

    \b
    Examples:
      fieldpass-hq sites list
      fieldpass-hq sites list --json
    """
    rows = _state(ctx).hq.list_sites()
    if as_json:
        output.emit_json([{"site": name, "devices": n} for name, n in rows])
        return
    output.emit_text(output.table([[name, str(n)] for name, n in rows], ["SITE", "DEVICES"]))
