"""``fieldpass-hq sites assign|remove|list``: where devices stand, so that a technician's
bundle can be made for one site (``field export --site``).

Parses options and prints; never checks a rule itself (live activations only, one
site at a time: services/sites.py).
"""

from pathlib import Path

import click

from .. import documents
from ..errors import InvalidRequest
from ..units import format_time
from . import common, output


@click.group()
def sites() -> None:
    """Sites: where devices stand, so a technician's bundle can name one.

    \b
    Examples:
      fieldpass-hq sites assign site-7 --fingerprints site-7.txt
      fieldpass-hq sites assign site-7 act_0123456789abcdef0123
      fieldpass-hq sites remove act_0123456789abcdef0123
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
@common.json_option
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
    fps = common.read_fingerprints(fingerprints) if fingerprints is not None else set()
    if not (activation_ids or fps):
        raise InvalidRequest("name the devices: activation ids or --fingerprints FILE")
    acts = common.state(ctx).hq.assign_site(
        site, list(activation_ids), fps, common.now(), common.actor()
    )
    if as_json:
        output.emit_json({"site": site, "activation_ids": sorted(a.id for a in acts)})
        return
    output.emit_text(
        f"{len(acts)} device(s) at site {site}.\n"
        f"Next: fieldpass-hq field export --site {site} -o {site}.bundle"
    )


@sites.command("remove")
@click.argument("activation_id")
@common.json_option
@click.pass_context
def sites_remove(ctx: click.Context, activation_id: str, as_json: bool) -> None:
    """Take device ACTIVATION_ID off its site (audited as site_remove).

    \b
    Examples:
      fieldpass-hq sites remove act_0123456789abcdef0123
      fieldpass-hq sites remove act_0123456789abcdef0123 --json
    """
    site = common.state(ctx).hq.remove_from_site(activation_id, common.now(), common.actor())
    if as_json:
        output.emit_json({"activation_id": activation_id, "site": site})
    else:
        output.emit_text(f"activation {activation_id} is no longer at site {site}")


@sites.command("list")
@common.json_option
@click.pass_context
def sites_list(ctx: click.Context, as_json: bool) -> None:
    """Every site, how many live devices it has, and the earliest expiry of their files.

    \b
    Examples:
      fieldpass-hq sites list
      fieldpass-hq sites list --json
    """
    found = common.state(ctx).hq.fleet.sites()
    if as_json:
        output.emit_json([documents.site_doc(s) for s in found])
        return
    rows = [[s.site, str(s.devices), format_time(s.first_file_expires_at)] for s in found]
    output.emit_text(output.table(rows, ["SITE", "DEVICES", "FIRST-FILE-EXPIRES"]))
