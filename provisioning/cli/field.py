"""``fieldpass-hq field export|serve|relay|import``: the technician's laptop
(provisioning/field/).

``export`` runs at HQ and writes a bundle; ``serve`` runs on the laptop, on site, and
shows each pickup as it happens; ``relay`` (on the laptop, with a link to HQ) carries a
mainboard swap's request and receipt to HQ and HQ's answer back; ``import`` runs back at
HQ. The bundle format, the laptop's server, the relay and the report are in
``provisioning/field/``; this module parses options, reads the clock and prints, and
never decides what a bundle may carry.
"""

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from ..errors import InvalidRequest
from ..field import bundle, relay, report
from ..field.listener import Limits, Listener
from ..field.server import FieldServer, offer_over_mqtt
from ..units import format_time
from . import common, output


@click.group()
def field() -> None:
    """Field bundles for a technician's laptop: export, serve on site, import the report.

    \b
    Examples:
      fieldpass-hq field export --license lic_0123456789abcdef0123 -o site-7.bundle
      fieldpass-hq field serve site-7.bundle --host 192.168.7.1 --report site-7.report
      fieldpass-hq field relay --hq https://hq.example.com --license-key-file license.key \\
        --request new.request --report site-7.report -o new.answer
      fieldpass-hq field import site-7.report
    """


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
    callback=common.duration(),
    metavar="DURATION",
    help="Only devices whose file expires within DURATION.",
)
@click.option("--all", "everything", is_flag=True, help="Every live activation.")
@click.option(
    "--ttl", callback=common.duration(), metavar="DURATION", help="Validity of the files."
)
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True)
@common.json_option
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
    fps = common.read_fingerprints(fingerprints) if fingerprints is not None else None
    hq = common.state(ctx).hq
    now = common.now()
    chosen = bundle.select(hq, licenses, plan, fps, expiring_within, now, site)
    # As `provision --csv`: a progress bar on a terminal (stderr), else its label once.
    with click.progressbar(length=len(chosen), label="exporting", file=sys.stderr) as bar:
        doc = bundle.export(hq, chosen, ttl, now, common.actor(), progress=bar.update)
    devices, revocations, skipped = doc["devices"], doc["revocations"], doc["skipped"]
    output.write_file(out, bundle.to_bytes(doc))
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
    lines += [
        f"  skipped {s['activation_id']}: "
        + (
            "given back (returned), no file"
            if s["status"] == "returned"
            else f"license {s['status']}"
        )
        for s in skipped
    ]
    lines.append(
        f"Next: copy {out} to the laptop and run `fieldpass-hq field serve {out.name}` on site."
    )
    output.emit_text("\n".join(lines))


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
@click.option("--broker-username", default="fieldpass-hq-field", show_default=True)
@click.option(
    "--broker-password-file",
    type=click.Path(dir_okay=False),
    help="The password of that user in the broker's password file.",
)
@click.option(
    "--header-timeout",
    type=click.IntRange(1, 600),
    default=int(Limits.header_timeout_s),
    show_default=True,
    help="Seconds a client has, from connecting, to send a request's line and headers.",
)
@click.option(
    "--body-timeout",
    type=click.IntRange(1, 600),
    default=int(Limits.body_timeout_s),
    show_default=True,
    help="Seconds a client has, after the headers, to send the body.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1, 100_000),
    default=Limits.max_connections,
    show_default=True,
    help="Connections served at once (at most 1/20 of them, and 50, from one address).",
)
@common.json_option
def serve(
    bundle_path: Path,
    host: str,
    port: int,
    report_path: Path | None,
    duration: int | None,
    broker: str | None,
    broker_username: str,
    broker_password_file: str | None,
    header_timeout: int,
    body_timeout: int,
    max_connections: int,
    as_json: bool,
) -> None:
    """On site: offer the bundle's renewals to the devices over the local link.

    Devices pick them up through their usual HTTP path once the laptop's URL is in
    their `[online] servers`, and through their MQTT daemon once the broker given with
    --broker is in their `[mqtt] brokers`. Each file served and each pickup a device
    confirms (its signed status) is shown; the report is written on exit. With --json
    these go to stderr and a summary is printed on exit.

    \b
    Examples:
      fieldpass-hq field serve site-7.bundle --host 192.168.7.1
      fieldpass-hq field serve site-7.bundle --host 192.168.7.1 --duration 3600
      fieldpass-hq field serve site-7.bundle --host 192.168.7.1 --broker mqtt://192.168.7.1
      fieldpass-hq field serve site-7.bundle --duration 600 --json
    """
    doc = bundle.load_bundle(bundle_path)

    def show(record: dict[str, Any], confirmed: bool) -> None:
        if record["what"] in ("usage_report", "receipt"):
            carry(record)
            return
        serial = f" serial {record['serial']}" if record.get("serial") is not None else ""
        what = "renewal" if record["what"] == "machine_file" else "revocation"
        head = "picked up" if confirmed else "served"
        tail = " (confirmed by the device)" if confirmed else ", waiting for its status"
        click.echo(
            f"{head}: {what} of {record['activation_id']} (device "
            f"{record['fingerprint'][:12]}…){serial} via {record['via']}{tail}",
            err=as_json,
        )

    def carry(record: dict[str, Any]) -> None:
        device = f"{record['activation_id']} (device {record['fingerprint'][:12]}…)"
        if record["what"] == "usage_report":
            click.echo(f"usage report {record['seq']} of {device}: carried to HQ", err=as_json)
            return
        click.echo(
            f"return receipt of {device}: carried to HQ, where `field import` frees the seat",
            err=as_json,
        )
        write_report()  # a receipt the device has let go of survives the laptop's power cut

    def write_report() -> None:
        made = report.make_report(
            doc,
            server.records(),
            server.offered(),
            f"{host}:{port}",
            common.actor().who,
            started,
            int(time.time()),
            server.carried(),
        )
        output.write_file(out, bundle.to_bytes(made))

    out = report_path or bundle_path.with_name(bundle_path.name + ".report")
    started = int(time.time())
    server = FieldServer(doc, on_record=show)
    limits = Limits(
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        max_connections=max_connections,
        max_per_address=max(1, min(50, max_connections // 20)),
    )
    listener = Listener(host, port, server.answer, limits)
    listener.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    mqtt_client = None
    try:
        if broker:
            password = (
                Path(broker_password_file).read_text().strip() if broker_password_file else ""
            )
            mqtt_client = offer_over_mqtt(server, broker, broker_username, password)
            click.echo(f"offering the bundle on {broker} too", err=True)
        click.echo(
            f"serving {len(server.by_fingerprint)} renewal(s) and {len(server.revocations)} "
            f"revocation(s) on http://{host}:{port} (Ctrl-C to stop and write the report)",
            err=True,
        )
        stop.wait(timeout=duration)
    finally:
        if mqtt_client is not None:
            mqtt_client.loop_stop()
            mqtt_client.disconnect()
        listener.stop()
    write_report()
    records, offered = server.records(), server.offered()
    usage_reports, receipts = server.carried()
    confirmed = sorted(r["activation_id"] for r in records[0])
    unconfirmed = sorted(r["activation_id"] for r in records[1])
    if as_json:
        output.emit_json(
            {
                "report": str(out),
                "offered": len(offered),
                "picked_up": confirmed,
                "served_unconfirmed": unconfirmed,
                "usage_reports": len(usage_reports),
                "receipts": len(receipts),
                "ignored_messages": server.ignored,
            }
        )
        return
    more = (
        f"; {len(unconfirmed)} more served, unconfirmed (no signed status: agents of 0.1.0)"
        if unconfirmed
        else ""
    )
    if usage_reports or receipts:
        more += (
            f"; carrying {len(usage_reports)} usage report(s) and {len(receipts)} return "
            "receipt(s) for HQ"
        )
    click.echo(
        f"{len(confirmed)} of {len(offered)} device(s) picked up their renewal or "
        f"revocation{more}; report written to {out}. Next: bring it to HQ: "
        f"`fieldpass-hq field import {out.name}`."
    )


@field.command("relay")
@click.option(
    "--hq",
    "hq_url",
    metavar="URL",
    required=True,
    help="HQ's API: https://HOST[:PORT] (plain http:// only to this machine).",
)
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False, exists=True),
    help="PEM CA certificate(s) HQ's certificate is verified against [default: the system's].",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.IntRange(1, 120),
    default=relay.DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for HQ (connecting, then its answer).",
)
@click.option(
    "--license-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="A file holding the license key (sent to HQ only, over TLS; never printed).",
)
@click.option(
    "--request",
    "request_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The new board's request (`fieldpass request -o FILE`).",
)
@click.option(
    "--receipt",
    "receipt_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The old board's return receipt (`fieldpass return -o FILE`).",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Instead of --receipt: the receipts of this license that the laptop collected "
    "(`field serve`'s report).",
)
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Write HQ's answer (the new board's machine file) to FILE.",
)
@click.option("--armor", "armored", is_flag=True, help="Write FILE as armored text.")
@common.json_option
def relay_swap(
    hq_url: str,
    ca_file: str | None,
    timeout_s: int,
    license_key_file: Path,
    request_path: Path,
    receipt_path: Path | None,
    report_path: Path | None,
    out: Path,
    armored: bool,
    as_json: bool,
) -> None:
    """On site, with a link to HQ: activate a new mainboard at HQ, the old board's
    return receipt(s) with it (docs/runbooks/mainboard-swap.md).

    Sends the new board's request and the old board's receipt, the devices' bytes
    unchanged, to HQ over TLS; HQ takes the receipt (its seat frees at once for a board
    bound to its TPM), activates the new board and answers its machine file, written to
    FILE for `fieldpass install FILE --license-key-file KEYFILE` on the new board. The
    laptop activates and frees nothing itself. Running it again is safe: a receipt HQ
    took is not taken twice, and the same board gets its seat again. Without the old
    board's receipt (a dead board: the operator's decision at HQ), give neither
    --receipt nor --report.

    \b
    Examples:
      fieldpass-hq field relay --hq https://hq.example.com --license-key-file license.key \\
        --request robot-17-new.request --receipt robot-17.receipt -o robot-17-new.answer
      fieldpass-hq field relay --hq https://hq.example.com --ca-file hq-ca.pem \\
        --license-key-file license.key --request robot-17-new.request \\
        --report site-7.bundle.report -o robot-17-new.answer
    """
    from agent.wire import armor, license_key

    if receipt_path is not None and report_path is not None:
        raise InvalidRequest("give --receipt or --report, not both")
    key = relay.read_license_key(license_key_file)
    request = relay.read_request(request_path)
    receipts: list[bytes] = []
    if receipt_path is not None:
        from .usage import read_armored

        receipts = read_armored(receipt_path, armor.RECEIPT)
    elif report_path is not None:
        receipts = relay.report_receipts(report_path, license_key.license_id(key))
    done = relay.relay(hq_url, ca_file, timeout_s, key, request, receipts)
    text = armor.armor(done.machine_file, armor.MACHINE_FILE)
    output.write_file(out, text.encode("ascii") if armored else done.machine_file)
    if as_json:
        output.emit_json(
            {
                "answer": str(out),
                "activation_id": done.activation_id,
                "serial": done.serial,
                "created": done.created,
                "receipts": done.receipts,
            }
        )
        return
    lines = [_relayed_receipt(r) for r in done.receipts]
    seat = "a new seat" if done.created else "its seat again"
    lines.append(
        f"HQ activated the new board: {done.activation_id} serial {done.serial} ({seat}) -> {out}"
    )
    lines.append(
        f"Next: on the new board, `fieldpass install {out.name} --license-key-file KEYFILE`; "
        "`fieldpass check` then exits 0."
    )
    output.emit_text("\n".join(lines))


def _relayed_receipt(r: dict[str, Any]) -> str:
    head = f"HQ took the return receipt of {r['activation_id']}"
    if r["taken_before"]:
        head += " (taken before)"
    if r["freed"]:
        return f"{head}: seat freed"
    return f"{head}: its seat frees on {format_time(r['frees_at'])} (no TPM binding)"


@field.command("import")
@click.argument("report_path", metavar="REPORT", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--override",
    metavar="REASON",
    help="Free the seats of the report's receipts although the plan's return limit is "
    "reached (audited with REASON); also for a report imported already.",
)
@common.json_option
@click.pass_context
def import_report(
    ctx: click.Context, report_path: Path, override: str | None, as_json: bool
) -> None:
    """Back at HQ: record a field report's pickups in the audit log (once per report),
    its usage reports, and the seats its return receipts free.

    \b
    Examples:
      fieldpass-hq field import site-7.report
      fieldpass-hq field import site-7.report --override "mainboard swap, ticket 4711"
    """
    hq = common.state(ctx).hq
    summary, doc = report.import_report(
        hq, report_path, common.now(), common.actor(), override=override
    )
    if as_json:
        output.emit_json(summary)
        return
    missing, unverified = summary["not_picked_up"], summary["unverified"]
    reports, receipts = summary["usage_reports"], summary["receipts"]
    lines = [
        f"recorded {summary['pickups']} pickup(s) confirmed by the devices and "
        f"{summary['served_unconfirmed']} served, unconfirmed, from {report_path} in the "
        f"audit log (served from {format_time(int(doc['started_at']))}); "
        f"{reports['accepted']} usage report(s){_refused(reports)}; "
        f"{receipts['accepted']} return receipt(s){_refused(receipts)}, "
        f"{receipts['freed']} seat(s) freed now"
    ]
    if receipts["held"]:
        held = receipts["held"]
        lines.append(f"  {held} return receipt(s) HQ held already (relayed, or sent before)")
    if receipts["freed_by_hand"]:
        by_hand = receipts["freed_by_hand"]
        lines.append(f"  {by_hand} return receipt(s) of a seat freed by hand already")
    if summary["already_recorded"]:
        lines.append(f"  {summary['already_recorded']} were recorded already (another report)")
    if unverified:
        lines.append(
            "  recorded as unconfirmed, their signed status does not verify (a device key "
            f"reset since, or a forgery): {', '.join(unverified)}"
        )
    if missing:
        lines.append(f"  not picked up: {', '.join(missing)}")
    if receipts["refused"].get("return_limit_reached"):
        lines.append(
            "  a plan's return limit kept some seats: run again with --override REASON to free them"
        )
    output.emit_text("\n".join(lines))


def _refused(counts: dict[str, Any]) -> str:
    refused = counts["refused"]
    if not refused:
        return ""
    reasons = ", ".join(f"{n} {code}" for code, n in sorted(refused.items()))
    return f" ({sum(refused.values())} refused: {reasons})"
