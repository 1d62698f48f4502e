"""Fieldpass HQ: signing keys, plans, licenses, seats and activations; issues machine files.

Layers, each with one job: ``store`` (all SQL, schema migrations, the locking mode),
``service`` (the licensing rules: seats, status, TTLs, serials; takes ``now`` from its
caller), ``keystore`` (private signing seeds on disk), and the two front ends that own
the clock and the I/O: ``cli`` (``fieldpass-hq``) and ``server`` (the HTTP API).

The wire format is imported from ``agent.wire``, never reimplemented here. Nothing in
this package may log or print a license key except the one command that creates it.
"""

__version__ = "0.1.0"
