"""The HTTP transport: the device API of HQ (or a technician's laptop), behind the same
interface as MQTT, for a device with HTTP but no broker.

HTTP has no connection to hold: ``connect`` succeeds at once, and a failed request is
the "disconnect" that sends the machine to BACKOFF. ``ask`` asks HQ's signed status
(``sync.validate``, which records a revocation in the device state) and, when the file
is due, fetches a fresh one (POST /v1/machine-file) and posts it as a FILE event: it is
installed by the machine like a file that came over MQTT. Requests run on the daemon's
thread with the configured timeout; they are signed with the device key (asks.py), and
the license key never travels.
"""

import logging
import time

from .. import online, sync
from ..device import Device
from .transport import CONNECTED, DISCONNECTED, FILE, STATUS, EventQueue

log = logging.getLogger("fieldpass.daemon")


class HttpTransport:
    name = "http"

    def __init__(self, device: Device, events: EventQueue) -> None:
        self.device = device
        self.servers = online.hqs(device.cfg)
        self.events = events
        self.generation = 0

    def describe(self) -> str:
        return ", ".join(hq.server for hq in self.servers)

    def connect(self) -> int:
        self.generation += 1
        self.events.put((CONNECTED, self.generation, None))
        return self.generation

    def disconnect(self) -> None:
        self.generation += 1

    def ask(self, due: bool) -> None:
        gen = self.generation
        t = int(time.time())
        try:
            notes = sync.validate(self.device, self.servers, t)
            for note in notes:
                log.info("%s", note)
            self.events.put((STATUS, gen, None))
            if not due and not self.device_holds_revocation():
                return
            data, _, nonce = sync.first_answer(
                self.servers, lambda hq: sync.renewal(self.device, hq, t, due=due)
            )
        except online.Refused as e:
            log.info("HQ refused the renewal: %s (%s)", e, e.code)
            return
        except (online.OnlineError, OSError) as e:
            log.info("HQ unreachable: %s", e)
            self.events.put((DISCONNECTED, gen, None))
            return
        self.events.put((FILE, gen, (data, nonce)))

    def device_holds_revocation(self) -> bool:
        """A device that holds a revocation asks for a file anyway: a reinstated
        license is lifted by the newer file HQ answers with."""
        from ..asks import Standing

        return Standing(self.device).revoked

    def publish_status(self, payload: bytes) -> None:
        """Post the device's signed status to the first server that takes it, signed
        over that server's challenge (``sync.send_status``; ``payload``, signed without
        one, is for MQTT): HQ records the contact, a technician's laptop the install it
        confirms. Best effort: a failure is a note in the log."""
        t = int(time.time())
        for note in sync.send_status(self.device, self.servers, t, sync.held(self.device, t)):
            log.info("%s", note)
