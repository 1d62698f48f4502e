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

DEPENDS += "python3-wheel-native"

# Paths inside the Fieldpass source tree; fieldpass_%.bbappend beside this recipe
# points FILESEXTRAPATHS at the checkout this layer lives in. Only what the device
# needs is fetched: provisioning/ (HQ) is never in SRC_URI, so it cannot reach the image.
SRC_URI = "\
    file://pyproject.toml;subdir=fieldpass-${PV} \
    file://README.md;subdir=fieldpass-${PV} \
    file://LICENSE;subdir=fieldpass-${PV} \
    file://agent;subdir=fieldpass-${PV} \
    file://bin/fieldpass;subdir=fieldpass-${PV} \
    file://firmware-hooks;subdir=fieldpass-${PV} \
    file://docs/firmware-integration.md;subdir=fieldpass-${PV} \
"
# Releases before styhead unpack into WORKDIR and have no UNPACKDIR.
UNPACKDIR ??= "${WORKDIR}"
S = "${UNPACKDIR}/fieldpass-${PV}"

# Vendor settings (see the layer README).
# FIELDPASS_KEYRING: path of the public keyring exported at HQ (`fieldpass-hq keys
# export`). Mandatory: the recipe is skipped, with this message, until it is set.
FIELDPASS_KEYRING ??= ""
# Persistent data partition for the machine file, license key and clock state.
# Not the volatile system state directory of a read-only root: a persistent partition.
FIELDPASS_DATA_DIR ??= "/data/fieldpass"

inherit python_setuptools_build_meta systemd update-rc.d

PACKAGES =+ "${PN}-daemon"

SYSTEMD_PACKAGES = "${PN} ${PN}-daemon"
SYSTEMD_SERVICE:${PN} = "fieldpass-gate.service"
SYSTEMD_SERVICE:${PN}-daemon = "fieldpass-agent.service"
SYSTEMD_AUTO_ENABLE = "enable"

INITSCRIPT_PACKAGES = "${PN} ${PN}-daemon"
INITSCRIPT_NAME:${PN} = "fieldpass-gate"
INITSCRIPT_PARAMS:${PN} = "start 20 2 3 4 5 ."
INITSCRIPT_NAME:${PN}-daemon = "fieldpass-agent"
INITSCRIPT_PARAMS:${PN}-daemon = "start 85 2 3 4 5 . stop 15 0 1 6 ."

# Rebuild when the vendor's keyring changes.
do_install[file-checksums] += "${@'%s:True' % d.getVar('FIELDPASS_KEYRING') if d.getVar('FIELDPASS_KEYRING') else ''}"

do_install:append() {
    if [ -z "${FIELDPASS_KEYRING}" ]; then
        bbfatal "FIELDPASS_KEYRING is not set: point it at the public keyring exported at HQ (fieldpass-hq keys export -o FILE), in local.conf or your distro configuration"
    fi
    if [ ! -f "${FIELDPASS_KEYRING}" ]; then
        bbfatal "FIELDPASS_KEYRING=${FIELDPASS_KEYRING} is not a file"
    fi
    # Device side only: provisioning/ was never fetched, so the wheel holds no HQ code,
    # but its console script would be a dangling entry point.
    rm -f ${D}${bindir}/fieldpass-hq
    if [ -e ${D}${PYTHON_SITEPACKAGES_DIR}/provisioning ]; then
        bbfatal "the HQ package (provisioning) must never be installed on a device"
    fi

    install -d ${D}${sysconfdir}/fieldpass/on-verdict.d
    install -m 0644 ${S}/firmware-hooks/config/agent.toml ${D}${sysconfdir}/fieldpass/agent.toml
    sed -i -e 's#^state_dir = .*#state_dir = "${FIELDPASS_DATA_DIR}"#' ${D}${sysconfdir}/fieldpass/agent.toml
    install -m 0644 ${FIELDPASS_KEYRING} ${D}${sysconfdir}/fieldpass/keyring
    install -m 0755 ${S}/firmware-hooks/on-verdict.d/50-hmi-message ${D}${sysconfdir}/fieldpass/on-verdict.d/50-hmi-message

    install -d ${D}${libexecdir}/fieldpass
    install -m 0755 ${S}/firmware-hooks/identity/fieldpass-identity-hook ${D}${libexecdir}/fieldpass/identity-hook
    install -m 0755 ${S}/firmware-hooks/libexec/fieldpass-verdict-allows ${D}${libexecdir}/fieldpass/fieldpass-verdict-allows

    if ${@bb.utils.contains('DISTRO_FEATURES', 'systemd', 'true', 'false', d)}; then
        install -d ${D}${systemd_system_unitdir}
        install -m 0644 ${S}/firmware-hooks/systemd/fieldpass-gate.service ${D}${systemd_system_unitdir}/fieldpass-gate.service
        install -m 0644 ${S}/firmware-hooks/systemd/fieldpass-agent.service ${D}${systemd_system_unitdir}/fieldpass-agent.service
        sed -i -e 's#/data/fieldpass#${FIELDPASS_DATA_DIR}#g' \
            ${D}${systemd_system_unitdir}/fieldpass-gate.service \
            ${D}${systemd_system_unitdir}/fieldpass-agent.service
        install -d ${D}${nonarch_libdir}/tmpfiles.d
        install -m 0644 ${S}/firmware-hooks/systemd/fieldpass.tmpfiles.conf ${D}${nonarch_libdir}/tmpfiles.d/fieldpass.conf
        sed -i -e 's#/data/fieldpass#${FIELDPASS_DATA_DIR}#g' ${D}${nonarch_libdir}/tmpfiles.d/fieldpass.conf
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

# bin/fieldpass starts with a sh line that execs the python3 beside it with -I (pip
# and installer drop flags from a "#!python -I" line). On the image the interpreter is
# known: the gate calls it directly, isolated from the environment, with no sh or
# /usr/bin/env in between (docs/performance.md).
do_install:append:class-target() {
    sed -i -e '1s|^#!.*|#!${bindir}/python3 -I|' ${D}${bindir}/fieldpass
}

FILES:${PN}-daemon += "\
    ${systemd_system_unitdir}/fieldpass-agent.service \
    ${INIT_D_DIR}/fieldpass-agent \
"
FILES:${PN} += "\
    ${libexecdir}/fieldpass \
    ${nonarch_libdir}/tmpfiles.d/fieldpass.conf \
"
CONFFILES:${PN} = "${sysconfdir}/fieldpass/agent.toml ${sysconfdir}/fieldpass/keyring"

# Python packages from meta-python / oe-core, and only the split standard-library
# packages the agent imports (checked against agent/ by tests/firmware/test_yocto_layer.py).
RDEPENDS:${PN} = "\
    python3-cbor2 \
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
RDEPENDS:${PN}-daemon = "${PN}"

# fieldpass-native: a build-host `fieldpass` for image-time checks of a staged rootfs
# (`fieldpass --root ${IMAGE_ROOTFS} ...`). Native builds install no init files: the
# native class filters systemd and sysvinit out of DISTRO_FEATURES.
BBCLASSEXTEND = "native"
