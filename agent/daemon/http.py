"""The HTTP transport: the device API of HQ (or a technician's laptop), behind the same
interface as MQTT, for a device with HTTP but no broker.

HTTP has no connection to hold, so ``connect`` asks: it requests HQ's signed status
(``sync.validate``, which records a revocation in the device state) from each server in
turn, and the connection is up only if one of them answered. An answer is a signed
status, a refusal, or a server error: a technician's laptop (``fieldpass-hq field
serve``) answers /v1/validate with 503 because it cannot sign HQ's time, yet it may
carry a renewal. Nobody answering (the network, a timeout, garbage) is the
"disconnect" that sends the machine to BACKOFF, so a device whose servers all fail
backs off (and ``run --once`` gives up) instead of "connecting" again at once.

``ask`` fetches a fresh machine file (POST /v1/machine-file) when the file is due, a
revocation is held, or the servers could only answer with a server error (the laptop),
and posts it as a FILE event: it is installed by the machine like a file that came over
MQTT. Requests run on the daemon's thread with the configured timeout; they are signed
with the device key (asks.py), and the license key never travels.
"""

import logging

from .. import clock, fsio, online, sync
from ..device import Device, InstallRefused
from ..state import StateError
from .transport import CONNECTED, DISCONNECTED, FILE, STATUS, EventQueue

log = logging.getLogger("fieldpass.daemon")


class HttpTransport:
    name = "http"
    carries_usage = False  # connect sends the report and receipt (sync.send_report)

    def __init__(self, device: Device, events: EventQueue) -> None:
        self.device = device
        self.servers = online.hqs(device.cfg)
        self.events = events
        self.generation = 0
        self.cannot_validate = False  # the servers answered, but only with server errors

    def describe(self) -> str:
        return ", ".join(hq.server for hq in self.servers)

    def connect(self) -> int:
        self.generation += 1
        gen = self.generation
        answered = validated = False
        for hq in self.servers:
            try:
                notes = sync.validate(self.device, [hq], clock.now())
            except online.ServerError as e:
                log.info("%s: cannot validate there; a renewal is asked for instead", e)
                answered = True
                continue
            except (StateError, InstallRefused) as e:
                log.warning("HQ's answer from %s could not be recorded: %s", hq.server, e)
                answered = validated = True
                break
            except (online.OnlineError, OSError) as e:
                log.info("%s", e if isinstance(e, online.OnlineError) else fsio.describe(e))
                continue
            for note in notes + sync.send_report(self.device, [hq], clock.now()):
                log.info("%s", note)
            answered = validated = True
            break
        if not answered:
            self.events.put((DISCONNECTED, gen, None))
            return gen
        self.cannot_validate = not validated
        if validated:
            self.events.put((STATUS, gen, None))
        self.events.put((CONNECTED, gen, None))
        return gen

    def disconnect(self) -> None:
        self.generation += 1

    def ask(self, due: bool) -> None:
        gen = self.generation
        if not (due or self.cannot_validate or self.device_holds_revocation()):
            return  # HQ's signed status was recorded on connect: nothing more to ask
        t = clock.now()
        try:
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

    def publish_usage(self, kind: str, payload: bytes) -> None:
        """Not used: HTTP answers each report and receipt as it is sent on connect."""

    def publish_status(self, payload: bytes) -> None:
        """Post the device's signed status to the first server that takes it, signed
        over that server's challenge (``sync.send_status``; ``payload``, signed without
        one, is for MQTT): HQ records the contact, a technician's laptop the install it
        confirms. Best effort: a failure is a note in the log."""
        for note in sync.send_status(self.device, self.servers, clock.now()):
            log.info("%s", note)
