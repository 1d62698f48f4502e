"""``fieldpass-hq audit``: the newest entries of the append-only audit log.

Reads only: nothing here (or anywhere) changes or removes an entry.
"""

import click

from .. import documents
from ..units import format_time
from . import common, output


@click.command()
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--license", "license_id", default=None, help="Only this license's events.")
@common.json_option
@click.pass_context
def audit(ctx: click.Context, limit: int, license_id: str | None, as_json: bool) -> None:
    """Show the newest LIMIT entries of the append-only audit log, oldest first.

    Examples:

    \b
      fieldpass-hq audit
      fieldpass-hq audit --limit 20 --json
      fieldpass-hq audit --license lic_0123456789abcdef0123
    """
    events = common.state(ctx).hq.audit(limit, license_id)
    if as_json:
        output.emit_json([documents.audit_doc(e) for e in events])
        return
    rows = [
        [
            format_time(e.at),
            e.actor,
            e.source,
            e.action,
            e.license_id or "-",
            e.activation_id or "-",
            e.detail or "",
        ]
        for e in events
    ]
    header = ["AT", "WHO", "FROM", "ACTION", "LICENSE", "ACTIVATION", "DETAIL"]
    output.emit_text(output.table(rows, header))
