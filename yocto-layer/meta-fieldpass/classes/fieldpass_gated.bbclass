# fieldpass_gated: gate this recipe's systemd services on the Fieldpass verdict.
#
#   inherit fieldpass_gated
#   FIELDPASS_GATED_SERVICES = "robot-app.service"
#
# installs, for each listed service, the drop-in
# ${systemd_system_unitdir}/<service>.d/50-fieldpass-gate.conf (from the fieldpass
# package's ${datadir}/fieldpass/50-fieldpass-gate.conf): Requires= and After= on
# fieldpass-gate.service, the verdict in the environment (EnvironmentFile=) and
# ExecCondition= fieldpass-verdict-allows. The service then starts only when the
# verdict is valid or grace, and with FIELDPASS_LIMITED=1 in grace.

FIELDPASS_GATED_SERVICES ??= ""

DEPENDS += "fieldpass"

do_install:append() {
    for service in ${FIELDPASS_GATED_SERVICES}; do
        install -d ${D}${systemd_system_unitdir}/$service.d
        install -m 0644 ${RECIPE_SYSROOT}${datadir}/fieldpass/50-fieldpass-gate.conf \
            ${D}${systemd_system_unitdir}/$service.d/50-fieldpass-gate.conf
    done
}

FILES:${PN} += "${systemd_system_unitdir}/*.service.d/50-fieldpass-gate.conf"
RDEPENDS:${PN} += "fieldpass"
