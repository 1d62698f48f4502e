"""``fieldpass-hq backup|restore``: a consistent backup of HQ's database while ``serve``
runs, and bringing it back into an empty home (the file format and what it holds of
the secrets: provisioning/backup.py).

The database is the configured one (``config.database``); its URL is never printed. A
passphrase is read from a file, never from the command line (a process list shows it).
"""

from pathlib import Path

import click

from .. import backup as backup_file
from .. import config, sealed_keys
from ..errors import ConfigError
from ..keystore import KEYS_DIR, prepare_home
from ..storage import engine_of, open_store
from . import common, output

passphrase_option = click.option(
    "--passphrase-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A file whose first line is the passphrase sealing the secrets.",
)


def _passphrase(path: Path | None) -> bytes:
    if path is None:
        raise click.UsageError("--with-secrets needs --passphrase-file")
    lines = path.read_bytes().splitlines()
    return lines[0].strip() if lines else b""


@click.command()
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The backup file to write (mode 0600).",
)
@click.option(
    "--with-secrets",
    is_flag=True,
    help="Also the signing seeds, the MQTT secret and the license-key secret, sealed "
    "under the passphrase.",
)
@passphrase_option
@common.json_option
@click.pass_context
def backup(
    ctx: click.Context, out: Path, with_secrets: bool, passphrase_file: Path | None, as_json: bool
) -> None:
    """Write a consistent backup of the database: every table as of one moment (one
    read transaction), while servers go on writing.

    The signing keys' public parts are in it, their seeds only with --with-secrets,
    sealed under a passphrase (Argon2id, XSalsa20-Poly1305), as are the MQTT secret and
    the license-key secret (the license keys are in it sealed: without that secret,
    they do not open).

    Examples:

    \b
      fieldpass-hq backup -o /var/backups/fieldpass-hq/hq-$(date +%F).backup
      fieldpass-hq backup -o hq.backup --with-secrets --passphrase-file /root/backup.pass
    """
    state = common.state(ctx)
    db = config.database(state.home, state.database)
    store = open_store(db.url, pool_size=2)
    try:
        sealed = None
        if with_secrets:
            keys = sealed_keys.status(state.home, store)
            if keys["state"] in ("secret_missing", "secret_mismatch"):
                raise ConfigError(
                    f"HOME/{sealed_keys.SECRET_NAME} is not the secret the database's license "
                    f"keys are sealed with ({keys['secret']}): a backup made here could not "
                    "open them; make it on a host that holds that secret"
                )
            sealed = backup_file.seal_secrets(
                backup_file.secret_files(state.home), _passphrase(passphrase_file)
            )
        sums = backup_file.write(out, store, db.url, sealed)
    finally:
        store.close()
    doc = {
        "file": str(out),
        "engine": engine_of(db.url),
        "secrets": with_secrets,
        "tables": {t: {"rows": s.rows, "sha256": s.sha256} for t, s in sums.items()},
    }
    if as_json:
        output.emit_json(doc)
    else:
        rows = sum(s.rows for s in sums.values())
        output.emit_text(f"backup written to {out}: {rows} rows, secrets: {with_secrets}")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@passphrase_option
@common.json_option
@click.pass_context
def restore(ctx: click.Context, file: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """Restore a backup into an empty HOME and its empty database (the configured one:
    SQLite in HOME by default, or PostgreSQL), checking every table's row count and
    digest against the file. Secrets in the backup are restored with the passphrase.

    Examples:

    \b
      fieldpass-hq --home /srv/hq-new restore hq.backup --passphrase-file /root/backup.pass
      fieldpass-hq --home /srv/hq-new --database postgresql://hq@db/new restore hq.backup
    """
    state = common.state(ctx)
    prepare_home(state.home)
    if any((state.home / KEYS_DIR).iterdir()):
        raise ConfigError(f"{state.home} already holds signing keys: restore into an empty home")
    if (state.home / sealed_keys.SECRET_NAME).exists():
        raise ConfigError(
            f"{state.home} already holds a license-key secret: restore into an empty home"
        )
    db = config.database(state.home, state.database)
    store = open_store(db.url, pool_size=2)
    try:
        sums, sealed = backup_file.restore(file, store)
    finally:
        store.close()
    secrets: list[str] = []
    if sealed is not None and passphrase_file is not None:
        files = backup_file.open_secrets(sealed, _passphrase(passphrase_file))
        secrets = backup_file.install_secrets(state.home, files)
    doc = {
        "engine": engine_of(db.url),
        "verified": True,
        "tables": {t: {"rows": s.rows, "sha256": s.sha256} for t, s in sums.items()},
        "secrets_restored": secrets,
        "secrets_in_backup": sealed is not None,
    }
    if as_json:
        output.emit_json(doc)
        return
    output.emit_text(f"restored {sum(s.rows for s in sums.values())} rows: every table verified")
    if sealed is None:
        output.emit_text(
            "the backup holds no secrets: install the signing seeds in HOME/keys/ and "
            f"HOME/{sealed_keys.SECRET_NAME} from the home it was made of"
        )
    elif not secrets:
        output.emit_text("secrets not restored: give --passphrase-file to restore them")
