"""``fieldpass-hq db status|upgrade|copy``: the database's schema version and its
migrations, and moving an HQ to another database (SQLite to PostgreSQL).

The database is the one the root options and the config choose (``config.database``);
its URL is never printed (it may hold a password): commands name the engine only. The
work is in ``provisioning/storage`` (migrations, copy).
"""

from typing import Any

import click

from .. import config, sealed_keys
from ..errors import ConfigError
from ..storage import SCHEMA_VERSION, Store, copy, engine_of, migrations, open_store
from . import common, output


def _open(ctx: click.Context, *, migrate: bool) -> tuple[Store, str]:
    state = common.state(ctx)
    db = config.database(state.home, state.database)
    return open_store(db.url, pool_size=2, migrate=migrate), engine_of(db.url)


def _current(store: Store) -> int:
    with store.write() as tx:
        return migrations.current(tx)


def _status_doc(engine: str, version: int) -> dict[str, Any]:
    return {
        "engine": engine,
        "schema_version": version,
        "known_version": SCHEMA_VERSION,
        "state": "current"
        if version == SCHEMA_VERSION
        else ("newer" if version > SCHEMA_VERSION else "behind"),
        "pending": [{"version": v.number, "brings": v.brings} for v in migrations.pending(version)],
    }


@click.group()
def db() -> None:
    """The database: schema version, migrations, moving to PostgreSQL.

    Examples:

    \b
      fieldpass-hq db status
      fieldpass-hq db upgrade
      fieldpass-hq db seal-keys
      fieldpass-hq db copy --to postgresql://fieldpass@db.example/fieldpass
    """


@db.command("status")
@common.json_option
@click.pass_context
def db_status(ctx: click.Context, as_json: bool) -> None:
    """The database's engine, its schema version, this program's, and what an upgrade
    would apply. Changes nothing.

    Examples:

    \b
      fieldpass-hq db status
      fieldpass-hq --database postgresql://hq@db/fieldpass db status --json
    """
    store, engine = _open(ctx, migrate=False)
    try:
        doc = _status_doc(engine, _current(store))
        if doc["state"] == "current":
            doc["license_keys"] = sealed_keys.status(common.state(ctx).home, store)
    finally:
        store.close()
    if as_json:
        output.emit_json(doc)
        return
    output.emit_text(
        f"{engine}: schema {doc['schema_version']}, this fieldpass-hq knows "
        f"{SCHEMA_VERSION} ({doc['state']})"
    )
    for v in doc["pending"]:
        output.emit_text(f"  pending {v['version']}: {v['brings']}")
    if "license_keys" in doc:
        output.emit_text(f"  license keys: {_KEY_STATES[doc['license_keys']['state']]}")


_KEY_STATES = {
    "sealed": "sealed at rest",
    "none": "none yet (they will be sealed)",
    "in_clear": "IN CLEAR: run `fieldpass-hq db seal-keys` once every HQ process runs this release",
    "secret_missing": f"sealed, and HOME/{sealed_keys.SECRET_NAME} is missing: copy it "
    "from the HQ home that sealed them",
    "secret_mismatch": f"sealed with another secret than HOME/{sealed_keys.SECRET_NAME}: "
    "copy it from the HQ home that sealed them",
}


@db.command("seal-keys")
@common.json_option
@click.pass_context
def db_seal_keys(ctx: click.Context, as_json: bool) -> None:
    """Seal the license keys a database upgraded from before schema 12 holds in clear,
    under HOME/license-keys.secret (made now if HOME has none, and named in the
    database). Run it once every HQ process runs this release: an earlier one reads keys
    in clear only. Then copy the secret to every other HQ host. Running it again seals
    what is left in clear, if anything.

    Examples:

    \b
      fieldpass-hq db seal-keys
      fieldpass-hq db seal-keys --json
    """
    store, engine = _open(ctx, migrate=True)
    try:
        sealed, kid, created = sealed_keys.seal(common.state(ctx).home, store)
    finally:
        store.close()
    if as_json:
        output.emit_json({"engine": engine, "sealed": sealed, "secret": kid, "created": created})
        return
    made = f", the secret made now in HOME/{sealed_keys.SECRET_NAME}" if created else ""
    output.emit_text(f"{engine}: {sealed} license keys sealed under secret {kid}{made}")
    if created:
        output.emit_text("copy that file to every other HQ host (with keys/*.seed)")


@db.command("upgrade")
@common.json_option
@click.pass_context
def db_upgrade(ctx: click.Context, as_json: bool) -> None:
    """Apply the migrations the database lacks, in order, in one transaction (other
    processes opening it meanwhile wait). A database newer than this program is
    refused (exit 78).

    Examples:

    \b
      fieldpass-hq db upgrade
      fieldpass-hq db upgrade --json
    """
    store, engine = _open(ctx, migrate=False)
    try:
        before = _current(store)
    finally:
        store.close()
    if before > SCHEMA_VERSION:
        raise ConfigError(
            f"database schema version {before} is newer than this fieldpass-hq "
            f"({SCHEMA_VERSION}): upgrade fieldpass-hq"
        )
    store, _ = _open(ctx, migrate=True)
    try:
        after = store.schema_version()
    finally:
        store.close()
    applied = [v.number for v in migrations.pending(before) if v.number <= after]
    if as_json:
        output.emit_json({"engine": engine, "from": before, "to": after, "applied": applied})
    elif applied:
        output.emit_text(f"{engine}: schema {before} -> {after} (applied {applied})")
    else:
        output.emit_text(f"{engine}: schema {after}, nothing to apply")


@db.command("copy")
@click.option(
    "--to",
    "target_url",
    required=True,
    metavar="URL",
    help="The new, empty database (postgresql://... or sqlite:///PATH); never echoed.",
)
@common.json_option
@click.pass_context
def db_copy(ctx: click.Context, target_url: str, as_json: bool) -> None:
    """Copy every row of this HQ's database into an empty one, then verify each
    table's row count and digest read back from it.

    Keys' public parts, plans, licenses (with their keys, sealed as they are),
    activations and serials, sites, challenges, tokens' hashes and the whole audit log
    move; the signing seeds, the MQTT secret and the license-key secret stay in HOME
    (they are never in the database). Stop the servers first (what they write after
    the copy's snapshot would not be copied), then point the config at the new
    database: [database] url in HOME/hq.toml.

    Examples:

    \b
      fieldpass-hq db copy --to postgresql://fieldpass@db.example/fieldpass
      fieldpass-hq db copy --to 'postgresql://hq@127.0.0.1/hq?sslmode=require' --json
    """
    source, engine = _open(ctx, migrate=True)
    try:
        target = open_store(target_url, pool_size=2)
        try:
            sums = copy.copy(source, target)
        finally:
            target.close()
    finally:
        source.close()
    doc = {
        "from": engine,
        "to": engine_of(target_url),
        "verified": True,
        "tables": {t: {"rows": s.rows, "sha256": s.sha256} for t, s in sums.items()},
    }
    if as_json:
        output.emit_json(doc)
        return
    rows = [[t, str(s.rows), s.sha256[:16]] for t, s in sums.items()]
    output.emit_text(output.table(rows, ["TABLE", "ROWS", "SHA256"]))
    output.emit_text(f"copied {engine} -> {doc['to']}: every table verified")
