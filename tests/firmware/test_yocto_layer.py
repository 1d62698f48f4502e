"""meta-fieldpass: oelint-adv finds nothing; what the recipe fetches and installs exists
in this repository and never comes from provisioning/; the wheel built from what it
fetches holds the agent only; RDEPENDS covers exactly the standard-library splits the
agent imports; layer.conf names the series from scarthgap to wrynose."""

import ast
import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.firmware.staging import BIN, LAYER, REPO

RECIPE = LAYER / "recipes-fieldpass/fieldpass/fieldpass_0.1.0.bb"
SERIES = ("scarthgap", "styhead", "walnascar", "whinlatter", "wrynose")

# oelint-adv rules that need the network, suppressed with the reason (nothing else is).
NETWORK_RULES = {
    # Fetches HOMEPAGE over HTTP; the test must not depend on the network (and the
    # product's public homepage does not exist yet: the recipe names a .invalid host).
    "oelint.vars.homepageping": "fetches the HOMEPAGE URL",
}

# Standard-library module -> oe-core python3 split package (python3-manifest.json).
# An import missing here fails the test: look it up in the manifest and add it.
STDLIB_PACKAGE = {
    **dict.fromkeys(
        [
            "abc",
            "argparse",
            "ast",
            "binascii",
            "bisect",
            "codecs",
            "collections",
            "contextlib",
            "copy",
            "copyreg",
            "dataclasses",
            "enum",
            "errno",
            "fnmatch",
            "functools",
            "genericpath",
            "getopt",
            "gettext",
            "glob",
            "heapq",
            "importlib",
            "inspect",
            "io",
            "keyword",
            "linecache",
            "locale",
            "operator",
            "os",
            "pathlib",
            "platform",
            "posixpath",
            "re",
            "select",
            "selectors",
            "shutil",
            "signal",
            "stat",
            "struct",
            "subprocess",
            "sys",
            "textwrap",
            "threading",
            "time",
            "token",
            "tokenize",
            "traceback",
            "types",
            "typing",
            "urllib.parse",
            "warnings",
            "weakref",
            "zlib",
        ],
        "python3-core",
    ),
    "fcntl": "python3-fcntl",
    "hashlib": "python3-crypt",
    "datetime": "python3-datetime",
    "calendar": "python3-datetime",
    "json": "python3-json",
    "tomllib": "python3-tomllib",
    "logging": "python3-logging",
    "base64": "python3-netclient",
    "hmac": "python3-netclient",
    "secrets": "python3-netclient",
    "uuid": "python3-netclient",
    "http": "python3-netclient",
    "urllib": "python3-netclient",
    "socket": "python3-io",
    "_socket": "python3-io",
    "ssl": "python3-io",
    "tempfile": "python3-io",
    "queue": "python3-threading",
    "random": "python3-math",
    "decimal": "python3-numbers",
    "numbers": "python3-numbers",
    "shlex": "python3-shell",
    "string": "python3-stringold",
    "syslog": "python3-syslog",
    "zoneinfo": "python3-zoneinfo",
}
THIRD_PARTY_PACKAGE = {
    "nacl": "python3-pynacl",
    "cbor2": "python3-cbor2",
    "paho": "python3-paho-mqtt",
    "click": "python3-click",
}


def recipe_var(name: str) -> str:
    """The value of a (possibly multi-line) assignment ``NAME = "..."``."""
    found = re.search(rf'^{re.escape(name)} \??=\s*"(.*?)"', RECIPE.read_text(), re.M | re.S)
    assert found, name
    return found.group(1).replace("\\\n", " ")


def lint_targets() -> list[str]:
    targets = sorted(LAYER.rglob("*.bb")) + sorted(LAYER.rglob("*.bbappend"))
    targets += [*sorted(LAYER.rglob("*.bbclass")), LAYER / "conf/layer.conf"]
    return [str(p) for p in targets]


@pytest.mark.parametrize("release", SERIES)
def test_oelint_adv_finds_nothing(release: str) -> None:
    result = subprocess.run(
        [
            str(BIN / "oelint-adv"),
            "--quiet",
            f"--release={release}",
            f"--suppress={','.join(NETWORK_RULES)}",
            *lint_targets(),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_layer_conf() -> None:
    text = (LAYER / "conf/layer.conf").read_text()
    assert 'BBFILE_COLLECTIONS += "fieldpass"' in text
    assert 'LAYERDEPENDS_fieldpass = "core openembedded-layer meta-python"' in text
    assert f'LAYERSERIES_COMPAT_fieldpass = "{" ".join(SERIES)}"' in text


def src_uri_paths() -> list[str]:
    return [
        entry.split(";")[0].removeprefix("file://")
        for entry in recipe_var("SRC_URI").split()
        if entry.startswith("file://")
    ]


def test_every_fetched_and_installed_file_exists_and_none_is_hq() -> None:
    fetched = src_uri_paths()
    assert fetched
    for path in fetched:
        assert (REPO / path).exists(), path
        assert not path.startswith("provisioning"), path
    installed = re.findall(r"\$\{S\}/(\S+)", RECIPE.read_text())
    assert len(installed) >= 10
    for path in installed:
        assert (REPO / path).is_file(), path
        assert any(path == f or path.startswith(f + "/") for f in fetched), path
        assert "provisioning" not in path
    # The bbappend resolves file:// against the repository root.
    bbappend = (LAYER / "recipes-fieldpass/fieldpass/fieldpass_%.bbappend").read_text()
    assert 'FILESEXTRAPATHS:prepend := "${THISDIR}/../../../..:"' in bbappend
    assert (RECIPE.parent / "../../../..").resolve() == REPO


def test_license_checksum_matches_the_file() -> None:
    entry = recipe_var("LIC_FILES_CHKSUM")
    found = re.fullmatch(r"file://(\S+);md5=([0-9a-f]{32})", entry)
    assert found, entry
    path, md5 = found.groups()
    assert path in src_uri_paths()  # the checksummed file is fetched, so bitbake can read it
    text = (REPO / path).read_bytes()
    assert hashlib.md5(text).hexdigest() == md5
    assert b"Apache License" in text and b"Version 2.0" in text


def test_wheel_built_from_the_fetched_files_holds_the_agent_only(tmp_path: Path) -> None:
    """Do what do_unpack + do_compile do: copy the SRC_URI entries, build the wheel."""
    src = tmp_path / "src"
    for path in src_uri_paths():
        dest = src / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / path).is_dir():
            shutil.copytree(
                REPO / path, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copyfile(REPO / path, dest)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("fieldpass-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert "agent" in top
    assert "provisioning" not in top
    assert not any("provisioning" in n for n in names if not n.endswith("entry_points.txt"))
    # The console script the recipe removes, because its module is not there.
    assert "rm -f ${D}${bindir}/fieldpass-hq" in RECIPE.read_text()


def agent_imports() -> set[str]:
    modules: set[str] = set()
    for path in (REPO / "agent").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module)
    return modules


def package_for(module: str) -> str | None:
    top = module.split(".")[0]
    if top in THIRD_PARTY_PACKAGE:
        return THIRD_PARTY_PACKAGE[top]
    if top not in sys.stdlib_module_names:
        assert top == "agent", f"agent imports {module}: add its package to the recipe"
        return None
    for name in (module, top):
        if name in STDLIB_PACKAGE:
            return STDLIB_PACKAGE[name]
    raise AssertionError(f"agent imports {module}: map it in STDLIB_PACKAGE (manifest)")


def pyproject_dependencies() -> set[str]:
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)\]", text, re.M | re.S)
    assert block
    names = re.findall(r'"([A-Za-z0-9_.-]+)', block.group(1))
    by_dist = {"pynacl": "nacl", "cbor2": "cbor2", "paho-mqtt": "paho", "click": "click"}
    return {THIRD_PARTY_PACKAGE[by_dist[n.lower()]] for n in names}


def test_rdepends_are_exactly_what_the_agent_needs() -> None:
    """Third-party: pyproject's dependencies. Standard library: the splits of the modules
    agent/ imports, and no others. On failure update RDEPENDS in the recipe."""
    imported = {p for m in agent_imports() if (p := package_for(m))}
    third_party = pyproject_dependencies()
    assert {p for p in imported if p in THIRD_PARTY_PACKAGE.values()} <= third_party
    needed = imported | third_party | {"python3-core"}
    rdepends = set(recipe_var("RDEPENDS:${PN}").split())
    assert needed <= rdepends, f"add to the recipe's RDEPENDS: {sorted(needed - rdepends)}"
    assert rdepends <= needed, f"not needed in RDEPENDS: {sorted(rdepends - needed)}"


def test_state_is_on_the_data_partition_never_var_lib() -> None:
    text = RECIPE.read_text()
    assert 'FIELDPASS_DATA_DIR ??= "/data/fieldpass"' in text
    assert "/var/lib" not in text
    assert 'FIELDPASS_KEYRING ??= ""' in text
    assert 'bbfatal "FIELDPASS_KEYRING is not set' in text
    assert "inherit python_setuptools_build_meta systemd update-rc.d" in text
