"""The HQ package's layout holds: no import cycle, no command module that imports the
root command, every command module importable on its own, and SQL only in storage/.

Imports are read from the source (``ast``), at module level only: an import inside a
function (``cli/serve.py`` importing the server when the command runs) happens after
every module has loaded and cannot make a cycle at import time.
"""

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "provisioning"
ENGINE_DRIVERS = {"sqlite3", "psycopg", "psycopg2", "psycopg_pool"}
SQL = re.compile(r"^\s*(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE|ALTER|DROP|PRAGMA)\s")


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _resolve(name: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def module_imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(module imported, line) for each module-level import of ``name``: ``from P import
    x`` imports the module ``P.x`` where there is one, else ``P``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, path, node)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in known else target), node.lineno


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    known = modules(root)
    return {
        name: {m for m, _ in module_imports(name, path, known) if m in known and m != name}
        for name, path in known.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a -> b -> ... -> a), or None."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in stack:
            return [*stack[stack.index(node) :], node]
        if node in done:
            return None
        stack.append(node)
        for nxt in sorted(graph[node]):
            cycle = visit(nxt)
            if cycle:
                return cycle
        stack.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_the_hq_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "provisioning.cli.common" in graph["provisioning.cli.licenses"]  # it sees imports
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_no_command_module_imports_the_root_command() -> None:
    known = modules()
    for name, path in known.items():
        if not name.startswith("provisioning.cli.") or name == "provisioning.cli.__main__":
            continue
        for imported, line in module_imports(name, path, known):
            assert imported != "provisioning.cli", f"{path.relative_to(REPO)}:{line}"


def test_every_command_module_imports_alone_in_a_fresh_interpreter() -> None:
    names = [n for n in modules() if n.startswith("provisioning.cli")]
    assert len(names) > 10
    for name in names:
        result = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, f"import {name}: {result.stderr[-2000:]}"


def test_only_storage_speaks_sql_or_imports_a_database_engine() -> None:
    storage = PACKAGE / "storage"
    known = modules()
    for name, path in known.items():
        if storage in path.parents:
            continue
        where = path.relative_to(REPO)
        for imported, line in module_imports(name, path, known):
            assert imported.split(".")[0] not in ENGINE_DRIVERS, f"{where}:{line}"
            assert imported != "provisioning.storage.sqlite", f"{where}:{line}: an engine"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not SQL.match(node.value), f"{where}:{node.lineno}: SQL outside storage/"


def test_a_command_loads_its_own_modules_only(tmp_path: Path) -> None:
    """The root names its commands and imports one when it runs (cli/__init__.py):
    `fieldpass-hq licenses list` on SQLite loads neither the laptop's server, the MQTT
    clients, the HTTP server nor the PostgreSQL engine (the suite runs the command line
    over a thousand times; each import is paid each time)."""
    code = (
        "import sys\n"
        "from provisioning.cli import main\n"
        f"code = main(['--home', {str(tmp_path / 'hq')!r}, 'licenses', 'list', '--json'])\n"
        "print(code, ' '.join(sorted(m for m in sys.modules if m.startswith('provisioning'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
    code_out, loaded = result.stdout.splitlines()[-1].split(" ", 1)
    assert code_out == "0", result.stdout
    names = set(loaded.split())
    assert "provisioning.cli.licenses" in names and "provisioning.storage.sqlite" in names
    heavy = {
        "provisioning.field.server",
        "provisioning.field.listener",
        "provisioning.mqtt",
        "provisioning.server",
        "provisioning.storage.postgres",
        "provisioning.cli.field",
    }
    assert names & heavy == set()
