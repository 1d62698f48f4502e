"""The technician's laptop: field bundles exported at HQ, served on site, reported back.

- ``bundle``: ``fieldpass-hq field export`` (at HQ) renews the chosen devices and writes
  a bundle: their fresh machine files (signed and device-encrypted, so the bundle holds
  no secret) and signed revocations, nothing that could activate a new seat.
- ``server``: ``fieldpass-hq field serve BUNDLE`` (on the laptop) answers the devices'
  existing HTTP path (``POST /v1/machine-file``) from the bundle, takes their signed
  status (``POST /v1/status``: what confirms a pickup), collects their signed usage
  reports and return receipts for HQ (``POST /v1/report``, ``/v1/receipt``), and
  optionally offers the bundle
  on an MQTT broker. A device needs no change beyond the laptop's URL in its
  ``[online] servers``. It cannot activate, deactivate or validate: those answer with an
  error the device falls back from.
- ``listener``: the laptop's HTTP/1.1 listener, every client bounded in size and time.
- ``report``: what the laptop saw, written when it stops; ``fieldpass-hq field import
  REPORT`` (back at HQ) checks it, verifies the devices' statuses and records the
  pickups in the audit log, once per report, and hands the reports and receipts to HQ's
  usage service.
- ``fields``: the checks every field of a bundle and a report passes.

The commands are in ``cli/field.py``; nothing here reads options or prints.
"""
