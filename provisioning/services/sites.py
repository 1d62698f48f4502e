"""Sites: where devices stand (a label on a live activation, one site at a time), so
that a technician's bundle can be made for "the robots at site 7".

Assigning again moves a device; every assignment and removal is audited. A site is a label only:
it grants nothing and holds no secret.
"""

from ..errors import ActivationNotFound
from ..models import Activation, Actor
from ..storage import Store
from .audit import event
from .names import check_name


class Sites:
    def __init__(self, store: Store) -> None:
        self.store = store

    def assign_site(
        self,
        site: str,
        activation_ids: list[str],
        fingerprints: set[str],
        now: int,
        actor: Actor,
    ) -> list[Activation]:
        """Put live activations (by id, or by device fingerprint) at ``site``."""
        check_name("a site name", site)
        with self.store.write() as tx:
            chosen: dict[str, Activation] = {}
            for act_id in activation_ids:
                act = tx.get_activation(act_id)
                if act is None or act.deactivated_at is not None:
                    raise ActivationNotFound(f"no live activation {act_id}")
                chosen[act.id] = act
            if fingerprints:
                found = {
                    a.fingerprint: a
                    for a in tx.list_activations()
                    if a.deactivated_at is None and a.fingerprint in fingerprints
                }
                missing = sorted(fingerprints - set(found))
                if missing:
                    raise ActivationNotFound(
                        f"{len(missing)} fingerprint(s) have no live activation, "
                        f"the first {missing[0][:12]}..."
                    )
                chosen.update({a.id: a for a in found.values()})
            for act in chosen.values():
                tx.assign_site(act.id, site, now)
                tx.append_audit(event(now, actor, "site_assign", act.license_id, act.id, site))
            return list(chosen.values())

    def remove_from_site(self, activation_id: str, now: int, actor: Actor) -> str:
        """Take a device off its site (audited as ``site_remove``); the site it was at."""
        with self.store.write() as tx:
            act = tx.get_activation(activation_id)
            site = tx.site_of(activation_id) if act is not None else None
            if act is None or site is None:
                raise ActivationNotFound(f"activation {activation_id} is at no site")
            tx.unassign_site(activation_id)
            tx.append_audit(event(now, actor, "site_remove", act.license_id, act.id, site))
        return site

    def site_activations(self, site: str) -> set[str]:
        """The activation ids placed at ``site``."""
        with self.store.read() as tx:
            return tx.site_activations(site)

    def list_sites(self) -> list[tuple[str, int]]:
        """Every site and how many live devices it has."""
        with self.store.read() as tx:
            return tx.list_sites()
