"""``fieldpass-hq keys generate|activate|retire|list|export``: HQ's signing keys and the keyring
that device images carry.

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
      fieldpass-hq keys generate --standby
      fieldpass-hq keys activate fpk_0123456789abcdef
      fieldpass-hq keys list --json
      fieldpass-hq keys export -o keyring
      fieldpass-hq keys retire fpk_0123456789abcdef
    """


@keys.command("generate")
@click.option(
    "--standby",
    is_flag=True,
    help="Publish the key only (keyring, /v1/keys); it signs once `keys activate` says so.",
)
@common.json_option
@click.pass_context
def keys_generate(ctx: click.Context, standby: bool, as_json: bool) -> None:
    """Create a new signing key; it signs every machine file from now on.

    Prints the new key id. Devices trust a key only once their image's keyring holds
    it: to rotate without stranding a device, generate the successor with --standby,
    ship the re-exported keyring in the images, then `keys activate` it (docs/hq.md).

    Examples:

    \b
      fieldpass-hq keys generate
      fieldpass-hq keys generate --standby --json
    """
    info = common.state(ctx).hq.generate_key(common.now(), common.actor(), standby=standby)
    if as_json:
        output.emit_json(documents.key_doc(info))
    else:
        output.emit_text(info.kid)


@keys.command("activate")
@click.argument("kid")
@common.json_option
@click.pass_context
def keys_activate(ctx: click.Context, kid: str, as_json: bool) -> None:
    """Make published key KID the signing key (audited as key_activate).

    The second phase of a rotation. HQ signs with KID for every device that reports it
    in its keyring, and for devices that report nothing (agents of 0.1.0, which refuse
    a file from a key their image lacks, exit 31); a device that reports only older
    keys keeps getting files from the newest of them not retired. The previous key
    stays trusted; retire it when `keys list` shows no device needs it (docs/hq.md).

    Examples:

    \b
      fieldpass-hq keys activate fpk_0123456789abcdef
      fieldpass-hq keys activate fpk_0123456789abcdef --json
    """
    info = common.state(ctx).hq.activate_key(kid, common.now(), common.actor())
    if as_json:
        output.emit_json(documents.key_doc(info))
    else:
        output.emit_text(f"key {info.kid} signs from now on")


@keys.command("retire")
@click.argument("kid")
@click.option(
    "--force",
    is_flag=True,
    help="Retire it even though live devices trust no other key (a leaked key).",
)
@common.json_option
@click.pass_context
def keys_retire(ctx: click.Context, kid: str, force: bool, as_json: bool) -> None:
    """Retire signing key KID: HQ signs nothing new with it, ever.

    Devices keep trusting it (their keyring still holds it), so the files it signed
    stay valid; to stop that too, see `keys export --without-retired` and docs/hq.md
    (a leaked key). The active key cannot be retired: generate its successor first.
    A key that live devices report as the only one they trust (`keys list`, REPORTED)
    is refused (exit 1, a conflict): they could install no renewal again. --force
    retires it anyway, audited with how many devices it strands.

    Examples:

    \b
      fieldpass-hq keys generate
      fieldpass-hq keys retire fpk_0123456789abcdef
      fieldpass-hq keys retire fpk_0123456789abcdef --json
      fieldpass-hq keys retire fpk_0123456789abcdef --force
    """
    info = common.state(ctx).hq.retire_key(kid, common.now(), common.actor(), force=force)
    if as_json:
        output.emit_json(documents.key_doc(info))
    else:
        output.emit_text(f"key {kid} retired: it signs nothing new")


@keys.command("list")
@common.json_option
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool) -> None:
    """List signing keys (public parts); the active one and the retired ones are marked.

    REPORTED: how many live activations said their keyring holds the key (agents after
    0.1.0 say so in their requests): HQ signs for each device with a key it reported
    (docs/hq.md, "Rotating the signing key").

    Examples:

    \b
      fieldpass-hq keys list
      fieldpass-hq keys list --json
    """
    hq = common.state(ctx).hq
    infos, counts = hq.list_keys(), hq.keyring_counts()
    if as_json:
        output.emit_json([documents.key_doc(k, counts.get(k.kid, 0)) for k in infos])
        return
    rows = [
        [
            k.kid,
            "yes" if k.active else "",
            format_time(k.created_at),
            format_time(k.retired_at) if k.retired_at is not None else "",
            str(counts.get(k.kid, 0)),
        ]
        for k in infos
    ]
    output.emit_text(output.table(rows, ["KID", "ACTIVE", "CREATED", "RETIRED", "REPORTED"]))


@keys.command("export")
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the keyring to FILE instead of stdout.",
)
@click.option(
    "--without-retired",
    is_flag=True,
    help="Leave retired keys out: devices given this keyring stop trusting every file "
    "those keys signed.",
)
@common.json_option
@click.pass_context
def keys_export(ctx: click.Context, out: Path | None, without_retired: bool, as_json: bool) -> None:
    """Write the public keyring that device images carry (all keys, old and new).

    With --without-retired the retired keys are left out: a device given that keyring
    no longer accepts a machine file, revocation or signed time made with them (exit
    31), so renew its devices with the active key first.

    Examples:

    \b
      fieldpass-hq keys export > keyring
      fieldpass-hq keys export -o meta-fieldpass/files/keyring
      fieldpass-hq keys export --without-retired -o keyring
      fieldpass-hq keys export --json
    """
    hq = common.state(ctx).hq
    keyring = hq.keyring(with_retired=not without_retired)
    left_out = sorted(k.kid for k in hq.list_keys() if k.kid not in keyring.keys)
    if left_out:
        click.echo(
            f"fieldpass-hq: warning: left out retired key(s) {', '.join(left_out)}: devices "
            "with this keyring stop trusting every file those keys signed (they then "
            "exit 31); renew them with the active key before installing this keyring",
            err=True,
        )
    text = keyring.dumps()
    if out is not None:
        output.write_file(out, text.encode("utf-8"))
    if as_json:
        doc: dict[str, Any] = {
            "kids": sorted(keyring.keys),
            "left_out": left_out,
            "file": str(out) if out else None,
        }
        if out is None:
            doc["keyring"] = text
        output.emit_json(doc)
    elif out is None:
        sys.stdout.write(text)
    else:
        output.emit_text(f"keyring with {len(keyring.keys)} key(s) written to {out}")
