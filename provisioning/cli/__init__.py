"""``fieldpass-hq``: the HQ command line. The root group and ``main``, the one place that
turns outcomes into exit codes, from the error's type (see ``errors`` and docs/hq.md).

One module per command group, each a thin layer that parses options, calls
``services.HQ`` and hands the result to ``output``: ``keys``, ``plans``, ``licenses``,
``activations`` (activate, machine-file, deactivate), ``provision``, ``sites``,
``field``, ``serve``, ``tokens``, ``audit``, ``mqtt`` (bridge, push, broker-config),
``db`` (status, upgrade, copy), ``backup`` (backup, restore).
What they share is ``common`` (the HQ of the home, the clock, the actor, shared
options) and ``output``. This module names them (``COMMANDS``) and imports one when its
command runs: ``fieldpass-hq licenses create`` loads neither the laptop's server nor
the MQTT clients (a command costs its own imports only; the suite runs the command line
over a thousand times). None of them imports this module. An error never reaches the
user as a traceback: it is one line on stderr, and its exit code comes from its type.
"""

import importlib
import sys
from pathlib import Path

import click

from ..errors import EXIT_NOINPUT, EXIT_SOFTWARE, EXIT_USAGE, HQError

PROG = "fieldpass-hq"

# Each command of the root group: its name -> (its module under cli/, its attribute).
COMMANDS: dict[str, tuple[str, str]] = {
    "keys": ("keys", "keys"),
    "plans": ("plans", "plans"),
    "licenses": ("licenses", "licenses"),
    "activate": ("activations", "activate"),
    "machine-file": ("activations", "machine_file"),
    "deactivate": ("activations", "deactivate"),
    "activations": ("activations", "activations"),
    "provision": ("provision", "provision"),
    "sites": ("sites", "sites"),
    "field": ("field", "field"),
    "serve": ("serve", "serve"),
    "tokens": ("tokens", "tokens"),
    "audit": ("audit", "audit"),
    "usage": ("usage", "usage"),
    "bridge": ("mqtt", "bridge"),
    "push": ("mqtt", "push"),
    "broker-config": ("mqtt", "broker_config"),
    "db": ("db", "db"),
    "backup": ("backup", "backup"),
    "restore": ("backup", "restore"),
}


class _Commands(click.Group):
    """The root group: a command's module is imported when the command is named (or
    listed, for ``--help`` and shell completion)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module = importlib.import_module(f"{__name__}.{spec[0]}")
        command: click.Command = getattr(module, spec[1])
        return command


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FIELDPASS_HQ_HOME",
    help="HQ data directory (database and signing keys). "
    "Default: $FIELDPASS_HQ_HOME, else $XDG_DATA_HOME/fieldpass-hq, "
    "else ~/.local/share/fieldpass-hq.",
)
@click.option(
    "--database",
    metavar="URL",
    default=None,
    help="sqlite:///PATH or postgresql://USER@HOST/DB (never echoed). Default: "
    "$FIELDPASS_HQ_DATABASE, else [database] url in HOME/hq.toml, else HOME/hq.sqlite3.",
)
@click.version_option(package_name="fieldpass", prog_name=PROG)
@click.pass_context
def cli(ctx: click.Context, home: Path | None, database: str | None) -> None:
    """Fieldpass HQ: signing keys, plans, licenses, seats; issues machine files.

    Examples:

    \b
      fieldpass-hq keys generate
      fieldpass-hq plans create robot-std --offline-ttl 365d --grace 30d --seats 10
      fieldpass-hq licenses create --plan robot-std --entitlement welding
      fieldpass-hq activate FP-XXXXX-... --fingerprint 3f2a... -o device.lic
      fieldpass-hq serve --port 8750
    """
    from ..keystore import default_home
    from . import common

    ctx.obj = common.State(home if home is not None else default_home(), database)
    ctx.call_on_close(ctx.obj.close)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; the one place that turns outcomes into exit codes."""
    try:
        # Not standalone: click returns what ``ctx.exit(N)`` asked for instead of
        # exiting, and a command's own return value (None) otherwise.
        code = cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.NoArgsIsHelpError as e:
        # ``fieldpass-hq`` or a group (``fieldpass-hq keys``) alone: its help, not an error.
        click.echo(e.ctx.get_help() if e.ctx is not None else "")
        return 0
    except click.exceptions.Abort:
        _error("aborted")
        return 130
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        _error(f"{e.format_message()}{hint}")
        return EXIT_USAGE
    except click.FileError as e:
        _error(e.format_message())
        return EXIT_NOINPUT
    except HQError as e:
        _error(e.message)
        return e.exit_code
    except BrokenPipeError:
        return 0
    except Exception as e:
        _error(f"internal error ({type(e).__name__}): please report it")
        return EXIT_SOFTWARE
    return code if type(code) is int else 0


def _error(message: str) -> None:
    one_line = " ".join(message.split())
    sys.stderr.write(f"{PROG}: error: {one_line}\n")
