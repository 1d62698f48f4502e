"""``fieldpass-hq tokens create``: bearer tokens for the admin HTTP API.

A token is printed once, when created, and never again: HQ keeps only its hash.
"""

import click

from . import common, output


@click.group()
def tokens() -> None:
    """Bearer tokens for the admin HTTP API.

    Examples:

    \b
      fieldpass-hq tokens create ops-console
    """


@tokens.command("create")
@click.argument("name")
@common.json_option
@click.pass_context
def tokens_create(ctx: click.Context, name: str, as_json: bool) -> None:
    """Create admin token NAME and print it, once: HQ keeps only its hash.

    Examples:

    \b
      fieldpass-hq tokens create ops-console
      fieldpass-hq tokens create ci --json
    """
    token = common.state(ctx).hq.create_token(name, common.now(), common.actor())
    if as_json:
        output.emit_json({"name": name, "token": token})
    else:
        output.emit_text(token)
