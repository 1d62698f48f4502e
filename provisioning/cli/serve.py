"""``fieldpass-hq serve``: the HTTP API (provisioning/server/) over this home's database.

The server (FastAPI, the ``hq`` extra) is imported when the command runs, never when
``fieldpass-hq`` starts; only its bounds (``server.limits``, plain values) are read here.
"""

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import InvalidRequest
from ..server import limits
from . import common

_FC = TypeVar("_FC", bound=Callable[..., Any])


def seconds(flag: str, default: int, help: str) -> Callable[[_FC], _FC]:
    """A bound in whole seconds, 1 to 3600: ``--body-timeout`` gives ``body_timeout_s``."""
    name = flag.removeprefix("--").replace("-", "_") + "_s"
    return click.option(
        flag,
        name,
        type=click.IntRange(1, 3600),
        default=default,
        show_default=True,
        metavar="SECONDS",
        help=help,
    )


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
@seconds(
    "--header-timeout",
    limits.HEADER_TIMEOUT_S,
    "A client's time to send a request's head (request line and headers), from the "
    "connection's opening or the request's first byte; then 408 and the connection closed.",
)
@seconds(
    "--body-timeout",
    limits.BODY_TIMEOUT_S,
    "A client's time to send a request's body after its head, then 408 and closed; and "
    "to read again once its unread answers fill the buffers, then dropped.",
)
@seconds(
    "--keep-alive-timeout",
    limits.KEEP_ALIVE_TIMEOUT_S,
    "An idle connection between two requests is closed after this.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1, 1_000_000),
    default=limits.MAX_CONNECTIONS,
    show_default=True,
    metavar="N",
    help="Open connections each server process serves; a request beyond gets 503.",
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
    header_timeout_s: int,
    body_timeout_s: int,
    keep_alive_timeout_s: int,
    max_connections: int,
    as_json: bool,
) -> None:
    """Run the HTTP API (device and admin endpoints) over this HOME's database.

    A client that is slow to send a request, or idle, is cut off at the bounds below and
    the others go on being served; bodies are JSON of at most 16 KiB (docs/hq.md).

    Examples:

    \b
      fieldpass-hq serve
      fieldpass-hq serve --host 127.0.0.1 --port 8750 --workers 2
      fieldpass-hq serve --host 0.0.0.0 --port 8443 --tls-cert hq.pem --tls-key hq.key
      fieldpass-hq serve --forwarded-allow-ips 127.0.0.1 --no-access-log
      fieldpass-hq serve --header-timeout 5 --body-timeout 10 --max-connections 4000
    """
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    try:
        from ..server import runner
    except ImportError as e:
        raise InvalidRequest(
            f"the server needs the 'hq' extra: pip install 'fieldpass[hq]' ({e})"
        ) from e
    state = common.state(ctx)
    state.hq.require_license_keys()  # check the home is usable before forking workers
    state.hq.store.close()
    bounds = limits.Limits(
        header_timeout_s=header_timeout_s,
        body_timeout_s=body_timeout_s,
        keep_alive_timeout_s=keep_alive_timeout_s,
        max_connections=max_connections,
    )
    runner.run(
        state.home,
        host,
        port,
        tls_cert,
        tls_key,
        workers,
        as_json,
        limits=bounds,
        access_log=access_log,
        forwarded_allow_ips=forwarded_allow_ips,
        database=state.database,
    )
