"""``fieldpass-hq keys generate|list|export``: HQ's signing keys and the keyring that
device images carry.

Prints public parts only: a private key is never printed or written here.
"""

import sys
from pathlib import Path
from typing import Any

import click

from .. import documents
from ..units import format_time
from . import common, output


@click.group()
def keys() -> None:
    """Ed25519 signing keys. Private keys stay in HOME/keys (mode 0600), never printed.

    Examples:

    \b
      fieldpass-hq keys generate
      fieldpass-hq keys list --json
      fieldpass-hq keys export -o keyring
    """


@keys.command("generate")
@common.json_option
@click.pass_context
def keys_generate(ctx: click.Context, as_json: bool) -> None:
    """Create a new signing key; it signs every machine file from now on.

    Prints the new key id. Devices must trust it: re-export the keyring.

    Examples:

    \b
      fieldpass-hq keys generate
      fieldpass-hq keys generate --json
    """
    info = common.state(ctx).hq.generate_key(common.now(), common.actor())
    if as_json:
        output.emit_json(documents.key_doc(info))
    else:
        output.emit_text(info.kid)


@keys.command("list")
@common.json_option
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool) -> None:
    """List signing keys (public parts); the active one is marked.

    Examples:

    \b
      fieldpass-hq keys list
      fieldpass-hq keys list --json
    """
    infos = common.state(ctx).hq.list_keys()
    if as_json:
        output.emit_json([documents.key_doc(k) for k in infos])
        return
    rows = [[k.kid, "yes" if k.active else "", format_time(k.created_at)] for k in infos]
    output.emit_text(output.table(rows, ["KID", "ACTIVE", "CREATED"]))


@keys.command("export")
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the keyring to FILE instead of stdout.",
)
@common.json_option
@click.pass_context
def keys_export(ctx: click.Context, out: Path | None, as_json: bool) -> None:
    """Write the public keyring that device images carry (all keys, old and new).

    Examples:

    \b
      fieldpass-hq keys export > keyring
      fieldpass-hq keys export -o meta-fieldpass/files/keyring
      fieldpass-hq keys export --json
    """
    keyring = common.state(ctx).hq.keyring()
    text = keyring.dumps()
    if out is not None:
        output.write_file(out, text.encode("utf-8"))
    if as_json:
        doc: dict[str, Any] = {"kids": sorted(keyring.keys), "file": str(out) if out else None}
        if out is None:
            doc["keyring"] = text
        output.emit_json(doc)
    elif out is None:
        sys.stdout.write(text)
    else:
        output.emit_text(f"keyring with {len(keyring.keys)} key(s) written to {out}")
