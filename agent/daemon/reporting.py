"""What the daemon tells HQ over MQTT of what the equipment did: its signed usage report
and a pending return receipt, sent again until HQ acknowledges them.

- A report (``Device.report``: the next sequence number, saved first) is made only when
  the counters differ from those of the last report HQ acknowledged, and on a tick at
  most once per ``[daemon] report_interval_s`` (a day by default: operating hours change
  at every tick, and HQ keeps every report it accepts); on connect and after a file is
  installed whenever they differ. One HQ has not
  acknowledged yet is sent again as it is (the same bytes and sequence) while the
  counters stay the same, and replaced by a new one once they changed.
- A return receipt (``fieldpass return`` keeps it as ``return.receipt``) is sent until HQ
  acknowledges it; then the file goes (``Device.receipt_delivered``).
- HQ's acknowledgement (``topics.ACK``) is HQ's signed status as it is (wire/
  signed_time.py), bound to ``topics.ack_nonce`` of the payload it acknowledges: it is
  verified (``verify_ack``, as sync.py verifies HQ's HTTP answer to a receipt) against
  the image's keyring, this device's fingerprint and activation, and the nonce of
  something this daemon sent, and it must name the license of the last file the daemon
  saw, before anything is done.

Never acts on an unsigned or unverified acknowledgement, never removes a receipt but for
a verified acknowledgement of that very receipt, and never records the acknowledgement's
status or time in the state (the gate's clock is re-anchored only by the answers it
asked for). What was acknowledged is kept in memory only: a restarted daemon sends its
report once more, which HQ refuses as a replay and acknowledges again.
"""

import logging

from .. import clock
from ..config import ConfigError
from ..device import Device, InstallRefused
from ..identity import IdentityError
from ..state import StateError
from ..usage import counters as usage_counters
from ..wire.errors import WireError
from ..wire.signed_time import verify_ack
from . import topics

log = logging.getLogger("fieldpass.daemon")
KEEP_UNACKED = 4  # reports sent and not acknowledged that an acknowledgement may name

Counters = dict[str, int]


class AckRefused(Exception):
    """An acknowledgement the daemon will not act on; ``reason`` is a counter's name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Reporter:
    def __init__(self, device: Device, interval_s: int = 86400) -> None:
        self.device = device
        self.interval_s = interval_s
        self.made_at: int | None = None  # when this daemon last made a new report
        self.license_id = ""  # the license of the last machine file seen (set by the machine)
        self.latest: bytes | None = None  # the newest report made, not acknowledged
        self.unacked: dict[str, Counters] = {}  # nonce -> counters of reports sent
        self.acked: Counters | None = None  # counters of the last report HQ acknowledged
        self.receipt_nonce: str | None = None

    def due(self, *, tick: bool = False) -> list[tuple[str, bytes]]:
        """What to publish now: ``(topics.REPORT or RECEIPT, payload)``; on a ``tick``, a
        new report only once ``interval_s`` has passed since the last one made."""
        out: list[tuple[str, bytes]] = []
        report = self._report(tick)
        if report is not None:
            out.append((topics.REPORT, report))
        receipt = self.device.pending_receipt()
        if receipt is not None:
            self.receipt_nonce = topics.ack_nonce(receipt)
            out.append((topics.RECEIPT, receipt))
        return out

    def _report(self, tick: bool) -> bytes | None:
        now = clock.now()
        try:
            with self.device.writer_lock():
                st = self.device.load_state()
                if st is None or not st.activation_id:
                    return None
                values = usage_counters(st)
                if values == self.acked:
                    return None
                latest = self.latest
                if latest is not None and self.unacked.get(topics.ack_nonce(latest)) == values:
                    return latest
                if tick and self.made_at is not None and now - self.made_at < self.interval_s:
                    return latest  # the one not acknowledged yet, if any, again
                payload = self.device.report(now)
                self.made_at = now
        except (InstallRefused, StateError, ConfigError, IdentityError, OSError) as e:
            log.debug("no usage report: %s", e)
            return None
        self.latest = payload
        self.unacked[topics.ack_nonce(payload)] = values
        while len(self.unacked) > KEEP_UNACKED:
            del self.unacked[next(iter(self.unacked))]
        return payload

    def _receipt_acknowledged(self, data: bytes) -> bool:
        """True once ``data`` is HQ's acknowledgement of the receipt sent (then the file
        goes): verified against the receipt itself (its digest, the activation it names),
        not the license of a machine file, which a returned device (its daemon restarted
        since the return) no longer has."""
        receipt = self.device.pending_receipt() if self.receipt_nonce else None
        if receipt is None or topics.ack_nonce(receipt) != self.receipt_nonce:
            return False
        try:
            signed = self.device.verify_receipt_ack(receipt, data)
        except (WireError, ConfigError, IdentityError):
            return False
        self.receipt_nonce = None
        self.device.receipt_delivered()
        log.info("HQ holds the return receipt (the activation is %s)", signed.status)
        return True

    def acknowledged(self, data: bytes) -> str:
        """Act on HQ's acknowledgement: "report" or "receipt" (what it acknowledged), or
        AckRefused (unsigned, for another device, or for nothing this daemon sent)."""
        if self._receipt_acknowledged(data):
            return "receipt"
        try:
            st = self.device.load_state()
        except StateError:
            raise AckRefused("ack_state_refused") from None
        if st is None or not st.activation_id or not self.license_id:
            raise AckRefused("ack_unexpected")
        for nonce in list(self.unacked):
            try:
                signed = verify_ack(
                    data,
                    self.device.keyring(),
                    self.device.identity.fingerprint,
                    nonce,
                    activation_id=st.activation_id,
                )
            except (WireError, ConfigError):
                continue
            if signed.license_id != self.license_id:
                continue
            while self.unacked:  # this one, and the older ones HQ holds a newer of
                older, values = next(iter(self.unacked.items()))
                del self.unacked[older]
                if older == nonce:
                    break
            self.acked = values
            if self.latest is not None and topics.ack_nonce(self.latest) == nonce:
                self.latest = None
            log.debug("HQ acknowledged the usage report")
            return "report"
        raise AckRefused("ack_unmatched")
