SUMMARY = "Fieldpass HQ public keyring for the boot gate"
DESCRIPTION = "The public keys of the vendor's HQ that machine files must be signed \
               with, installed as /etc/fieldpass/keyring. Public data only: the \
               signing key never enters a build."
HOMEPAGE = "https://fieldpass.invalid/"
BUGTRACKER = "https://fieldpass.invalid/issues"
SECTION = "console/utils"
LICENSE = "Apache-2.0"
# The keyring is the vendor's public data; it comes with no license file of its own.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# Where the keyring comes from (layer README, "The keyring"):
# - FIELDPASS_KEYRING: path, on the build host, of the keyring exported at HQ with
#   `fieldpass-hq keys export -o FILE` (local.conf or the distro configuration), or
# - FIELDPASS_KEYRING_URI in a bbappend of this recipe, e.g. "file://acme-hq.keyring"
#   beside it (FILESEXTRAPATHS), or a vendor recipe that RPROVIDES
#   virtual-fieldpass-keyring (PREFERRED_RPROVIDER_virtual-fieldpass-keyring).
# With neither, the recipe is skipped with that message (caught at parse time, before
# anything builds). "file://example.keyring" is the layer's example: it builds, with a
# warning, and no machine file ever verifies against it.
FIELDPASS_KEYRING ??= ""
FIELDPASS_KEYRING_URI ??= "${@'file://' + d.getVar('FIELDPASS_KEYRING') if d.getVar('FIELDPASS_KEYRING') else ''}"

SRC_URI = "${FIELDPASS_KEYRING_URI};subdir=${BP}"
# Where do_unpack put it: file:// paths, absolute ones included, are kept below ${S}.
FIELDPASS_KEYRING_PATH = "${@d.getVar('FIELDPASS_KEYRING_URI').split(';')[0][len('file://'):].lstrip('/')}"
CVE_PRODUCT = "fieldpass"

# The keyring differs per product, not per CPU.
PACKAGE_ARCH = "${MACHINE_ARCH}"
INHIBIT_DEFAULT_DEPS = "1"
RPROVIDES:${PN} = "virtual-fieldpass-keyring"

# A missing keyring skips the recipe at parse time, before anything builds.
# nooelint: oelint.task.noanonpython
python __anonymous() {
    keyring = d.getVar('FIELDPASS_KEYRING')
    uri = d.getVar('FIELDPASS_KEYRING_URI')
    if not uri:
        raise bb.parse.SkipRecipe(
            "FIELDPASS_KEYRING is not set: point it at the public keyring exported at HQ "
            "(fieldpass-hq keys export -o FILE) in local.conf or the distro configuration, "
            "or set FIELDPASS_KEYRING_URI in a bbappend of fieldpass-keyring")
    if keyring and not os.path.isfile(keyring):
        raise bb.parse.SkipRecipe("FIELDPASS_KEYRING=%s is not a file" % keyring)
    if os.path.basename(d.getVar('FIELDPASS_KEYRING_PATH')) == 'example.keyring':
        bb.warn("fieldpass-keyring: installing the EXAMPLE keyring: no machine file will "
                "verify and gated applications will never start; set FIELDPASS_KEYRING to "
                "the keyring exported at your HQ")
}

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${sysconfdir}/fieldpass
    install -m 0644 ${S}/${FIELDPASS_KEYRING_PATH} ${D}${sysconfdir}/fieldpass/keyring
}

CONFFILES:${PN} = "${sysconfdir}/fieldpass/keyring"
