"""Simulated devices for the MQTT tests and benchmarks: activations with a device key,
made through HQ's own service on a real home, and the signed messages such a device
publishes (agent/wire/device_msg.py), built as the agent builds them. A real device is a
real ``fieldpass run``; these stand in where a test needs hundreds of them.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent.daemon import topics
from agent.wire import device_msg
from agent.wire.device_key import DeviceKey
from provisioning.models import Actor, Plan
from provisioning.services import HQ, Contact

ACTOR = Actor("test-fleet", "local")
AGENT = "0.2.0"


@dataclass
class SimDevice:
    fingerprint: str
    activation_id: str
    key: DeviceKey
    serial: int

    @property
    def device_id(self) -> str:
        return topics.device_id(self.fingerprint)

    def topic(self, kind: str, prefix: str = topics.DEFAULT_PREFIX) -> str:
        return topics.topic(prefix, self.device_id, kind)

    def _common(self) -> dict[str, object]:
        return {
            "activation_id": self.activation_id,
            "fingerprint": self.fingerprint,
            "at": int(time.time()),
            "agent_version": AGENT,
        }

    def renew(self, serial: int | None = None, due: bool = True, revoked: bool = False) -> bytes:
        return device_msg.sign(
            self.key,
            "renew",
            {
                **self._common(),
                "challenge": None,
                "serial": self.serial if serial is None else serial,
                "expires_at": 0,
                "due": due,
                "revoked": revoked,
                "ttl_s": None,
                "counter": None,
                "nonce": None,
                "formats": [1, 2],
                "device_key": None,
                "proof": None,
            },
        )

    def status(
        self,
        serial: int,
        revoked: str = "",
        revoked_at: int = 0,
        keyring: list[str] | None = None,
    ) -> bytes:
        """``keyring``: the key ids its image's keyring holds (None: says nothing)."""
        return device_msg.sign(
            self.key,
            "status",
            {
                **self._common(),
                "verdict": "revoked" if revoked else "valid",
                "reason": revoked,
                "serial": serial,
                "expires_at": 0,
                "revoked": revoked,
                "revoked_at": revoked_at,
                "lifted_at": 0,
                "hwm": 0,
                "unrecorded_boots": 0,
                "notes": [],
                "bad_messages": {},
                "challenge": None,
                "device_key": None,
                "proof": None,
                device_msg.KEYRING: keyring,
            },
        )

    def report(self, seq: int, counters: dict[str, int]) -> bytes:
        return device_msg.sign(
            self.key,
            "report",
            {
                **self._common(),
                "seq": seq,
                "counters": counters,
                "challenge": None,
                "device_key": None,
                "proof": None,
            },
        )

    def receipt(self) -> bytes:
        return device_msg.sign(
            self.key,
            "receipt",
            {
                **self._common(),
                "serial": self.serial,
                "returned_at": int(time.time()),
                "reason": "returned",
                "device_key": None,
                "proof": None,
            },
        )


def industrial(home: Path) -> HQ:
    """HQ on ``home`` (its engine configured already) with a signing key and the plan
    ``industrial`` (1,000 seats): what the in-process push and bridge tests enroll on."""
    hq = HQ(home)
    now = int(time.time())
    hq.generate_key(now, ACTOR)
    hq.create_plan(Plan("industrial", "robot-os", 365 * 86400, 86400, 1000, None, now), ACTOR)
    return hq


def enroll(hq: HQ, license_key: str, n: int, now: int | None = None) -> list[SimDevice]:
    """``n`` activations of ``license_key``, each with its own device key (an agent
    after 0.1.0, reading claims format 2)."""
    now = int(time.time()) if now is None else now
    devices = []
    for _ in range(n):
        fingerprint = os.urandom(32).hex()
        key = DeviceKey.generate()
        contact = Contact(
            channel="mqtt", agent_version=AGENT, claims_format=2, device_key=key.public_key
        )
        issued = hq.activate(license_key, fingerprint, now, ACTOR, contact)
        devices.append(SimDevice(fingerprint, issued.activation.id, key, issued.claims.serial))
    return devices
