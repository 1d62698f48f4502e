"""Entry point of ``fieldpass``: routes ``check`` to the lean boot gate, everything
else to the click CLI (agent/cli.py), so that the boot path never imports click.

The global options (``--root``, ``--config``, ``--state-dir``) are read here for the
gate with the same spelling click accepts (``--opt VALUE`` and ``--opt=VALUE``).
"""

import sys

GLOBAL_OPTIONS = ("--root", "--config", "--state-dir")


def _split_globals(argv: list[str]) -> tuple[dict[str, str], list[str]] | None:
    """Leading global options and the rest; None if they cannot be read simply."""
    found: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("--"):
        name, eq, value = argv[i].partition("=")
        if name not in GLOBAL_OPTIONS:
            break
        if not eq:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 1
        found[name] = value
        i += 1
    return found, argv[i:]


def _end_gate(code: int) -> None:
    """End the gate's process with ``code`` at once, without the interpreter's
    finalization (module teardown and garbage collection: about 2 ms, an eighth of the
    gate, docs/performance.md). Nothing is left to finalize: every file the gate wrote
    is fsync'd or closed by then, its lock is a flock the kernel releases, and it
    registers no atexit handler. Only the standard streams hold buffered output: they
    are flushed here, and a reader that went away (a closed pipe) does not change the
    verdict's exit code."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    split = _split_globals(args)
    if split is not None and split[1][:1] == ["check"]:
        from . import gate

        opts, rest = split
        code = gate.main(
            opts.get("--root", ""), opts.get("--config"), opts.get("--state-dir"), rest[1:]
        )
        _end_gate(code)
    from .cli import run

    run(args)


if __name__ == "__main__":  # pragma: no cover
    main()
