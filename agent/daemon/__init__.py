"""The long-running device agent (``fieldpass run``): renews over MQTT or HTTP.

- ``machine``: the state machine (one transition table) and its event loop;
- ``transport``: the small interface both transports implement, and the events they post;
- ``mqtt`` / ``http``: the two transports (paho-mqtt v2 API, MQTT 5; the HTTP device API);
- ``topics``: the derived device id and the topic names (HQ imports these);
- ``messages``: the device's own messages (renewal request, status telemetry);
- ``notify``: systemd readiness and watchdog (a datagram, no extra package);
- ``resume``: the persisted resume point;
- ``main``: wiring, single-instance lock, exit codes.

Nothing here may weaken the checks of ``fieldpass install``: every machine file goes
through ``Device.install`` and every revocation through ``Device.apply_revocation``.
Imported only by ``fieldpass run`` (and HQ for ``topics``/``messages``), never by the gate.
"""
