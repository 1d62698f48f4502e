"""Fieldpass HQ: signing keys, plans, licenses, seats and activations; issues machine files.

Laid out by concern, each in one place:

- ``storage/``: the database behind one interface (``Store``, ``Tx``), the schema's
  migrations, one module per engine (``sqlite``, ``postgres``); all SQL is there;
- ``services/``: the licensing rules, by what they manage (keys, licenses and plans,
  issuing, sites, tokens, audit), composed by ``services.HQ``; they take ``now`` from
  their caller;
- ``cli/``: ``fieldpass-hq``, one module per command group; ``server/``: the HTTP API;
  ``field/``: the technician's laptop; ``mqtt/``: the MQTT renewal channel;
- ``documents`` (the JSON shapes of the CLI and the API), ``models``, ``errors``,
  ``keystore`` (private signing seeds on disk), ``config`` (which database),
  ``backup`` (the backup file), ``units``.

Only the front ends (``cli``, ``server``, the laptop's server, the MQTT bridge) own the
clock and the I/O. The wire format is imported from ``agent.wire``, never reimplemented
here. Nothing in this package may log or print a license key except the one command
that creates it.
"""

__version__ = "0.1.0"
