"""What the command line prints and writes: a JSON document for ``--json``, text and
tables for people, crash-safe output files. Data goes to stdout; ``cli.main`` writes
errors to stderr.

The documents themselves are ``provisioning.documents`` (the HTTP API's too). Nothing
here prints a license key unless a command hands it one to print.
"""

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import click

from agent import fsio

from ..errors import CannotWrite


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` crash-safely (``agent.fsio.atomic_write``: temp file, fsync,
    rename, fsync the directory): ``path`` is old or new, never half.

    Only a regular file is replaced (through a symlink, its target): the rename would
    otherwise put a file in place of ``-o /dev/null`` or a FIFO, which as root breaks
    the machine for everyone."""
    target = os.path.realpath(path)
    try:
        if not stat.S_ISREG(os.stat(target).st_mode):
            raise CannotWrite(f"cannot write {path}: not a regular file")
    except FileNotFoundError:
        pass  # a new file
    except OSError as e:
        raise CannotWrite(f"cannot write {path}: {e.strerror or e}") from None
    try:
        fsio.atomic_write(target, data, mode)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise CannotWrite(f"cannot write {path}: {reason}") from e


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def emit_text(text: str) -> None:
    click.echo(text)


def table(rows: list[list[str]], header: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)
