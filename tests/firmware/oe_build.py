"""An offline OpenEmbedded build directory per release series, for the real bitbake
checks of meta-fieldpass (tests/firmware/real_bitbake.py, `make yocto-parse`).

The bitbake, openembedded-core and meta-openembedded snapshots come from the shared
``oe/`` folder beside the checkout (``../shared/oe/<series>/*.tar.xz``; the variable
FIELDPASS_OE_SOURCES names another). They are unpacked at test time into a work folder
outside the repository (FIELDPASS_OE_WORK, default /var/tmp/fieldpass-oe), never
committed, and bitbake runs there as an unprivileged user (bitbake refuses root) with
``BB_NO_NETWORK = "1"`` against this checkout's layers as they are.

Needs root once, to create the build user and the en_US.UTF-8 locale; the Debian
packages are in .ci/apt-packages-yocto.txt.
"""

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from agent.wire.keys import Keyring, SigningKey
from tests.firmware.staging import REPO

SERIES = ("scarthgap", "wrynose")
TARBALLS = ("bitbake", "openembedded-core", "meta-openembedded")
BUILD_USER = "fieldpass-build"
LAYERS = (
    "openembedded-core/meta",
    "meta-openembedded/meta-oe",
    "meta-openembedded/meta-python",
)
FIELDPASS_LAYERS = (
    REPO / "yocto-layer/meta-fieldpass",
    REPO / "yocto-layer/meta-fieldpass-example",
)
BITBAKE_TIMEOUT_S = 20 * 60


def oe_sources() -> Path:
    if "FIELDPASS_OE_SOURCES" in os.environ:
        return Path(os.environ["FIELDPASS_OE_SOURCES"])
    for parent in (REPO.parent, REPO.parent.parent):
        if (parent / "shared/oe/README.md").exists():
            return parent / "shared/oe"
    raise AssertionError("no shared/oe beside the checkout: set FIELDPASS_OE_SOURCES")


def work_root() -> Path:
    return Path(os.environ.get("FIELDPASS_OE_WORK", "/var/tmp/fieldpass-oe"))


def ensure_host() -> pwd.struct_passwd:
    """The unprivileged build user and the locale bitbake switches to."""
    try:
        user = pwd.getpwnam(BUILD_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--shell", "/bin/sh", BUILD_USER],
            check=True,
        )
        user = pwd.getpwnam(BUILD_USER)
    locales = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=True)
    if "en_US.utf8" not in locales.stdout.split():
        gen = Path("/etc/locale.gen")
        gen.write_text(gen.read_text() + "\nen_US.UTF-8 UTF-8\n")
        subprocess.run(["locale-gen"], capture_output=True, check=True)
    return user


class OEBuild:
    """One series: sources unpacked, a build directory configured, bitbake runnable."""

    def __init__(self, series: str) -> None:
        self.series = series
        self.user = ensure_host()
        self.top = work_root() / series
        self.build = self.top / "build"
        self.unpack()
        self.configure()

    def as_user(self, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        env = {
            "HOME": str(self.top),
            "PATH": f"{self.top / 'bitbake/bin'}:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "en_US.UTF-8",
            "LC_ALL": "en_US.UTF-8",
            "BBPATH": str(self.build),
        }
        return subprocess.run(
            [
                "runuser",
                "-u",
                BUILD_USER,
                "--",
                "env",
                "-i",
                *(f"{k}={v}" for k, v in env.items()),
                *argv,
            ],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BITBAKE_TIMEOUT_S,
            check=False,
        )

    def unpack(self) -> None:
        """Unpack the snapshots once per set of revisions (the .rev files)."""
        source = oe_sources() / self.series
        revs = "".join(
            f"{t}={(source / f'{t}.rev').read_text().strip()}\n"
            for t in ("bitbake", "oe-core", "meta-openembedded")
        )
        stamp = self.top / "sources.rev"
        if stamp.exists() and stamp.read_text() == revs:
            return
        if self.top.exists():
            shutil.rmtree(self.top)
        self.top.mkdir(parents=True)
        for tarball in TARBALLS:
            subprocess.run(
                ["tar", "-C", str(self.top), "-xf", str(source / f"{tarball}.tar.xz")], check=True
            )
        stamp.write_text(revs)
        os.chown(self.top.parent, 0, 0)
        subprocess.run(["chown", "-R", f"{BUILD_USER}:{BUILD_USER}", str(self.top)], check=True)

    def configure(self) -> None:
        conf = self.build / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        keyring = self.build / "hq.keyring"
        if not keyring.exists():
            # A public keyring as `fieldpass-hq keys export` writes it; the seed is dropped.
            keyring.write_text(Keyring.of(SigningKey.generate().public_key).dumps())
        layers = [str(self.top / layer) for layer in LAYERS] + [str(p) for p in FIELDPASS_LAYERS]
        (conf / "bblayers.conf").write_text(
            'POKY_BBLAYERS_CONF_VERSION = "2"\nBBPATH = "${TOPDIR}"\nBBFILES ?= ""\n'
            'BBLAYERS = "' + " ".join(layers) + '"\n'
        )
        (conf / "local.conf").write_text(
            f"""MACHINE = "qemux86-64"
INIT_MANAGER = "systemd"
BB_NO_NETWORK = "1"
BB_NUMBER_PARSE_THREADS = "2"
BB_NUMBER_THREADS = "2"
PARALLEL_MAKE = "-j 2"
CONNECTIVITY_CHECK_URIS = ""
DL_DIR = "${{TOPDIR}}/downloads"
SSTATE_DIR = "${{TOPDIR}}/sstate-cache"
TMPDIR = "${{TOPDIR}}/tmp"
FIELDPASS_KEYRING = "{keyring}"
# wrynose's default distro setup inherits uninative, whose tarball cannot be fetched
# offline (it would be disabled with a warning); nothing is built here anyway.
INHERIT_DISTRO:remove = "uninative"
"""
        )
        subprocess.run(["chown", "-R", f"{BUILD_USER}:{BUILD_USER}", str(self.build)], check=True)

    def bitbake(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.as_user("bitbake", *args, cwd=self.build)
