"""HQ's side of the MQTT renewal channel (docs/mqtt.md).

- ``credentials``: HQ's MQTT secret and the per-device broker passwords derived from it;
- ``connection``: one paho client for HQ (TLS, username/password, MQTT 5);
- ``bridge``: answers renewal requests (a fresh file, or a signed revocation);
- ``push``: renews a chosen set of devices and counts their confirmations;
- ``brokerconf``: mosquitto password and ACL files, one device per user.

Their commands, ``fieldpass-hq bridge|push|broker-config``, are in ``cli/mqtt.py``.

Topic names and the device id come from ``agent.daemon.topics`` (the device's own
definition); machine files and revocations from ``services.HQ``. Never logs a license
key, a fingerprint or a password.
"""
