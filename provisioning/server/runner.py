"""``fieldpass-hq serve``'s server: what is checked and opened before uvicorn starts, and
uvicorn configured with HQ's bounds.

The TLS certificate and key are loaded once here, the listening socket is bound here
and handed to uvicorn, and the process's open-file limit is raised to fit its
connections: a mistake in any of them is one sentence with a documented exit code
(docs/hq.md), never uvicorn's log and its exit 3, nor "internal error". Then uvicorn
runs the app of ``app.app_from_env`` in one or more processes over that socket, with the
connection protocol of ``protocol`` and the limits of ``limits``.
"""

import json
import logging
import os
import socket
import ssl

import uvicorn
from uvicorn.supervisors import Multiprocess

from .. import listening
from ..config import DATABASE_ENV
from ..errors import EXIT_DATAERR, EXIT_NOINPUT, HQError
from .app import HOME_ENV
from .limits import LIMITS_ENV, Limits

BACKLOG = 2048
PROTOCOL = "provisioning.server.protocol:BoundedHttpToolsProtocol"
APP = "provisioning.server.app:app_from_env"


CannotListen = listening.CannotListen


class BadTlsFiles(HQError):
    code = "bad_tls_files"
    exit_code = EXIT_DATAERR


class CannotReadTlsFile(HQError):
    code = "cannot_read"
    exit_code = EXIT_NOINPUT


class _Encrypted(Exception):
    pass


def _no_password() -> bytes:
    raise _Encrypted


def check_tls(cert: str, key: str) -> None:
    """Load the certificate and its key as uvicorn will, so that a bad file is said here."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _Encrypted:
        raise BadTlsFiles(
            f"--tls-key {key} is encrypted: serve takes an unencrypted key (keep it mode 0600)"
        ) from None
    except ssl.SSLError as e:
        reason = f" ({e.reason})" if e.reason else ""
        raise BadTlsFiles(
            f"--tls-cert {cert} and --tls-key {key} are not a PEM certificate and its "
            f"private key{reason}"
        ) from None
    except OSError as e:
        raise CannotReadTlsFile(f"cannot read {e.filename or cert}: {e.strerror}") from None


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port``, for uvicorn to serve (and its workers)."""
    sock = listening.listen(host, port, BACKLOG)
    sock.set_inheritable(True)  # for the worker processes
    return sock


def fit_open_files(connections: int) -> None:
    """Raise this process's open-file limit (within the hard limit) to fit
    ``connections`` and the files the server itself holds."""
    needed = connections + 64
    target = listening.allow_open_files(needed)
    if target < needed:
        logging.getLogger("uvicorn.error").warning(
            "this process may open %d files: fewer than --max-connections %d needs (ulimit -n)",
            target,
            connections,
        )


def run(
    home: os.PathLike[str] | str,
    host: str,
    port: int,
    tls_cert: str | None,
    tls_key: str | None,
    workers: int,
    as_json: bool,
    *,
    limits: Limits,
    access_log: bool = True,
    forwarded_allow_ips: str | None = None,
    database: str | None = None,
) -> None:
    if tls_cert is not None and tls_key is not None:
        check_tls(tls_cert, tls_key)
    sock = listen(host, port)
    port = int(sock.getsockname()[1])
    os.environ[HOME_ENV] = str(home)
    os.environ[LIMITS_ENV] = limits.to_env()
    if database:  # --database: the workers read it from their environment
        os.environ[DATABASE_ENV] = database
    scheme = "https" if tls_cert else "http"
    url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
    if as_json:
        print(json.dumps({"url": url, "home": str(home)}), flush=True)
    config = uvicorn.Config(
        APP,
        factory=True,
        http=PROTOCOL,
        ws="none",
        host=host,
        port=port,
        workers=workers,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        access_log=access_log,
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
        timeout_keep_alive=limits.keep_alive_timeout_s,
        backlog=BACKLOG,
        log_level="info",
    )
    fit_open_files(limits.max_connections)
    logging.getLogger("uvicorn.error").info("Uvicorn running on %s (Press CTRL+C to quit)", url)
    if workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run(sockets=[sock])
