# The Fieldpass source is the repository this layer is part of (yocto-layer/meta-fieldpass
# inside it): resolve the recipe's file:// entries against that checkout. A vendor who
# builds from another copy of the source replaces this with a bbappend of their own.
FILESEXTRAPATHS:prepend := "${THISDIR}/../../../..:"
