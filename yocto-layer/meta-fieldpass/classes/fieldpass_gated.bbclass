# fieldpass_gated: gate this recipe's services on the Fieldpass verdict.
#
#   inherit fieldpass_gated
#   FIELDPASS_GATED_SERVICES = "robot-app.service"
#
# systemd: installs, for each listed service, the drop-in
# ${systemd_system_unitdir}/<service>.d/50-fieldpass-gate.conf (from the fieldpass
# package's ${datadir}/fieldpass/50-fieldpass-gate.conf): Requires= and After= on
# fieldpass-gate.service, the verdict in the environment (EnvironmentFile=) and
# ExecCondition= fieldpass-verdict-allows. The service then starts only when the
# verdict is valid or grace, and with FIELDPASS_LIMITED=1 in grace. The drop-in goes
# into the package that holds the service (SYSTEMD_PACKAGES / SYSTEMD_SERVICE), and
# that package RDEPENDS on fieldpass.
#
# sysvinit: nothing holds a later init script back when the gate fails, so the
# service's own script, ${INIT_D_DIR}/<service without .service>, must ask
# /usr/libexec/fieldpass/fieldpass-verdict-allows before it starts (see
# firmware-hooks/sysvinit/examples/robot-app); do_install fails if it does not.

FIELDPASS_GATED_SERVICES ??= ""

DEPENDS += "${@bb.utils.contains('DISTRO_FEATURES', 'systemd', 'fieldpass', '', d)}"

# The drop-in's package is known only once the recipe set SYSTEMD_PACKAGES.
# nooelint: oelint.task.noanonpython
python __anonymous() {
    services = d.getVar('FIELDPASS_GATED_SERVICES').split()
    if not services:
        bb.warn("%s inherits fieldpass_gated but FIELDPASS_GATED_SERVICES is empty: "
                "nothing is gated" % d.getVar('PN'))
    pn = d.getVar('PN')
    packages = (d.getVar('SYSTEMD_PACKAGES') or pn).split()
    for service in services:
        holders = [p for p in packages
                   if service in (d.getVar('SYSTEMD_SERVICE:' + p) or '').split()]
        holder = holders[0] if holders else pn
        d.appendVar('FILES:' + holder,
                    ' ${systemd_system_unitdir}/%s.d/50-fieldpass-gate.conf' % service)
        d.appendVar('RDEPENDS:' + holder, ' fieldpass')
}

fieldpass_gated_systemd[doc] = "Install the gating drop-in of each FIELDPASS_GATED_SERVICES unit"
fieldpass_gated_systemd() {
    for service in ${FIELDPASS_GATED_SERVICES}; do
        install -d ${D}${systemd_system_unitdir}/$service.d
        install -m 0644 ${RECIPE_SYSROOT}${datadir}/fieldpass/50-fieldpass-gate.conf \
            ${D}${systemd_system_unitdir}/$service.d/50-fieldpass-gate.conf
    done
}

fieldpass_gated_sysvinit[doc] = "Check that each gated init script asks fieldpass-verdict-allows"
fieldpass_gated_sysvinit() {
    for service in ${FIELDPASS_GATED_SERVICES}; do
        script=${D}${INIT_D_DIR}/${service%.service}
        if [ ! -f "$script" ]; then
            bbfatal "fieldpass_gated: $service has no init script ${INIT_D_DIR}/${service%.service}"
        fi
        if ! grep -q "fieldpass-verdict-allows" "$script"; then
            bbfatal "fieldpass_gated: ${INIT_D_DIR}/${service%.service} does not ask fieldpass-verdict-allows before it starts (firmware-hooks/sysvinit/examples/robot-app)"
        fi
    done
}

do_install:append() {
    if ${@bb.utils.contains('DISTRO_FEATURES', 'systemd', 'true', 'false', d)}; then
        fieldpass_gated_systemd
    fi
    if ${@bb.utils.contains('DISTRO_FEATURES', 'sysvinit', 'true', 'false', d)}; then
        fieldpass_gated_sysvinit
    fi
}
