"""A throwaway PKI made with the `openssl` CLI for tests of HQ over TLS on 127.0.0.1: a
CA, HQ's certificate for IP 127.0.0.1 signed by it, and a second CA that signed nothing.
The keys live in the test's temporary folder only."""

import subprocess
from pathlib import Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=120)


def make_pki(d: Path) -> Path:
    """In ``d``: ca.pem signed hq.pem (key hq.key); other-ca.pem signed nothing."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    for name in ("ca", "other-ca"):
        openssl(
            "req", "-x509", *ec, "-days", "2", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-subj", f"/CN=Fieldpass test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=d,
        )  # fmt: skip
    openssl("req", *ec, "-keyout", "hq.key", "-out", "hq.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "hq.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    openssl(
        "x509", "-req", "-in", "hq.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "hq.ext", "-out", "hq.pem",
        cwd=d,
    )  # fmt: skip
    return d
