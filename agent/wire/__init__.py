"""The Fieldpass wire format: one implementation, used by the device and by HQ.

Modules: ``cbor`` (strict canonical CBOR subset), ``sodium`` (the crypto primitives),
``armor`` (the copy-and-paste text form), ``keyring`` (trusted public keys),
``machine_file`` (the signed, device-encrypted machine file), ``errors``.

Nothing here reads a clock, a file or the network: bytes in, objects or errors out.
"""
