SUMMARY = "Example application gated by the Fieldpass boot gate"
DESCRIPTION = "A stand-in for the equipment's software: its systemd unit gets the \
               Fieldpass drop-in from the fieldpass_gated class, its sysvinit script \
               asks fieldpass-verdict-allows before it starts."
HOMEPAGE = "https://fieldpass.invalid/"
BUGTRACKER = "https://fieldpass.invalid/issues"
SECTION = "examples"
CVE_PRODUCT = "robot-app"
LICENSE = "Apache-2.0"
# An example with no upstream source of its own.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# The unit and the init script are the examples in the Fieldpass repository this layer
# lives in (firmware-hooks/*/examples/); the program is beside this recipe.
# nooelint: oelint.vars.fileextrapaths,oelint.vars.outofcontext
FILESEXTRAPATHS:prepend := "${THISDIR}/../../../..:"
SRC_URI = "\
    file://robot-app;subdir=${BP} \
    file://firmware-hooks/systemd/examples/robot-app.service;subdir=${BP} \
    file://firmware-hooks/sysvinit/examples/robot-app;subdir=${BP} \
"

inherit systemd update-rc.d fieldpass_gated

SYSTEMD_SERVICE:${PN} = "robot-app.service"
INITSCRIPT_NAME = "robot-app"
INITSCRIPT_PARAMS = "start 90 2 3 4 5 . stop 10 0 1 6 ."
# Defined by the fieldpass_gated class (meta-fieldpass).
# nooelint: oelint.vars.mispell.unknown
FIELDPASS_GATED_SERVICES = "robot-app.service"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${bindir}
    install -m 0755 ${S}/robot-app ${D}${bindir}/robot-app
    if ${@bb.utils.contains('DISTRO_FEATURES', 'systemd', 'true', 'false', d)}; then
        install -d ${D}${systemd_system_unitdir}
        install -m 0644 ${S}/firmware-hooks/systemd/examples/robot-app.service ${D}${systemd_system_unitdir}/robot-app.service
    fi
    if ${@bb.utils.contains('DISTRO_FEATURES', 'sysvinit', 'true', 'false', d)}; then
        install -d ${D}${INIT_D_DIR}
        install -m 0755 ${S}/firmware-hooks/sysvinit/examples/robot-app ${D}${INIT_D_DIR}/robot-app
    fi
}
