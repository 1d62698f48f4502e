"""``fieldpass-hq serve``: the HTTP API (provisioning/server/) over this home's database.

The server (FastAPI, the ``hq`` extra) is imported when the command runs, never when
``fieldpass-hq`` starts.
"""

import click

from ..errors import InvalidRequest
from . import common


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8750, show_default=True)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM certificate: serve HTTPS.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM private key of --tls-cert.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes sharing the database.",
)
@click.option(
    "--forwarded-allow-ips",
    metavar="ADDRS",
    default=None,
    help="Behind a reverse proxy: its address(es), trusted for X-Forwarded-For.",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="A line per request (method, path, status, client; never a body). Off when the "
    "proxy in front logs requests: about 20% more requests per second.",
)
@common.json_option
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    tls_cert: str | None,
    tls_key: str | None,
    workers: int,
    forwarded_allow_ips: str | None,
    access_log: bool,
    as_json: bool,
) -> None:
    """Run the HTTP API (device and admin endpoints) over this HOME's database.

    Examples:

    \b
      fieldpass-hq serve
      fieldpass-hq serve --host 127.0.0.1 --port 8750 --workers 2
      fieldpass-hq serve --host 0.0.0.0 --port 8443 --tls-cert hq.pem --tls-key hq.key
      fieldpass-hq serve --forwarded-allow-ips 127.0.0.1 --no-access-log
    """
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    try:
        from .. import server  # type: ignore[attr-defined, unused-ignore]
    except ImportError as e:
        raise InvalidRequest(
            f"the server needs the 'hq' extra: pip install 'fieldpass[hq]' ({e})"
        ) from e
    state = common.state(ctx)
    state.hq.store.close()  # check the home is usable before forking workers
    server.run(
        state.home,
        host,
        port,
        tls_cert,
        tls_key,
        workers,
        as_json,
        access_log=access_log,
        forwarded_allow_ips=forwarded_allow_ips,
        database=state.database,
    )
