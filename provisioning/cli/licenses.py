"""``fieldpass-hq licenses create|list|show|seats|suspend|reinstate|revoke``.

``create`` prints the new license's key, the one time it is ever shown; every other
command shows the license id only, never the key.
"""

import sys

import click

from .. import documents
from ..errors import InvalidRequest
from ..models import LICENSE_REVOKED, EntitlementRow
from ..storage.views import LICENSE_SORTS, LICENSE_STATUSES
from ..units import format_time, parse_date
from . import common, output


@click.group()
def licenses() -> None:
    """Licenses: create, list, show, seats, suspend, reinstate, revoke.

    Examples:

    \b
      fieldpass-hq licenses create --plan robot-std --entitlement welding:2027-06-30
      fieldpass-hq licenses list
      fieldpass-hq licenses show lic_0123456789abcdef0123
      fieldpass-hq licenses suspend lic_0123456789abcdef0123
    """


def _entitlement(text: str) -> EntitlementRow:
    feature, sep, date = text.partition(":")
    try:
        return EntitlementRow(feature.strip(), parse_date(date) if sep else None)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--entitlement") from e


@licenses.command("create")
@click.option("--plan", "plan_name", required=True, help="The plan this license follows.")
@click.option(
    "--entitlement",
    "entitlements",
    multiple=True,
    metavar="FEATURE[:DATE]",
    help="A feature flag, with an optional expiry date (repeatable).",
)
@click.option(
    "--expires",
    callback=common.date,
    metavar="DATE",
    default=None,
    help="License expiry: YYYY-MM-DD (00:00 UTC that day) or an ISO 8601 time.",
)
@common.json_option
@click.pass_context
def licenses_create(
    ctx: click.Context,
    plan_name: str,
    entitlements: tuple[str, ...],
    expires: int | None,
    as_json: bool,
) -> None:
    """Create a license and print its key, the one time it is printed.

    The key is a secret: give it to the customer; HQ only ever shows the license id.

    Examples:

    \b
      fieldpass-hq licenses create --plan robot-std
      fieldpass-hq licenses create --plan robot-std --entitlement welding \\
          --entitlement vision:2027-06-30 --expires 2028-01-01
      fieldpass-hq licenses create --plan trial --json
    """
    rows = [_entitlement(e) for e in entitlements]
    lic = common.state(ctx).hq.create_license(
        plan_name, rows, expires, common.now(), common.actor()
    )
    if as_json:
        output.emit_json(documents.license_doc(lic, lic.created_at, with_key=True))
    else:
        output.emit_text(lic.license_key)


@licenses.command("list")
@click.option("--plan", help="Licenses on this plan.")
@click.option("--status", type=click.Choice(LICENSE_STATUSES), help="Licenses in this status.")
@click.option("--site", help="Licenses with a live device at this site.")
@click.option(
    "--expiring-within",
    callback=common.duration(),
    metavar="DURATION",
    help="Licenses with a live device whose file expires within DURATION.",
)
@click.option(
    "--sort",
    type=click.Choice(sorted(LICENSE_SORTS)),
    default="created",
    show_default=True,
    help="Order by this column.",
)
@click.option("--desc", is_flag=True, help="Descending order.")
@common.json_option
@click.pass_context
def licenses_list(
    ctx: click.Context,
    plan: str | None,
    status: str | None,
    site: str | None,
    expiring_within: int | None,
    sort: str,
    desc: bool,
    as_json: bool,
) -> None:
    """List licenses by id (never their keys): status, seats used of the limit, and the
    earliest expiry of their live devices' files.

    Examples:

    \b
      fieldpass-hq licenses list
      fieldpass-hq licenses list --expiring-within 30d --sort first_expiry
      fieldpass-hq licenses list --plan robot-std --status active --json
    """
    now = common.now()
    page = common.state(ctx).hq.fleet.licenses(
        now,
        plan=plan,
        status=status,
        site=site,
        expiring_within_s=expiring_within,
        sort=sort,
        descending=desc,
    )
    docs = [documents.license_summary_doc(s, now) for s in page.items]
    if as_json:
        output.emit_json(docs)
        return
    rows = [
        [
            doc["id"],
            doc["plan"],
            doc["status"],
            f"{doc['seats_used']}/{doc['seats_limit']}",
            format_time(doc["first_file_expires_at"]),
            format_time(doc["expires_at"]),
        ]
        for doc in docs
    ]
    header = ["ID", "PLAN", "STATUS", "SEATS", "FIRST-FILE-EXPIRES", "LICENSE-EXPIRES"]
    output.emit_text(output.table(rows, header))


@licenses.command("seats")
@click.argument("license_id")
@click.argument("seats", metavar="SEATS|plan")
@common.json_option
@click.pass_context
def licenses_seats(ctx: click.Context, license_id: str, seats: str, as_json: bool) -> None:
    """Give a license its own seat limit SEATS, above or below its plan's ("add seats"
    for one customer), or `plan` for its plan's again. Audited (license_seats).

    A limit below the seats in use is refused (exit 1): deactivate devices first.

    Examples:

    \b
      fieldpass-hq licenses seats lic_0123456789abcdef0123 12
      fieldpass-hq licenses seats lic_0123456789abcdef0123 plan --json
    """
    if seats == "plan":
        own = None
    elif seats.isdigit():
        own = int(seats)
    else:
        raise click.BadParameter("a number of seats, or 'plan'", param_hint="SEATS")
    lic, plan = common.state(ctx).hq.set_license_seats(
        license_id, own, common.now(), common.actor()
    )
    limit = lic.seat_limit(plan)
    if as_json:
        doc = {"id": lic.id, "seats_own": lic.seats, "seats_limit": limit}
        output.emit_json({**doc, "seats_used": lic.seats_used, "plan_seats": plan.seats})
        return
    whose = f"plan {plan.name}'s" if own is None else "its own"
    output.emit_text(f"license {lic.id}: {limit} seats ({whose}), {lic.seats_used} in use")


@licenses.command("show")
@click.argument("id_or_key")
@common.json_option
@click.pass_context
def licenses_show(ctx: click.Context, id_or_key: str, as_json: bool) -> None:
    """Show one license (by id or key) and its activations.

    Examples:

    \b
      fieldpass-hq licenses show lic_0123456789abcdef0123
      fieldpass-hq licenses show FP-XXXXX-XXXXX-XXXXX-XXXXX-XXXXX --json
    """
    now = common.now()
    lic, acts = common.state(ctx).hq.get_license(id_or_key)
    doc = documents.license_doc(lic, now)
    doc["activations"] = [documents.activation_doc(a) for a in acts]
    if as_json:
        output.emit_json(doc)
        return
    lines = [
        f"license   {lic.id}",
        f"plan      {lic.plan}",
        f"status    {doc['status']}",
        f"expires   {format_time(lic.expires_at)}",
        f"seats     {lic.seats_used} in use",
    ]
    for e in lic.entitlements:
        lines.append(f"feature   {e.feature} (until {format_time(e.expires_at)})")
    for a in acts:
        state = "live" if a.deactivated_at is None else "deactivated"
        lines.append(
            f"activation {a.id} {state} fingerprint {a.fingerprint[:16]}... serial {a.serial} "
            f"valid until {format_time(a.last_expires_at)}"
        )
    output.emit_text("\n".join(lines))


def _status_command(action: str, summary: str) -> None:
    @licenses.command(
        action,
        help=f"""{summary}

    Examples:

    \b
      fieldpass-hq licenses {action} lic_0123456789abcdef0123
      fieldpass-hq licenses {action} lic_0123456789abcdef0123 --json
    """,
    )
    @click.argument("license_id")
    @common.json_option
    @click.pass_context
    def command(ctx: click.Context, license_id: str, as_json: bool) -> None:
        _set_status(ctx, license_id, action, as_json)


def _set_status(ctx: click.Context, license_id: str, action: str, as_json: bool) -> None:
    lic = common.state(ctx).hq.set_status(license_id, action, common.now(), common.actor())
    if as_json:
        output.emit_json({"id": lic.id, "status": lic.status, "updated_at": lic.updated_at})
    else:
        output.emit_text(f"license {lic.id} is now {lic.status}")


_status_command("suspend", "Suspend a license: no activation or renewal until reinstated.")
_status_command("reinstate", "Lift a suspension.")


@licenses.command("revoke")
@click.argument("license_id")
@click.option("-y", "--yes", is_flag=True, help="Do not ask: for scripts (a revocation is final).")
@common.json_option
@click.pass_context
def licenses_revoke(ctx: click.Context, license_id: str, yes: bool, as_json: bool) -> None:
    """Revoke a license for good; devices learn it when they go online.

    A revocation is final: the license can never be reinstated, and every device on it
    stops (the gate exits 32) once it learns of it. On a terminal it asks first, naming
    the license and its live activations; scripts pass --yes. Without a terminal and
    without --yes it refuses (exit 2) and changes nothing.

    Examples:

    \b
      fieldpass-hq licenses revoke lic_0123456789abcdef0123
      fieldpass-hq licenses revoke lic_0123456789abcdef0123 --yes --json
    """
    if not yes:
        lic, acts = common.state(ctx).hq.get_license(license_id)
        if lic.status != LICENSE_REVOKED:
            live = sum(1 for a in acts if a.deactivated_at is None)
            if not sys.stdin.isatty():
                raise InvalidRequest(
                    f"revoking {lic.id} is final: confirm with --yes (no terminal to ask on)"
                )
            click.confirm(
                f"Revoke license {lic.id} (plan {lic.plan}) for good? Its {live} live "
                f"activation(s) stop working (exit 32) as their devices learn of it, and "
                f"a revoked license can never be reinstated.",
                default=False,
                abort=True,
                err=True,
            )
    _set_status(ctx, license_id, "revoke", as_json)
