"""Transport options against a real mosquitto: TLS with the config's CA, a list of
brokers tried in turn, the single-instance lock, and the client-side payload bound."""

import subprocess
from collections.abc import Callable
from pathlib import Path

from agent.daemon import transport
from agent.daemon.mqtt import MqttTransport
from agent.device import Device
from tests.conftest import DeviceRoot, Signer
from tests.mqtt.conftest import Broker, Daemon, free_port, mqtt_config


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _pki(where: Path) -> None:
    where.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "2", "-subj", "/CN=fieldpass test CA", cwd=where)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
             "server.csr", "-subj", "/CN=127.0.0.1", cwd=where)  # fmt: skip
    (where / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf",
             cwd=where)  # fmt: skip
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out",
             "other.pem", "-days", "2", "-subj", "/CN=someone else", cwd=where)  # fmt: skip


def test_tls_with_the_configured_ca_and_refused_with_another(
    make_device: Callable[..., DeviceRoot], signer: Signer, broker: Broker, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    _pki(pki)
    tls_port = free_port()
    broker.configure(
        "allow_anonymous true\n"
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {pki}/ca.pem\ncertfile {pki}/server.pem\nkeyfile {pki}/server.key\n"
    )
    broker.restart()
    device = make_device()
    signer.provision(device)
    (device.path / "etc/fieldpass/ca.pem").write_bytes((pki / "ca.pem").read_bytes())
    (device.path / "etc/fieldpass/other.pem").write_bytes((pki / "other.pem").read_bytes())
    config = mqtt_config(broker, 'ca_file = "/etc/fieldpass/ca.pem"')
    device.write_config(config.replace(broker.url, f"mqtts://127.0.0.1:{tls_port}"))
    result = device.run("run", "--once", timeout=30)
    assert result.returncode == 0, result.stderr
    device.write_config(
        config.replace(broker.url, f"mqtts://127.0.0.1:{tls_port}").replace("ca.pem", "other.pem")
    )
    assert device.run("run", "--once", timeout=30).returncode == 69


def test_brokers_are_tried_in_turn(
    make_device: Callable[..., DeviceRoot],
    signer: Signer,
    broker: Broker,
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    device = make_device()
    signer.provision(device)
    dead = f"mqtt://127.0.0.1:{free_port()}"
    both = f'["{dead}", "{broker.url}"]'
    device.write_config(mqtt_config(broker).replace(f'["{broker.url}"]', both))
    daemon = daemons(device)
    daemon.start()
    daemon.wait_log(f"connected ({broker.url})")
    # a second daemon on the same state directory refuses to run
    second = device.run("run", timeout=30)
    assert second.returncode == 75 and "another fieldpass daemon" in second.stderr
    assert daemon.stop() == 0


class _Message:
    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic = topic
        self.payload = payload


def test_client_side_bound_drops_oversized_payloads_before_queueing(
    device: DeviceRoot, signer: Signer, broker: Broker
) -> None:
    signer.provision(device)
    device.write_config(mqtt_config(broker, "max_payload_bytes = 2048"))
    events: transport.EventQueue = __import__("queue").SimpleQueue()
    t = MqttTransport(device.config(), Device(device.config()), events)
    file_topic = next(iter(t.inbound))
    t._on_message(None, 1, _Message(file_topic, b"x" * 2049))  # type: ignore[arg-type]
    t._on_message(None, 1, _Message(file_topic, b"x" * 2048))  # type: ignore[arg-type]
    t._on_message(None, 1, _Message("fieldpass/v1/dev/dother/x", b"x"))  # type: ignore[arg-type]
    t._on_message(None, 1, _Message(file_topic, b""))  # type: ignore[arg-type]
    got = [events.get_nowait() for _ in range(events.qsize())]
    assert [(k, p if k == "bad" else len(p[0])) for k, _, p in got] == [  # type: ignore[index]
        ("bad", "oversized"),
        ("file", 2048),
        ("bad", "unexpected_topic"),
    ]
