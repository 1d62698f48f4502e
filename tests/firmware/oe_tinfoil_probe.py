"""Run by tests/firmware/real_bitbake.py as the build user, with the host's python3 and
bitbake's own library: parse meta-fieldpass's recipes under several configurations with
tinfoil and print, after a "=== probe ===" line, what each would package, as JSON.

    python3 oe_tinfoil_probe.py BITBAKE_LIB LAYER_DIR     (in the build directory)

A configuration copies the build's datastore and changes a few variables (the init
manager's DISTRO_FEATURES, the keyring, the source). The warnings each parse logs are
printed by tinfoil on stdout between "=== case NAME" and "=== end NAME". Nothing is
built.
"""

import json
import sys
import time

sys.path.insert(0, sys.argv[1])
LAYER = sys.argv[2]

import bb.data  # noqa: E402
import bb.tinfoil  # noqa: E402

VARIABLES = (
    "SRC_URI",
    "DEPENDS",
    "PACKAGE_ARCH",
    "FILES:fieldpass",
    "FILES:fieldpass-daemon",
    "FILES:fieldpass-machine-id",
    "RDEPENDS:fieldpass",
    "SYSTEMD_SERVICE:fieldpass",
    "RPROVIDES:fieldpass-keyring",
    "FILES:robot-app",
    "RDEPENDS:robot-app",
    "do_install",
    "DISTRO_FEATURES",
    "INIT_MANAGER",
)


def main() -> None:
    report = {}
    with bb.tinfoil.Tinfoil() as tinfoil:
        tinfoil.prepare(config_only=False, quiet=0)
        base = tinfoil.config_data
        features = base.getVar("DISTRO_FEATURES").split()
        plain = [f for f in features if f not in ("systemd", "sysvinit")]
        init = {
            "systemd": {"DISTRO_FEATURES": " ".join([*plain, "systemd"])},
            "sysvinit": {"DISTRO_FEATURES": " ".join([*plain, "sysvinit"])},
            "mdev-busybox": {"DISTRO_FEATURES": " ".join(plain), "INIT_MANAGER": "mdev-busybox"},
        }
        recipe = {
            pn: tinfoil.get_recipe_file(pn)
            for pn in ("fieldpass", "fieldpass-keyring", "robot-app")
        }
        cases = []
        for name, values in init.items():
            cases.append((name, "fieldpass", values))
            cases.append((f"robot-app:{name}", "robot-app", values))
        cases += [
            ("keyring:unset", "fieldpass-keyring", {"FIELDPASS_KEYRING": None}),
            (
                "keyring:missing",
                "fieldpass-keyring",
                {"FIELDPASS_KEYRING": "/nonexistent/hq.keyring"},
            ),
            ("keyring:set", "fieldpass-keyring", {}),
            (
                "keyring:example",
                "fieldpass-keyring",
                {"FIELDPASS_KEYRING": None, "FIELDPASS_KEYRING_URI": "file://example.keyring"},
            ),
            ("source:tree", "fieldpass", {"FIELDPASS_SOURCE": "tree"}),
        ]
        for name, pn, values in cases:
            data = bb.data.createCopy(base)
            for key, value in values.items():
                if value is None:
                    data.delVar(key)
                else:
                    data.setVar(key, value)
            # The parse's warnings are printed on stdout by tinfoil, between these lines.
            print(f"=== case {name}", flush=True)
            d = tinfoil.parse_recipe_file(recipe[pn], config_data=data)
            time.sleep(0.5)  # the server's log records reach the client first
            print(f"=== end {name}", flush=True)
            entry = {"skipped": d.getVar("__SKIPPED")}
            for var in VARIABLES:
                entry[var] = d.getVar(var)
            report[name] = entry
    print("=== probe ===")
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
