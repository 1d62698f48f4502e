"""HQ's licensing rules, one module per thing they manage, over one ``Store``:

- ``keys``: signing keys, the keyring, the active private key;
- ``licenses``: plans and licenses, a license's status, suspend/reinstate/revoke;
- ``issuing``: activations and machine files, renewals, validation, revocations;
- ``device_requests``: the requests devices sign with their own key, and challenges;
- ``outbox``: what each device must be told after a change of its standing, until its
  status confirms it;
- ``renewals``: the MQTT bridges' renewals, at most one new file per device per interval
  whichever replica answers;
- ``usage``: what devices report back: usage reports and licenses given back;
- ``sites``: where devices stand;
- ``tokens``: the admin API's bearer tokens;
- ``terms``: a plan's values and a license's own seat limit, changed after creation;
- ``fleet``: the fleet views (overview, activations and licenses filtered and paged),
  reads only, each device's verdict from ``verdicts``;
- ``console_sessions``: the web console's logins, sessions and logouts;
- ``audit``: the append-only log every change writes in its own transaction;
- ``names``: the grammar of the names people give.

``HQ`` is the one entry object the CLI, the server, the MQTT commands and the tests
hold: it opens the store and composes the services, and holds no rule of its own (each
of its operations is one service's method, by the same name). Every operation takes
``now`` from its caller: nothing in services ever reads the clock, prints or logs.
"""

from pathlib import Path

from .. import config, sealed_keys
from ..errors import ConfigError
from ..keystore import KeyStore, prepare_home
from ..storage import open_store
from .audit import AuditLog
from .console_sessions import ConsoleSessions
from .device_requests import DeviceRequests
from .fleet import Fleet
from .issuing import Contact, Issued, Issuing, Validation
from .keys import Keys
from .licenses import Licenses, license_status
from .names import check_name
from .outbox import Outbox
from .renewals import Renewals
from .sites import Sites
from .terms import Terms
from .tokens import Tokens
from .usage import Usage

__all__ = ["HQ", "Contact", "Issued", "Validation", "check_name", "license_status"]


class HQ:
    """HQ over one home: its store, its services, and each operation under its name."""

    def __init__(self, home: Path, *, database: str | None = None) -> None:
        """``database``: a URL for ``storage.open_store``; default: as configured
        (``config.database``: the environment, ``HOME/hq.toml``, else the SQLite file in
        ``home``)."""
        self.home = home
        prepare_home(home)
        db = config.database(home, database)
        self.store = open_store(db.url, pool_size=db.pool_size)
        try:
            self.store.license_keys = sealed_keys.use(home, self.store)
        except BaseException:
            self.store.close()
            raise
        self.audit_log = AuditLog(self.store)
        self.keys = Keys(self.store, KeyStore(home))
        self.licenses = Licenses(self.store)
        self.issuing = Issuing(self.store, self.keys)
        self.device = DeviceRequests(self.store, self.keys, self.issuing)
        self.outbox = Outbox(self.store, self.issuing)
        self.renewals = Renewals(self.store, self.issuing)
        self.usage = Usage(self.store, self.device)
        self.sites = Sites(self.store)
        self.tokens = Tokens(self.store)
        self.terms = Terms(self.store)
        self.fleet = Fleet(self.store)
        self.sessions = ConsoleSessions(self.store, self.tokens)

        self.generate_key = self.keys.generate_key
        self.retire_key = self.keys.retire_key
        self.activate_key = self.keys.activate_key
        self.list_keys = self.keys.list_keys
        self.keyring = self.keys.keyring
        self.keyring_counts = self.keys.keyring_counts

        self.create_plan = self.licenses.create_plan
        self.list_plans = self.licenses.list_plans
        self.create_license = self.licenses.create_license
        self.list_licenses = self.licenses.list_licenses
        self.get_license = self.licenses.get_license
        self.set_status = self.licenses.set_status
        self.update_plan = self.terms.update_plan
        self.set_license_seats = self.terms.set_license_seats

        self.activate = self.issuing.activate
        self.renew = self.issuing.renew
        self.renew_all = self.issuing.renew_all
        self.deactivate = self.issuing.deactivate
        self.get_activation = self.issuing.get_activation
        self.list_activations = self.issuing.list_activations
        self.validate = self.issuing.validate
        self.signed_revocation = self.issuing.signed_revocation

        self.assign_site = self.sites.assign_site
        self.site_activations = self.sites.site_activations
        self.list_sites = self.sites.list_sites
        self.remove_from_site = self.sites.remove_from_site

        self.create_token = self.tokens.create_token
        self.list_tokens = self.tokens.list_tokens
        self.revoke_token = self.tokens.revoke_token
        self.check_token = self.tokens.check_token

        self.audit = self.audit_log.audit
        self.record_audit = self.audit_log.record_audit

    def require_license_keys(self) -> None:
        """Refuse (ConfigError, exit 78) a home that cannot open the database's license
        keys: ``serve``, ``bridge`` and ``push`` check it before they take any traffic,
        so that a host without the license-key secret is not one a balancer or a shared
        subscription sends devices to (provisioning/sealed_keys.py)."""
        keys = self.store.license_keys
        if not keys.usable:
            raise ConfigError(keys.why)
