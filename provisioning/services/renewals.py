"""The MQTT bridges' renewals: at most one new file per device per interval, whichever
replica answers, and the last one kept to publish again.

``answer`` takes a batch of renewal requests (each already verified: its activation,
what the device says it holds, what it said of itself) and answers all of them in one
write transaction. For each, in that transaction: the license locked, the check-and-set
of the bridges' last answer (``Tx.claim_bridge_answer``: one guarded statement, so of
two replicas asking at once one wins), the next serial, the audit event and the sealed
file, committed together. Within the interval a request gets the file already issued
again (when the device says it holds an older serial) or nothing. A request whose
license can get no file, or whose device gave its license back (``ActivationReturned``),
is answered ``refused`` and audited ``mqtt_refused``.

If the batch's transaction fails, each request is answered in a transaction of its own,
so that one request cannot sink the others. Nothing here reads the clock, publishes or
logs.
"""

from dataclasses import dataclass

from ..errors import ChallengeInvalid, HQError, InvalidRequest
from ..models import Activation, Actor
from ..storage import Store, Tx
from .audit import event
from .issuing import Contact, Issuing, returned
from .licenses import check_usable

CHALLENGE_TTL_S = 300


@dataclass(frozen=True)
class RenewalRequest:
    """A verified renewal request: the activation, the serial the device says it
    holds, what it said of itself, the TTL it asks (None: the plan's) and the server
    challenge it was signed over (None over MQTT)."""

    activation_id: str
    serial: int
    contact: Contact
    ttl_s: int | None = None
    challenge: str | None = None


ISSUED, AGAIN, RATE_LIMITED, REFUSED, GONE = "issued", "again", "rate_limited", "refused", "gone"


@dataclass(frozen=True)
class Answer:
    """``kind``: issued (a new file), again (the file issued within the interval),
    rate_limited (nothing: the device holds it already), refused (``error``), gone (the
    activation is not live)."""

    kind: str
    activation: Activation | None = None
    machine_file: bytes | None = None
    serial: int = 0
    error: HQError | None = None


class Renewals:
    def __init__(self, store: Store, issuing: Issuing) -> None:
        self.store = store
        self.issuing = issuing

    def answer(
        self, requests: list[RenewalRequest], now: int, actor: Actor, min_interval_s: int
    ) -> list[Answer]:
        """One answer per request, in their order."""
        if not requests:
            return []
        try:
            with self.store.write() as tx:
                return self._batch(tx, requests, now, actor, min_interval_s)
        except HQError:
            if len(requests) == 1:
                raise
        out = []
        for request in requests:  # one at a time: one bad request cannot sink the others
            try:
                out += self.answer([request], now, actor, min_interval_s)
            except HQError as e:
                out.append(Answer(REFUSED, error=e))
        return out

    def _batch(
        self, tx: Tx, requests: list[RenewalRequest], now: int, actor: Actor, interval_s: int
    ) -> list[Answer]:
        acts = {r.activation_id: tx.get_activation(r.activation_id) for r in requests}
        # Licenses locked in one order by every replica: no two batches deadlock.
        order = sorted(
            range(len(requests)),
            key=lambda i: ((a := acts[requests[i].activation_id]) and a.license_id) or "",
        )
        answers: dict[int, Answer] = {}
        issuers = {}
        for i in order:
            request = requests[i]
            act = acts[request.activation_id]
            if act is None or act.deactivated_at is not None:
                answers[i] = Answer(GONE, act)
                continue
            lic = tx.get_license(act.license_id)
            assert lic is not None
            try:
                check_usable(lic, now)
                refusal = returned(act, now)  # the device gave its license back
                if refusal is not None:
                    raise refusal
            except HQError as e:
                tx.append_audit(event(now, actor, "mqtt_refused", lic.id, act.id, e.code))
                answers[i] = Answer(REFUSED, act, error=e)
                continue
            if request.ttl_s is not None and request.ttl_s <= 0:
                answers[i] = Answer(REFUSED, act, error=InvalidRequest("a TTL is positive"))
                continue
            if request.challenge is not None and not tx.use_challenge(
                request.challenge, now, now - CHALLENGE_TTL_S
            ):
                answers[i] = Answer(REFUSED, act, error=ChallengeInvalid("challenge refused"))
                continue
            if lic.id not in issuers:
                tx.lock_license(lic.id)
                issuers[lic.id] = self.issuing.issuer(tx, lic)
            last = tx.bridge_answer(act.id)
            if not tx.claim_bridge_answer(act.id, now, interval_s):
                if last is not None and last.serial > request.serial and last.machine_file:
                    answers[i] = Answer(AGAIN, act, last.machine_file, last.serial)
                else:
                    answers[i] = Answer(RATE_LIMITED, act)
                continue
            act = self.issuing.take_contact(tx, act, request.contact, now)
            binding = request.contact.binding
            rec = issuers[lic.id].issue(tx, act, request.ttl_s, now, new=False, binding=binding)
            serial = rec.claims.serial
            tx.append_audit(event(now, actor, "renew", lic.id, act.id, f"serial={serial}"))
            machine_file = rec.seal().machine_file
            tx.store_bridge_file(act.id, serial, machine_file)
            acts[act.id] = rec.activation
            answers[i] = Answer(ISSUED, rec.activation, machine_file, serial)
        return [answers[i] for i in range(len(requests))]
