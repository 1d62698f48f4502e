"""``fieldpass-hq plans create|update|list``: plans (product, offline TTL, grace,
warning window, seats).

Parses options and prints; never checks a rule itself (the rules on a plan are
services/licenses.py and services/terms.py).
"""

import click

from .. import documents
from ..models import Plan
from ..services.terms import PlanChange
from ..units import format_duration
from . import common, output


def _plan_row(p: Plan) -> list[str]:
    warn = "ttl/3" if p.warn_s is None else format_duration(p.warn_s)
    return [
        p.name,
        p.product,
        format_duration(p.offline_ttl_s),
        format_duration(p.grace_s),
        warn,
        str(p.seats),
    ]


@click.group()
def plans() -> None:
    """Plans: product, offline TTL, grace period, warning window, seats.

    Examples:

    \b
      fieldpass-hq plans create robot-std --offline-ttl 365d --grace 30d --seats 10
      fieldpass-hq plans update robot-std --seats 20
      fieldpass-hq plans list
    """


@plans.command("create")
@click.argument("name")
@click.option(
    "--offline-ttl",
    callback=common.duration(),
    metavar="DURATION",
    required=True,
    help="How long a machine file is valid offline (e.g. 365d).",
)
@click.option(
    "--grace",
    callback=common.duration(allow_zero=True),
    metavar="DURATION",
    default="0s",
    show_default=True,
    help="Limited mode after expiry (e.g. 30d).",
)
@click.option(
    "--seats",
    type=click.IntRange(1, 1_000_000),
    required=True,
    help="Devices that may be active at once.",
)
@click.option(
    "--warn",
    callback=common.duration(allow_zero=True),
    metavar="DURATION",
    default=None,
    help="Warning window before expiry. Default: a third of the file's TTL.",
)
@click.option("--product", default="default", show_default=True, help="Product name.")
@common.json_option
@click.pass_context
def plans_create(
    ctx: click.Context,
    name: str,
    offline_ttl: int,
    grace: int,
    seats: int,
    warn: int | None,
    product: str,
    as_json: bool,
) -> None:
    """Create plan NAME.

    Durations: a number and a unit, s m h d or w (3600s, 90m, 12h, 30d, 2w).

    Examples:

    \b
      fieldpass-hq plans create robot-std --offline-ttl 365d --grace 30d --seats 10
      fieldpass-hq plans create trial --offline-ttl 30d --grace 3d --seats 1 --warn 7d
      fieldpass-hq plans create cnc --offline-ttl 90d --seats 5 --product cnc-mill --json
    """
    plan = Plan(name, product, offline_ttl, grace, seats, warn, common.now())
    common.state(ctx).hq.create_plan(plan, common.actor())
    if as_json:
        output.emit_json(documents.plan_doc(plan))
    else:
        output.emit_text(f"plan {name} created")


def _warn_change(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
    if value is None or value == "default":
        return value
    return common.duration(allow_zero=True)(ctx, param, value)


@plans.command("update")
@click.argument("name")
@click.option("--seats", type=click.IntRange(1, 1_000_000), help="Devices active at once.")
@click.option(
    "--offline-ttl",
    callback=common.duration(),
    metavar="DURATION",
    help="How long a machine file is valid offline.",
)
@click.option(
    "--grace", callback=common.duration(allow_zero=True), metavar="DURATION", help="Grace."
)
@click.option(
    "--warn",
    callback=_warn_change,
    metavar="DURATION|default",
    help="Warning window before expiry; `default`: a third of the file's TTL.",
)
@common.json_option
@click.pass_context
def plans_update(
    ctx: click.Context,
    name: str,
    seats: int | None,
    offline_ttl: int | None,
    grace: int | None,
    warn: object,
    as_json: bool,
) -> None:
    """Change plan NAME's seats, offline TTL, grace or warning window (audited as
    plan_update, with the old and new values).

    Files already issued keep what they were signed with until their next renewal.
    Fewer seats than a license of the plan uses is refused (exit 1); a license can
    also have its own limit (`licenses seats`).

    Examples:

    \b
      fieldpass-hq plans update robot-std --seats 20
      fieldpass-hq plans update robot-std --offline-ttl 180d --grace 14d --warn default
      fieldpass-hq plans update robot-std --warn 30d --json
    """
    change = PlanChange(
        seats=seats,
        offline_ttl_s=offline_ttl,
        grace_s=grace,
        warn_s=warn if isinstance(warn, int) else None,
        warn_default=warn == "default",
    )
    plan = common.state(ctx).hq.update_plan(name, change, common.now(), common.actor())
    if as_json:
        output.emit_json(documents.plan_doc(plan))
    else:
        header = ["NAME", "PRODUCT", "OFFLINE-TTL", "GRACE", "WARN", "SEATS"]
        output.emit_text(output.table([_plan_row(plan)], header))


@plans.command("list")
@common.json_option
@click.pass_context
def plans_list(ctx: click.Context, as_json: bool) -> None:
    """List plans.

    Examples:

    \b
      fieldpass-hq plans list
      fieldpass-hq plans list --json
    """
    all_plans = common.state(ctx).hq.list_plans()
    if as_json:
        output.emit_json([documents.plan_doc(p) for p in all_plans])
        return
    header = ["NAME", "PRODUCT", "OFFLINE-TTL", "GRACE", "WARN", "SEATS"]
    output.emit_text(output.table([_plan_row(p) for p in all_plans], header))
