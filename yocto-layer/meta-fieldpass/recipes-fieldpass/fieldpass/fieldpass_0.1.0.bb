SUMMARY = "Fieldpass boot gate and device agent for offline licensing"
DESCRIPTION = "Device side of Fieldpass: verifies the signed, device-bound \
               machine file at boot (fieldpass check), writes the verdict for the \
               applications and gates their start. Installs the agent package \
               only, never the HQ package."
HOMEPAGE = "https://fieldpass.invalid/"
BUGTRACKER = "https://fieldpass.invalid/issues"
SECTION = "console/utils"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"
CVE_PRODUCT = "fieldpass"

# Where the source comes from (layer README, "Source"):
# "release": the pinned commit below of the Fieldpass repository, fetched with git (for
#   an offline build, mirror it and point FIELDPASS_GIT_URI at the mirror);
#   tests/firmware/test_yocto_layer.py checks that it holds every file installed here.
# "tree": the Fieldpass checkout this layer lives in (fieldpass-source-tree.inc), for
#   development of Fieldpass itself.
FIELDPASS_SOURCE ??= "release"
FIELDPASS_GIT_URI ??= "git://git.fieldpass.invalid/fieldpass.git;protocol=https;branch=main"
SRC_URI = "${FIELDPASS_GIT_URI};destsuffix=${BP}"
SRCREV = "15e25a0cbfe4518ea5734a24a4bdbe9cc9bf28e7"
include ${@'fieldpass-source-tree.inc' if d.getVar('FIELDPASS_SOURCE') == 'tree' else ''}

# Vendor settings (layer README, "Variables"). The keyring is its own recipe,
# fieldpass-keyring (FIELDPASS_KEYRING).
# Mount point of the persistent read-write data partition, and the state directory on
# it (machine file, license key, clock high-water mark). Never the system state
# directory, which is volatile on a read-only root.
FIELDPASS_DATA_MOUNT ??= "/data"
FIELDPASS_DATA_DIR ??= "${FIELDPASS_DATA_MOUNT}/fieldpass"
# Identity sources, in order, written to agent.toml ([identity] sources). machine-id is
# left out on purpose: on a read-only root it is new at every boot, and a machine-id
# kept on the data partition is cloned with it (docs/identity.md).
FIELDPASS_IDENTITY_SOURCES ??= "dmi device-tree hook"
# "1": keep /etc/machine-id on the data partition (package fieldpass-machine-id,
# systemd only). It is never a Fieldpass identity source unless
# FIELDPASS_IDENTITY_SOURCES names machine-id.
FIELDPASS_PERSISTENT_MACHINE_ID ??= "0"
FIELDPASS_MACHINE_ID_FILE ??= "${FIELDPASS_DATA_MOUNT}/machine-id"

inherit python_setuptools_build_meta systemd update-rc.d

PACKAGES =+ "${PN}-daemon ${PN}-machine-id"

SYSTEMD_PACKAGES = "${PN} ${PN}-daemon ${PN}-machine-id"
SYSTEMD_SERVICE:${PN} = "fieldpass-gate.service"
SYSTEMD_SERVICE:${PN}-daemon = "fieldpass-agent.service"
SYSTEMD_SERVICE:${PN}-machine-id = "fieldpass-machine-id.service"
SYSTEMD_AUTO_ENABLE = "enable"

INITSCRIPT_PACKAGES = "${PN} ${PN}-daemon"
INITSCRIPT_NAME:${PN} = "fieldpass-gate"
INITSCRIPT_PARAMS:${PN} = "start 20 2 3 4 5 ."
INITSCRIPT_NAME:${PN}-daemon = "fieldpass-agent"
INITSCRIPT_PARAMS:${PN}-daemon = "start 85 2 3 4 5 . stop 15 0 1 6 ."

FIELDPASS_KNOWN_SOURCES = "dmi machine-id device-tree hook"

# Parse-time checks: a wrong setting skips the recipe with its reason before anything
# builds, and an image that would run no gate says so.
# nooelint: oelint.task.noanonpython
python __anonymous() {
    if d.getVar('FIELDPASS_SOURCE') not in ('release', 'tree'):
        raise bb.parse.SkipRecipe(
            "FIELDPASS_SOURCE = \"%s\": use release or tree" % d.getVar('FIELDPASS_SOURCE'))
    sources = d.getVar('FIELDPASS_IDENTITY_SOURCES').split()
    known = d.getVar('FIELDPASS_KNOWN_SOURCES').split()
    unknown = [s for s in sources if s not in known]
    if not sources or unknown or len(set(sources)) != len(sources):
        raise bb.parse.SkipRecipe(
            "FIELDPASS_IDENTITY_SOURCES = \"%s\": name each of %s at most once"
            % (' '.join(sources), ', '.join(known)))
    if bb.data.inherits_class('native', d):
        return
    features = d.getVar('DISTRO_FEATURES').split()
    if 'systemd' not in features and 'sysvinit' not in features:
        bb.warn("fieldpass: DISTRO_FEATURES has neither systemd nor sysvinit "
                "(INIT_MANAGER = \"%s\"): no unit or init script is installed and nothing "
                "runs the boot gate; run `fieldpass check` before the licensed "
                "application starts (docs/firmware-integration.md, \"Without systemd\")"
                % d.getVar('INIT_MANAGER'))
    if oe.types.boolean(d.getVar('FIELDPASS_PERSISTENT_MACHINE_ID')):
        if 'systemd' not in features:
            bb.warn("fieldpass: FIELDPASS_PERSISTENT_MACHINE_ID needs systemd; ignored")
        else:
            d.appendVar('RDEPENDS:' + d.getVar('PN'), ' ' + d.getVar('PN') + '-machine-id')
}

# The release source is the whole repository: the HQ package must never reach the wheel.
do_configure:prepend() {
    rm -rf ${S}/provisioning
}

# bin/fieldpass starts with a sh line that execs the python3 beside it with -I (pip
# and pypa/installer drop the options of a "#!python -I" line, and "#!/usr/bin/env
# python3 -I" would not run: the kernel hands "python3 -I" to env as one word). On the
# image the interpreter is known: install the script again with its first line naming
# it, isolated from the environment, so the gate runs with no sh or env in between
# (docs/performance.md). Any first line is replaced (release 0.1.0's was "#!python").
# On the target it also skips site (-S: no site module, no .pth file of site-packages runs
# before the gate, 0.5 ms less per boot): the line after it puts the one directory the
# agent and PyNaCl live in at the end of sys.path, after the standard library.
FIELDPASS_SHEBANG = "${bindir}/python3 -IS"
FIELDPASS_SHEBANG:class-native = "${USRBINPATH}/env -S nativepython3 -I"
FIELDPASS_SITE_LINE = "import sys; sys.path.append('${PYTHON_SITEPACKAGES_DIR}')  # -S: site-packages by hand"

do_install:append() {
    # Device side only: the wheel holds no HQ code, but its console script would be a
    # dangling entry point.
    rm -f ${D}${bindir}/fieldpass-hq
    if [ -e ${D}${PYTHON_SITEPACKAGES_DIR}/provisioning ]; then
        bbfatal "the HQ package (provisioning) must never be installed on a device"
    fi
    install -m 0755 ${S}/bin/fieldpass ${D}${bindir}/fieldpass
    sed -i -e '1s|^#!.*|#!${FIELDPASS_SHEBANG}|' -e "1a ${FIELDPASS_SITE_LINE}" ${D}${bindir}/fieldpass

    install -d ${D}${sysconfdir}/fieldpass/on-verdict.d
    install -m 0644 ${S}/firmware-hooks/config/agent.toml ${D}${sysconfdir}/fieldpass/agent.toml
    sed -i -e 's#^state_dir = .*#state_dir = "${FIELDPASS_DATA_DIR}"#' \
        -e 's#^sources = .*#sources = [${@', '.join('"%s"' % s for s in d.getVar('FIELDPASS_IDENTITY_SOURCES').split())}]#' \
        ${D}${sysconfdir}/fieldpass/agent.toml
    install -m 0755 ${S}/firmware-hooks/on-verdict.d/50-hmi-message ${D}${sysconfdir}/fieldpass/on-verdict.d/50-hmi-message

    install -d ${D}${libexecdir}/fieldpass
    install -m 0755 ${S}/firmware-hooks/identity/fieldpass-identity-hook ${D}${libexecdir}/fieldpass/identity-hook
    install -m 0755 ${S}/firmware-hooks/libexec/fieldpass-verdict-allows ${D}${libexecdir}/fieldpass/fieldpass-verdict-allows
    install -m 0755 ${S}/firmware-hooks/libexec/fieldpass-data-dir ${D}${libexecdir}/fieldpass/fieldpass-data-dir

    if ${@bb.utils.contains('DISTRO_FEATURES', 'systemd', 'true', 'false', d)}; then
        install -d ${D}${systemd_system_unitdir}
        for unit in fieldpass-gate.service fieldpass-agent.service fieldpass-machine-id.service; do
            install -m 0644 ${S}/firmware-hooks/systemd/$unit ${D}${systemd_system_unitdir}/$unit
            sed -i -e 's#/data/fieldpass#${FIELDPASS_DATA_DIR}#g' \
                -e 's#/data/machine-id#${FIELDPASS_MACHINE_ID_FILE}#g' \
                ${D}${systemd_system_unitdir}/$unit
        done
        install -m 0755 ${S}/firmware-hooks/libexec/fieldpass-machine-id ${D}${libexecdir}/fieldpass/fieldpass-machine-id
        install -d ${D}${datadir}/fieldpass
        install -m 0644 ${S}/firmware-hooks/systemd/50-fieldpass-gate.conf ${D}${datadir}/fieldpass/50-fieldpass-gate.conf
    fi
    if ${@bb.utils.contains('DISTRO_FEATURES', 'sysvinit', 'true', 'false', d)}; then
        install -d ${D}${INIT_D_DIR}
        install -m 0755 ${S}/firmware-hooks/sysvinit/fieldpass-gate ${D}${INIT_D_DIR}/fieldpass-gate
        install -m 0755 ${S}/firmware-hooks/sysvinit/fieldpass-agent ${D}${INIT_D_DIR}/fieldpass-agent
        sed -i -e 's#/data/fieldpass#${FIELDPASS_DATA_DIR}#g' ${D}${INIT_D_DIR}/fieldpass-gate
    fi

    install -d ${D}${docdir}/fieldpass
    install -m 0644 ${S}/docs/firmware-integration.md ${D}${docdir}/fieldpass/firmware-integration.md
}

FILES:${PN}-daemon += "\
    ${systemd_system_unitdir}/fieldpass-agent.service \
    ${INIT_D_DIR}/fieldpass-agent \
"
FILES:${PN}-machine-id += "\
    ${systemd_system_unitdir}/fieldpass-machine-id.service \
    ${libexecdir}/fieldpass/fieldpass-machine-id \
"
FILES:${PN} += "${libexecdir}/fieldpass"
CONFFILES:${PN} = "${sysconfdir}/fieldpass/agent.toml"

# Python packages from meta-python / oe-core, and only the split standard-library
# packages the agent imports (checked against agent/ and each series' python3 manifest
# by tests/firmware/test_yocto_layer.py and tests/firmware/real_bitbake.py).
RDEPENDS:${PN} = "\
    python3-click \
    python3-core \
    python3-fcntl \
    python3-io \
    python3-json \
    python3-logging \
    python3-netclient \
    python3-paho-mqtt \
    python3-pynacl \
    python3-threading \
    python3-tomllib \
"
RDEPENDS:${PN}:append:class-target = " virtual-fieldpass-keyring"
RDEPENDS:${PN}-daemon = "${PN}"

# fieldpass-native: a build-host `fieldpass` for image-time checks of a staged rootfs
# (`fieldpass --root ${IMAGE_ROOTFS} ...`). Native builds install no init files: the
# native class filters systemd and sysvinit out of DISTRO_FEATURES.
BBCLASSEXTEND = "native"
