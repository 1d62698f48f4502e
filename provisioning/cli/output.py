"""What the command line prints and writes: a JSON document for ``--json``, text and
tables for people, crash-safe output files. Data goes to stdout; ``cli.main`` writes
errors to stderr.

The documents themselves are ``provisioning.documents`` (the HTTP API's too). Nothing
here prints a license key unless a command hands it one to print.
"""

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import CannotWrite


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp file, fsync, rename, fsync the directory: ``path`` is old or new, never half."""
    directory = path.parent if str(path.parent) else Path(".")
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise CannotWrite(f"cannot write {path}: {e.strerror}") from e


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
