"""``fieldpass-hq plans create|list``: plans (product, offline TTL, grace, warning
window, seats).

Parses options and prints; never checks a rule itself (the rules on a plan are
services/licenses.py).
"""

import click

from .. import documents
from ..models import Plan
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
