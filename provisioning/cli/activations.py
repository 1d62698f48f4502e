"""``fieldpass-hq activate|machine-file|deactivate``: a device's seat and its machine
files, from a fingerprint or from a request file carried from an air-gapped device;
``activations list|reset-key``: the fleet's activations (read only) and a device key.

Writes the machine file where ``-o`` says (crash-safe), or armored text to stdout; never
prints the license key it was given.
"""

import sys
from pathlib import Path
from typing import Any

import click

from agent.wire import armor

from .. import documents
from ..errors import InvalidRequest
from ..services import Issued
from ..services.device_requests import answer_request, request_contact
from ..services.fleet import MAX_PAGE
from ..services.swap import Taken, swap
from ..storage.views import ACTIVATION_SORTS
from ..units import format_time
from . import common, output
from .usage import read_armored


def _issued_text(i: Issued, file: str | None) -> str:
    c = i.claims
    what = "activated (new seat)" if i.created else "machine file issued"
    where = f" -> {file}" if file else ""
    return (
        f"{what}: {i.activation.id} serial {c.serial}, valid until "
        f"{format_time(c.expires_at)}{where}"
    )


machine_file_options = [
    click.option(
        "-o",
        "--output",
        "out",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write the machine file to FILE (binary CBOR unless --armor).",
    ),
    click.option(
        "--armor",
        "armored",
        is_flag=True,
        help="Write FILE as armored text. Without -o, armored text goes to stdout.",
    ),
    common.json_option,
]


def _deliver(
    issued: Any, out: Path | None, armored: bool, as_json: bool, taken: tuple[Taken, ...] = ()
) -> None:
    text = armor.armor(issued.machine_file, armor.MACHINE_FILE)
    if out is not None:
        output.write_file(out, text.encode("ascii") if armored else issued.machine_file)
    if as_json:
        doc = documents.issued_doc(issued, str(out) if out else None)
        if taken:
            doc["receipts"] = [t.doc() for t in taken]
        output.emit_json(doc)
    elif out is None:
        sys.stdout.write(text)
    else:
        output.emit_text(_issued_text(issued, str(out)))


request_option = click.option(
    "--request",
    "request_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A request written on the device by `fieldpass request` (air-gapped flow).",
)


def _next_step(out: Path | None, *, with_key: bool) -> None:
    """The device's side, as a command to type: an activation's answer is installed with
    the license key (a file holding it; the device keeps its own copy), a renewal's
    without."""
    where, name = (str(out), out.name) if out else ("the text above (saved to a FILE)", "FILE")
    key = " --license-key-file KEYFILE" if with_key else ""
    held = " (KEYFILE: a file holding the license key)" if with_key else ""
    click.echo(
        f"Next: carry {where} to the device and run `fieldpass install {name}{key}` "
        f"there{held}; `fieldpass check` then exits 0.",
        err=True,
    )


override_option = click.option(
    "--override",
    metavar="REASON",
    help="Free the seat although the plan's return limit is reached (audited with REASON).",
)


@click.command()
@click.argument("license_key")
@click.option("--fingerprint", help="The device fingerprint (64 hex).")
@request_option
@click.option(
    "--receipt",
    "receipt_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A mainboard swap: the old board's return receipt (`fieldpass return`), of this "
    "license, taken first as `deactivate --receipt` takes it.",
)
@override_option
@common.with_options(machine_file_options)
@click.pass_context
def activate(
    ctx: click.Context,
    license_key: str,
    fingerprint: str | None,
    request_file: Path | None,
    receipt_file: Path | None,
    override: str | None,
    out: Path | None,
    armored: bool,
    as_json: bool,
) -> None:
    """Activate LICENSE_KEY on a device: consume a seat, issue its machine file.

    The same fingerprint again consumes nothing and gets a fresh file (next serial).
    Past the seat limit the activation is refused (exit 1). The device prints its
    fingerprint with `fieldpass fingerprint`.

    With --receipt (a mainboard swap, docs/runbooks/mainboard-swap.md), the old board's
    receipt is taken first (its seat frees at once when its state is bound to its TPM,
    else after its file's expiry and grace), then the new board is activated. A receipt
    of another license is refused before anything changes; one HQ took already is no
    error (running the command again gives the same seat); a refused activation leaves
    the receipt taken, as `deactivate --receipt` would have.

    Examples:

    \b
      fieldpass-hq activate FP-XXXXX-XXXXX-XXXXX-XXXXX-XXXXX --fingerprint 3f2a... -o m.lic
      fieldpass-hq activate FP-XXXXX-... --fingerprint 3f2a... > machine-file.txt
      fieldpass-hq activate FP-XXXXX-... --fingerprint 3f2a... -o m.lic --json
      fieldpass-hq activate FP-XXXXX-... --request robot-17.request --armor -o answer.txt
      fieldpass-hq activate FP-XXXXX-... --request new.request --receipt old.receipt -o new.lic
    """
    hq = common.state(ctx).hq
    if request_file is not None and fingerprint:
        raise InvalidRequest("give --fingerprint or --request, not both")
    if override is not None and receipt_file is None:
        raise InvalidRequest("--override goes with --receipt")
    contact = None
    if request_file is not None:
        req = common.read_request(request_file)
        fingerprint, contact = req.fingerprint, request_contact(req)
    elif not fingerprint or len(fingerprint) != 64:
        raise click.BadParameter(
            "a fingerprint is 64 lowercase hex characters (or give --request)",
            param_hint="--fingerprint",
        )
    taken: tuple[Taken, ...] = ()
    if receipt_file is not None:
        done = swap(
            hq.usage, license_key, fingerprint, contact, read_armored(receipt_file, armor.RECEIPT),
            common.now(), "air-gapped", common.actor(), override=override,
        )  # fmt: skip
        issued, taken = done.issued, done.receipts
    else:
        issued = hq.activate(license_key, fingerprint, common.now(), common.actor(), contact)
    if taken and not as_json:
        output.emit_text("\n".join(_taken_text(t) for t in taken))
    _deliver(issued, out, armored, as_json, taken)
    if not as_json:
        _next_step(out, with_key=True)


def _taken_text(t: Taken) -> str:
    how = "taken before" if t.again else "taken"
    if t.freed:
        return f"return receipt of {t.activation_id}: {how}, seat freed"
    return (
        f"return receipt of {t.activation_id}: {how}, its seat frees on "
        f"{format_time(t.frees_at)} (its file's expiry and grace; no TPM binding)"
    )


@click.command("machine-file")
@click.argument("activation_id", required=False)
@click.option(
    "--ttl",
    callback=common.duration(),
    metavar="DURATION",
    default=None,
    help="Validity of the new file, capped by the plan's offline TTL.",
)
@request_option
@common.with_options(machine_file_options)
@click.pass_context
def machine_file(
    ctx: click.Context,
    activation_id: str | None,
    ttl: int | None,
    request_file: Path | None,
    out: Path | None,
    armored: bool,
    as_json: bool,
) -> None:
    """Renew: a fresh machine file for ACTIVATION_ID, without consuming a seat.

    Examples:

    \b
      fieldpass-hq machine-file act_0123456789abcdef0123 -o renewal.lic
      fieldpass-hq machine-file act_0123456789abcdef0123 --ttl 30d --armor -o renewal.txt
      fieldpass-hq machine-file act_0123456789abcdef0123 --json
      fieldpass-hq machine-file --request robot-17.request --armor -o renewal.txt
    """
    hq = common.state(ctx).hq
    if request_file is not None:
        if activation_id:
            raise InvalidRequest("give ACTIVATION_ID or --request, not both")
        issued = answer_request(
            hq.device, common.read_request(request_file), common.now(), common.actor()
        )
    else:
        if not activation_id:
            raise InvalidRequest("name an ACTIVATION_ID or give --request")
        issued = hq.renew(common.now(), common.actor(), activation_id=activation_id, ttl_s=ttl)
    _deliver(issued, out, armored, as_json)
    if not as_json:
        _next_step(out, with_key=False)


@click.command()
@click.argument("activation_id", required=False)
@click.option(
    "--receipt",
    "receipt_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A return receipt the device wrote (`fieldpass return`): frees its seat.",
)
@override_option
@click.option(
    "--reason",
    metavar="TEXT",
    help="Why (recorded in the audit log), e.g. a mainboard swap with a dead board.",
)
@common.json_option
@click.pass_context
def deactivate(
    ctx: click.Context,
    activation_id: str | None,
    receipt_file: Path | None,
    override: str | None,
    reason: str | None,
    as_json: bool,
) -> None:
    """Deactivate ACTIVATION_ID and free its seat, or free the seat of a device that
    gave its license back (--receipt FILE, verified against the device's key).

    A returned device's seat is free at once when its state is bound to its TPM, else
    once the expiry and grace of every file issued to it have passed
    (docs/runbooks/technician.md).

    Examples:

    \b
      fieldpass-hq deactivate act_0123456789abcdef0123
      fieldpass-hq deactivate act_0123456789abcdef0123 --json
      fieldpass-hq deactivate --receipt robot-17.receipt
      fieldpass-hq deactivate act_0123456789abcdef0123 --reason "mainboard swap: board dead"
    """
    hq = common.state(ctx).hq
    if receipt_file is not None:
        if activation_id:
            raise InvalidRequest("give ACTIVATION_ID or --receipt, not both")
        for data in read_armored(receipt_file, armor.RECEIPT):
            returned = hq.usage.accept_receipt(
                data, common.now(), "air-gapped", common.actor(), override=override
            )
            rec = returned.record
            if as_json:
                output.emit_json(
                    {"activation_id": rec.activation_id, "freed": returned.freed,
                     "frees_at": rec.frees_at, "serial": rec.serial}
                )  # fmt: skip
            elif returned.freed:
                output.emit_text(f"activation {rec.activation_id} returned: seat freed")
            else:
                output.emit_text(
                    f"activation {rec.activation_id} returned: its seat is freed on "
                    f"{format_time(rec.frees_at)} (its file's expiry and grace; no TPM binding)"
                )
        return
    if not activation_id:
        raise InvalidRequest("name an ACTIVATION_ID or give --receipt FILE")
    act = hq.deactivate(common.now(), common.actor(), activation_id=activation_id, reason=reason)
    if as_json:
        output.emit_json(documents.activation_doc(act))
    else:
        output.emit_text(f"activation {act.id} deactivated: seat freed")


@click.group()
def activations() -> None:
    """Activations (seats held by devices): list them, and the operator's actions on them.

    Examples:

    \b
      fieldpass-hq activations list --expiring-within 30d
      fieldpass-hq activations reset-key act_0123456789abcdef0123
    """


@activations.command("list")
@click.option("--license", "license_id", help="Devices of this license id.")
@click.option("--site", help="Devices placed at this site.")
@click.option("--plan", help="Devices on this plan.")
@click.option(
    "--expiring-within",
    callback=common.duration(),
    metavar="DURATION",
    help="Only devices whose file expires within DURATION (expired ones included).",
)
@click.option("--all", "everything", is_flag=True, help="Deactivated activations too.")
@click.option(
    "--sort",
    type=click.Choice(sorted(ACTIVATION_SORTS)),
    default="expires",
    show_default=True,
    help="Order by this column.",
)
@click.option("--desc", is_flag=True, help="Descending order.")
@click.option("--limit", type=click.IntRange(1, MAX_PAGE), help="At most this many.")
@click.option("--offset", type=click.IntRange(0), default=0, help="Skip this many first.")
@common.json_option
@click.pass_context
def activations_list(
    ctx: click.Context,
    license_id: str | None,
    site: str | None,
    plan: str | None,
    expiring_within: int | None,
    everything: bool,
    sort: str,
    desc: bool,
    limit: int | None,
    offset: int,
    as_json: bool,
) -> None:
    """List activations with their file's expiry, last contact and verdict.

    Reads only: unlike `field export --expiring-within`, nothing is renewed. The
    verdict is the device's as HQ last heard it (valid, warning, grace, expired,
    revoked, unknown); --json gives every time in Unix seconds and ISO 8601.

    Examples:

    \b
      fieldpass-hq activations list --expiring-within 30d
      fieldpass-hq activations list --site site-7 --sort seen
      fieldpass-hq activations list --license lic_0123456789abcdef0123 --all --json
    """
    page = common.state(ctx).hq.fleet.activations(
        common.now(),
        license_id=license_id,
        site=site,
        plan=plan,
        expiring_within_s=expiring_within,
        live=not everything,
        sort=sort,
        descending=desc,
        limit=limit,
        offset=offset,
    )
    if as_json:
        output.emit_json([documents.device_doc(d) for d in page.items])
        return
    rows = []
    for d in page.items:
        a = d.row.activation
        rows.append(
            [
                a.id,
                a.license_id,
                d.row.plan,
                d.row.site or "-",
                a.fingerprint[:16],
                str(a.serial),
                format_time(a.last_expires_at),
                format_time(a.last_seen_at),
                a.last_channel or "-",
                d.verdict if a.deactivated_at is None else "deactivated",
            ]
        )
    header = ["ACTIVATION", "LICENSE", "PLAN", "SITE", "DEVICE", "SERIAL", "FILE-EXPIRES"]
    header += ["LAST-SEEN", "VIA", "VERDICT"]
    text = output.table(rows, header)
    if len(page.items) < page.total:
        text += f"\n({len(page.items)} of {page.total}: --offset {page.offset + len(page.items)})"
    output.emit_text(text)


@activations.command("reset-key")
@click.argument("activation_id")
@common.json_option
@click.pass_context
def reset_key(ctx: click.Context, activation_id: str, as_json: bool) -> None:
    """Forget ACTIVATION_ID's device key (audited): for a device that lost its key
    file or had its storage replaced. The device then registers a new key with its
    next renewal, or activates again with the license key.

    Examples:

    \b
      fieldpass-hq activations reset-key act_0123456789abcdef0123
      fieldpass-hq activations reset-key act_0123456789abcdef0123 --json
    """
    act = common.state(ctx).hq.device.reset_key(activation_id, common.now(), common.actor())
    if as_json:
        output.emit_json(documents.activation_doc(act))
    else:
        output.emit_text(
            f"activation {act.id}: device key forgotten; the device registers a new one "
            "with its next renewal (or `fieldpass activate` again)"
        )
