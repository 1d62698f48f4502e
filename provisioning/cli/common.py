"""What every ``fieldpass-hq`` command shares: the HQ of the chosen home (``State``,
``state``), the clock (``now``, the one place the command line reads it), who is acting
(``actor``), and the shared options and value parsers (``json_option``, ``duration``,
``date``, ``with_options``, ``read_fingerprints``).

Imports no command module and not the root group (``provisioning.cli``): command
modules import this, and ``cli/__init__.py`` imports them, never the other way round.
"""

import getpass
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import CannotRead, InvalidRequest
from ..models import Actor

if TYPE_CHECKING:
    from agent.wire.request import Request
from ..services import HQ
from ..units import parse_date, parse_duration


class State:
    """The root group's context object: the home, and its HQ opened on first use."""

    def __init__(self, home: Path, database: str | None = None) -> None:
        self.home = home
        self.database = database  # --database, else as configured (config.database)
        self._hq: HQ | None = None

    @property
    def hq(self) -> HQ:
        if self._hq is None:
            self._hq = HQ(self.home, database=self.database)
        return self._hq

    def close(self) -> None:
        """Release the database (its connections and lock file) when the command ends."""
        if self._hq is not None:
            self._hq.store.close()
            self._hq = None


def now() -> int:
    return int(time.time())


def actor() -> Actor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return Actor(f"cli:{user}", "local")


def state(ctx: click.Context) -> State:
    obj = ctx.find_object(State)
    assert obj is not None
    return obj


MAX_FINGERPRINT_LIST_BYTES = 16 * 1024 * 1024  # some 240,000 fingerprints

_FC = TypeVar("_FC", bound=Callable[..., Any])


def json_option(f: _FC) -> _FC:
    """``--json``: print a JSON document."""
    return click.option("--json", "as_json", is_flag=True, help="Print a JSON document.")(f)


def with_options(options: list[Any]) -> Callable[[_FC], _FC]:
    """Apply a list of click options, the first one outermost (as written above a
    function)."""

    def decorate(f: _FC) -> _FC:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def duration(allow_zero: bool = False) -> Any:
    """A click callback: ``30d``, ``12h``... to seconds (``units.parse_duration``)."""

    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
        if value is None:
            return None
        try:
            return parse_duration(value, allow_zero=allow_zero)
        except ValueError as e:
            raise click.BadParameter(str(e), ctx, param) from e

    return convert


def date(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A click callback: ``YYYY-MM-DD`` or ISO 8601 to Unix seconds."""
    if value is None:
        return None
    try:
        return parse_date(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from e


def read_fingerprints(path: Path) -> set[str]:
    """A site's list: device fingerprints, one a line; blank lines and # comments skipped."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FINGERPRINT_LIST_BYTES + 1)
        text = data.decode("utf-8")
    except OSError as e:
        raise CannotRead(f"cannot read the fingerprint list {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CannotRead(f"the fingerprint list {path} is not UTF-8 text") from None
    if len(data) > MAX_FINGERPRINT_LIST_BYTES:
        raise InvalidRequest(f"the fingerprint list {path} is larger than 16 MiB")
    return {
        line.strip().lower()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }


def read_request(path: Path) -> "Request":
    """An air-gapped request file (either form), or a one-line error."""
    from agent.wire.errors import WireError
    from agent.wire.request import Request

    try:
        with path.open("rb") as f:
            data = f.read(64 * 1024)
    except OSError as e:
        raise click.FileError(str(path), e.strerror) from None
    try:
        return Request.parse(data)
    except WireError as e:
        raise InvalidRequest(f"{path}: not a Fieldpass request ({e})") from None
