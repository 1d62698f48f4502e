"""meta-fieldpass under a real bitbake, offline, for every series the layer claims
(`make yocto-parse`; not part of `make test`: about 4 to 10 minutes per series on 2
cores, root to create the build user).

For each series: `bitbake -p` parses oe-core, meta-oe, meta-python, meta-fieldpass and
meta-fieldpass-example with no error and no warning from our layers; `bitbake -n` plans
fieldpass, fieldpass-native and the example gated application robot-app (one run for
the three). Then tinfoil
parses the recipes again under other configurations (sysvinit, no init manager, no
keyring, a missing keyring, the example keyring, the in-tree source) and checks what
they would package. RDEPENDS are checked against the series' own python3 manifest.
Run with `pytest -p no:cacheprovider tests/firmware/real_bitbake.py`.
"""

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.firmware.oe_build import SERIES, OEBuild
from tests.firmware.staging import LAYER

TINFOIL_PROBE = Path(__file__).with_name("oe_tinfoil_probe.py")
SUMMARY = re.compile(r"Parsing of (\d+) \.bb files complete \((\d+) cached, (\d+) parsed\)")
CACHED = re.compile(r"Loaded (\d+) entries from dependency cache")
TASKS = re.compile(r"Tasks Summary: Attempted (\d+) tasks")
TARGETS = ("fieldpass", "fieldpass-native", "robot-app")


@pytest.fixture(scope="module", params=SERIES)
def oe(request: pytest.FixtureRequest) -> Iterator[OEBuild]:
    build = OEBuild(request.param)
    yield build


def our_warnings(output: str) -> list[str]:
    """WARNING/ERROR lines that name one of our layers or recipes."""
    return [
        line
        for line in output.splitlines()
        if line.startswith(("WARNING:", "ERROR:")) and ("fieldpass" in line or "robot-app" in line)
    ]


def test_parse(oe: OEBuild) -> None:
    result = oe.bitbake("-p")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # A fresh build directory parses every recipe; a warm one may find all in its cache
    # (valid only while no parsed file changed), and then prints no parse summary.
    found = SUMMARY.search(output) or CACHED.search(output)
    assert found, output[-4000:]
    assert not our_warnings(output), output[-4000:]
    assert "ERROR:" not in output, output[-4000:]
    print(f"{oe.series}: {found.group(1)} recipes")


def test_dry_run(oe: OEBuild) -> None:
    """One `bitbake -n` for the three targets (their tasks overlap: planning them once
    saves minutes of CI); each one's do_build is in the plan."""
    result = oe.bitbake("-n", *TARGETS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    tasks = TASKS.search(output)
    assert tasks, output[-4000:]
    assert not our_warnings(output), output[-4000:]
    planned = set(re.findall(r"task \d+ of \d+ \((\S+):do_build\)", output))
    assert any(p.endswith("fieldpass_0.1.0.bb") and not p.startswith("virtual:") for p in planned)
    assert any(
        p.startswith("virtual:native:") and p.endswith("fieldpass_0.1.0.bb") for p in planned
    )
    assert any(p.endswith("robot-app_1.0.bb") for p in planned)
    print(f"{oe.series}: bitbake -n {' '.join(TARGETS)}: {tasks.group(1)} tasks")


@pytest.fixture(scope="module")
def probe(oe: OEBuild) -> dict[str, dict[str, object]]:
    """What tinfoil sees of our recipes under each configuration (oe_tinfoil_probe.py)."""
    result = oe.as_user(
        "python3", str(TINFOIL_PROBE), str(oe.top / "bitbake/lib"), str(LAYER), cwd=oe.build
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = result.stdout.rsplit("=== probe ===\n", 1)[-1]
    doc: dict[str, dict[str, object]] = json.loads(report)
    for name, entry in doc.items():
        section = result.stdout.split(f"=== case {name}\n", 1)[1].split(f"=== end {name}\n")[0]
        entry["warnings"] = [
            line.removeprefix("WARNING: ")
            for line in section.splitlines()
            if line.startswith("WARNING: ")
        ]
    return doc


def test_systemd_packages_and_agent_toml(probe: dict[str, dict[str, object]]) -> None:
    systemd = probe["systemd"]
    assert systemd["skipped"] is None
    assert (
        "fieldpass-gate.service" in str(systemd["FILES:fieldpass"])
        or systemd["SYSTEMD_SERVICE:fieldpass"] == "fieldpass-gate.service"
    )
    assert "virtual-fieldpass-keyring" in str(systemd["RDEPENDS:fieldpass"])
    assert systemd["warnings"] == []
    app = probe["robot-app:systemd"]
    assert "robot-app.service.d/50-fieldpass-gate.conf" in str(app["FILES:robot-app"])
    assert "fieldpass" in str(app["RDEPENDS:robot-app"]).split()
    assert "fieldpass" in str(app["DEPENDS"]).split()


def test_sysvinit(probe: dict[str, dict[str, object]]) -> None:
    sysvinit = probe["sysvinit"]
    assert sysvinit["skipped"] is None
    assert sysvinit["warnings"] == []
    app = probe["robot-app:sysvinit"]
    # No drop-in to copy, so the gated application does not need fieldpass to build.
    assert "fieldpass" not in str(app["DEPENDS"]).split()
    assert "fieldpass_gated_sysvinit" in str(app["do_install"])


def test_no_init_manager_warns_at_parse_time(probe: dict[str, dict[str, object]]) -> None:
    none = probe["mdev-busybox"]
    assert none["skipped"] is None
    (warning,) = none["warnings"]  # type: ignore[misc]
    assert "neither systemd nor sysvinit" in warning
    assert 'INIT_MANAGER = "mdev-busybox"' in warning


def test_keyring_unset_or_missing_skips_the_recipe_at_parse_time(
    probe: dict[str, dict[str, object]],
) -> None:
    assert "FIELDPASS_KEYRING is not set" in str(probe["keyring:unset"]["skipped"])
    assert "is not a file" in str(probe["keyring:missing"]["skipped"])
    assert probe["keyring:set"]["skipped"] is None
    assert probe["keyring:set"]["PACKAGE_ARCH"] == "qemux86_64"
    assert probe["keyring:set"]["RPROVIDES:fieldpass-keyring"] == "virtual-fieldpass-keyring"
    example = probe["keyring:example"]
    assert example["skipped"] is None
    (warning,) = example["warnings"]  # type: ignore[misc]
    assert "EXAMPLE keyring" in warning


def test_tree_source_is_the_checkout(probe: dict[str, dict[str, object]]) -> None:
    tree = probe["source:tree"]
    assert tree["skipped"] is None
    assert "file://agent;subdir=fieldpass-0.1.0" in str(tree["SRC_URI"])
    release = probe["systemd"]
    assert str(release["SRC_URI"]).startswith("git://")


def python_manifest(oe: OEBuild) -> dict[str, object]:
    """The series' python3-manifest.json: JSON after its comment header ("# EOC")."""
    path = oe.top / "openembedded-core/meta/recipes-devtools/python/python3/python3-manifest.json"
    text = path.read_text()
    manifest: dict[str, object] = json.loads(text[text.index("# EOC") + len("# EOC") :])
    return manifest


def test_rdepends_exist_in_the_series(oe: OEBuild, probe: dict[str, dict[str, object]]) -> None:
    """Every python3-* of RDEPENDS is a split of the series' python3 manifest, or a
    recipe of oe-core or meta-python in that series."""
    splits = {f"python3-{name}" for name in python_manifest(oe)}
    rdepends = str(probe["systemd"]["RDEPENDS:fieldpass"]).split()
    recipes = {
        path.name.split("_")[0]
        for layer in ("openembedded-core/meta", "meta-openembedded/meta-python")
        for path in (oe.top / layer).glob("recipes-*/**/python3-*.bb")
    }
    stdlib = [p for p in rdepends if p in splits]
    third_party = [p for p in rdepends if p.startswith("python3-") and p not in splits]
    assert len(stdlib) >= 8, rdepends
    assert set(third_party) == {"python3-click", "python3-paho-mqtt", "python3-pynacl"}
    assert set(third_party) <= recipes, f"{oe.series}: {set(third_party) - recipes}"
    assert "python3-cbor2" not in rdepends
