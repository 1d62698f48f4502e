"""Fieldpass device agent: verifies machine files offline and gates the boot.

Everything under ``agent`` runs on the device. It must never import ``provisioning``
(the HQ side), and the boot-gate path (``agent.main`` -> ``agent.gate``) must not import
click or paho.
"""

__version__ = "0.1.0"
