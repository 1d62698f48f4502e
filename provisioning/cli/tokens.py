"""``fieldpass-hq tokens create|list|revoke``: bearer tokens for the admin HTTP API.

A token is printed once, when created, and never again: HQ keeps only its hash. The
list shows names and times, never a token.
"""

import click

from .. import documents
from ..services.tokens import DEFAULT_TOKEN_TTL_S
from ..units import format_duration, format_time, parse_duration
from . import common, output


def _lifetime(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    if value.strip().lower() == "never":
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(f"{e}, or 'never'", ctx, param) from e


@click.group()
def tokens() -> None:
    """Bearer tokens for the admin HTTP API: create (with an expiry), list, revoke.

    Examples:

    \b
      fieldpass-hq tokens create ops-console
      fieldpass-hq tokens list
      fieldpass-hq tokens revoke ops-console
    """


@tokens.command("create")
@click.argument("name")
@click.option(
    "--expires",
    "ttl_s",
    metavar="DURATION|never",
    default=format_duration(DEFAULT_TOKEN_TTL_S),
    show_default=True,
    callback=_lifetime,
    help="The token stops working after DURATION (30d, 12h...); 'never': only when revoked.",
)
@common.json_option
@click.pass_context
def tokens_create(ctx: click.Context, name: str, ttl_s: int | None, as_json: bool) -> None:
    """Create admin token NAME and print it, once: HQ keeps only its hash.

    Names are never reused: to rotate, create a token under a new name, switch the
    client to it, then revoke the old one (docs/hq.md).

    Examples:

    \b
      fieldpass-hq tokens create ops-console
      fieldpass-hq tokens create ops-console-2027q1 --expires 30d
      fieldpass-hq tokens create ci --expires never --json
    """
    now = common.now()
    token, info = common.state(ctx).hq.create_token(name, now, common.actor(), ttl_s)
    if as_json:
        output.emit_json({**documents.token_doc(info, now), "token": token})
    else:
        output.emit_text(token)
        until = format_time(info.expires_at) if info.expires_at else "revoked (no expiry)"
        click.echo(f"token {name} works until {until}; it is not shown again", err=True)


@tokens.command("list")
@common.json_option
@click.pass_context
def tokens_list(ctx: click.Context, as_json: bool) -> None:
    """List admin tokens by name with their status (never the tokens themselves).

    Examples:

    \b
      fieldpass-hq tokens list
      fieldpass-hq tokens list --json
    """
    now = common.now()
    infos = common.state(ctx).hq.list_tokens()
    if as_json:
        output.emit_json([documents.token_doc(t, now) for t in infos])
        return
    rows = [
        [
            t.name,
            t.status(now),
            format_time(t.created_at),
            format_time(t.expires_at) if t.expires_at else "never",
            format_time(t.revoked_at),
        ]
        for t in infos
    ]
    output.emit_text(output.table(rows, ["NAME", "STATUS", "CREATED", "EXPIRES", "REVOKED"]))


@tokens.command("revoke")
@click.argument("name")
@common.json_option
@click.pass_context
def tokens_revoke(ctx: click.Context, name: str, as_json: bool) -> None:
    """Revoke admin token NAME: from now on a request with it gets 401.

    Examples:

    \b
      fieldpass-hq tokens revoke ops-console
      fieldpass-hq tokens revoke ci --json
    """
    now = common.now()
    info = common.state(ctx).hq.revoke_token(name, now, common.actor())
    if as_json:
        output.emit_json(documents.token_doc(info, now))
    else:
        output.emit_text(f"token {name} revoked: requests with it now get 401")
