"""``fieldpass-hq serve`` started wrong, as the real command: each mistake is one line on
stderr with the exit code docs/hq.md gives it (a bad certificate or key 65, a port in use
69, an address that is not this machine's or does not resolve 2), before uvicorn runs,
so never its log, its exit 3, or "internal error" (70). And a good certificate serves
HTTPS."""

import socket
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from .server import FIELDPASS_HQ, free_port, prepare_home, start_server


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1 and its key, a second key, an encrypted
    key, and files that are not PEM at all."""
    d = tmp_path_factory.mktemp("pki")
    openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", "hq.key", "-out", "hq.pem", "-days", "2", "-subj", "/CN=127.0.0.1"),
        *("-addext", "subjectAltName=IP:127.0.0.1"),
        cwd=d,
    )
    ec = ("-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
    openssl("genpkey", *ec, "-out", "other.key", cwd=d)
    encrypt = ("-aes256", "-passout", "pass:x")
    openssl("pkey", "-in", "hq.key", *encrypt, "-out", "encrypted.key", cwd=d)
    (d / "bad.pem").write_text("this is not a certificate\n")
    (d / "empty.pem").write_bytes(b"")
    return d


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "hq"
    prepare_home(path)
    return path


def serve(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``serve`` that must fail at once (a server that starts is killed at the timeout)."""
    return subprocess.run(
        [FIELDPASS_HQ, "--home", str(home), "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line(res: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fieldpass-hq: error: "), res.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr
    assert "INFO" not in res.stderr + res.stdout  # uvicorn never started


@pytest.mark.parametrize(
    ("cert", "key", "words"),
    [
        ("bad.pem", "bad.pem", ["bad.pem", "not a PEM certificate"]),
        ("empty.pem", "hq.key", ["empty.pem", "not a PEM certificate"]),
        ("hq.pem", "bad.pem", ["not a PEM certificate"]),
        ("hq.pem", "other.key", ["other.key", "not a PEM certificate and its private key"]),
        ("hq.key", "hq.key", ["not a PEM certificate"]),
        ("hq.pem", "encrypted.key", ["encrypted.key", "is encrypted"]),
    ],
    ids=["not-pem", "empty-cert", "key-not-pem", "key-of-another", "key-as-cert", "encrypted"],
)
def test_a_bad_certificate_or_key_is_one_sentence_and_65(
    home: Path, pki: Path, cert: str, key: str, words: list[str]
) -> None:
    port = str(free_port())
    res = serve(home, "--port", port, "--tls-cert", str(pki / cert), "--tls-key", str(pki / key))
    assert_one_line(res, 65, *words)


def test_a_port_in_use_is_one_sentence_and_69(home: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        res = serve(home, "--host", "127.0.0.1", "--port", port)
    assert_one_line(res, 69, f"port {port}", "in use")


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("192.0.2.1", ["192.0.2.1", "not an address of this machine"]),  # TEST-NET-1
        ("999.1.1.1", ["999.1.1.1", "neither an IP address nor a name"]),
        ("no-such-host.invalid", ["no-such-host.invalid", "neither an IP address"]),
    ],
    ids=["not-local", "not-an-address", "unresolvable"],
)
def test_a_bad_host_is_one_sentence_and_2(home: Path, host: str, words: list[str]) -> None:
    res = serve(home, "--host", host, "--port", str(free_port()))
    assert_one_line(res, 2, *words)


def test_a_good_certificate_serves_https(home: Path, pki: Path) -> None:
    context = ssl.create_default_context(cafile=str(pki / "hq.pem"))
    tls = ("--tls-cert", str(pki / "hq.pem"), "--tls-key", str(pki / "hq.key"))
    server = start_server(home, *tls, tls=context)
    try:
        assert server.url.startswith("https://")
        res = httpx.get(server.url + "/healthz", verify=context, timeout=10)
        assert res.status_code == 200 and res.json()["status"] == "ok"
    finally:
        server.stop()
    assert "Uvicorn running on https://127.0.0.1:" in server.log.read_text()
