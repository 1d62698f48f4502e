"""What the README and docs/hq.md promise of both command lines, checked on every
command by walking click's command tree: each ``--help`` has an ``Examples:`` section
whose examples run that very command, every ``fieldpass-hq`` command takes ``--json``
and every ``fieldpass`` command but the two the README names does; and shell completion
works as documented, from the installed scripts."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from agent.cli import cli as device_cli
from provisioning.cli import cli as hq_cli

BIN = Path(sys.executable).parent
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
DEVICE_WITHOUT_JSON = {"request", "run"}  # the README says so, in these words:
DEVICE_JSON_CLAIM = (
    "Every `fieldpass` command but `request` (its output is the request itself) and `run` "
    "(the\ndaemon) takes `--json`."
)


def walk(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], bool]]:
    """(path below the program, is a leaf) for every command and group."""
    yield path, not isinstance(command, click.Group)
    if isinstance(command, click.Group):
        for name, sub in subcommands(command):
            yield from walk(sub, (*path, name))


def subcommands(group: click.Group) -> Iterator[tuple[str, click.Command]]:
    """Each command of ``group`` by name, as click finds it (fieldpass-hq's root loads
    its command modules on demand: they are not in ``group.commands``)."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        yield name, command


PROGRAMS = {"fieldpass-hq": hq_cli, "fieldpass": device_cli}
EVERY = [(prog, path, leaf) for prog, root in PROGRAMS.items() for path, leaf in walk(root, ())]


def help_text(prog: str, path: tuple[str, ...]) -> str:
    res = CliRunner().invoke(PROGRAMS[prog], [*path, "--help"], prog_name=prog)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize(
    ("prog", "path", "leaf"), EVERY, ids=[" ".join(e[:1] + e[1]) for e in EVERY]
)
def test_every_help_has_examples_of_itself(prog: str, path: tuple[str, ...], leaf: bool) -> None:
    text = help_text(prog, path)
    assert "Examples:" in text
    examples = text[text.index("Examples:") :].splitlines()[1:]
    runs = [line.strip() for line in examples if line.strip().startswith(prog + " ")]
    assert runs, f"no example under Examples: in `{prog} {' '.join(path)} --help`"
    if leaf:
        words = " ".join(path)
        assert any(f" {words}" in run for run in runs), f"no example runs `{prog} {words}`"


def test_every_command_takes_json_as_documented() -> None:
    without = {
        (prog, " ".join(path))
        for prog, path, leaf in EVERY
        if leaf and "--json" not in help_text(prog, path)
    }
    assert without == {("fieldpass", name) for name in DEVICE_WITHOUT_JSON}
    assert DEVICE_JSON_CLAIM in README
    docs = (Path(__file__).resolve().parents[1] / "docs" / "hq.md").read_text()
    assert "Every command takes `--json`" in docs and "(every command takes `--json`" in README


@pytest.mark.parametrize(("prog", "var", "partial", "expected"), [
    ("fieldpass-hq", "_FIELDPASS_HQ_COMPLETE", "tok", "tokens"),
    ("fieldpass", "_FIELDPASS_COMPLETE", "ins", "install"),
])  # fmt: skip
def test_shell_completion_as_documented(prog: str, var: str, partial: str, expected: str) -> None:
    assert f"{var}=bash_source {prog}" in README
    env = {**os.environ, var: "bash_source"}
    source = subprocess.run([str(BIN / prog)], env=env, capture_output=True, text=True, timeout=60)
    assert source.returncode == 0 and "complete " in source.stdout
    env = {**os.environ, var: "bash_complete", "COMP_WORDS": f"{prog} {partial}", "COMP_CWORD": "1"}
    done = subprocess.run([str(BIN / prog)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"plain,{expected}" in done.stdout.splitlines()
