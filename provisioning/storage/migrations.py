"""The versions of HQ's schema, and the one way every engine applies them.

``VERSIONS`` says what each version brings, for every engine; an engine module holds
its own statements for each (``storage/sqlite.py: MIGRATIONS``; a PostgreSQL engine
writes its DDL for the same versions: ``BIGSERIAL`` for ``audit.id``, trigger functions
for the seat count and the append-only audit). ``upgrade`` applies what a database
lacks, in order, inside the one write transaction it is given, and refuses a database
newer than this program.

No SQL of any engine here: the statements come from the engine, the bookkeeping
(``schema_version``) from ``storage/tx.py``. A released version never changes: a change
to the schema is a new version, in every engine.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from .tx import Tx


@dataclass(frozen=True)
class Version:
    number: int
    brings: str


VERSIONS: tuple[Version, ...] = (
    Version(
        1,
        "signing keys (public parts), plans, licenses and their entitlements, activations "
        "(one live per license and device, enforced by the database), the append-only "
        "audit log, admin token hashes",
    ),
    Version(2, "the seats in use kept on the license row by the database itself"),
    Version(3, "sites: where a device stands (a label on its activation)"),
    Version(
        4,
        "the device's own key on its activation, the agent version and claims format it "
        "reads, when and how it was last heard from; single-use server challenges; "
        "retired signing keys",
    ),
    Version(5, "admin tokens expire and can be revoked (their rows kept, for the record)"),
    Version(
        6,
        "devices' signed usage reports (the highest sequence kept per activation), license "
        "returns with their receipts, whether a device is bound to a TPM; plans' usage "
        "counters, metered entitlements and a limit on returns; each meter's periods",
    ),
    Version(
        7,
        "the MQTT bridge's last answer per activation (the rate limit every replica shares, "
        "and the file to publish again); the outbox of what each device must be told after "
        "a suspension, revocation, reinstatement or deactivation",
    ),
    Version(
        8,
        "a license's own seat limit over its plan's; the web console's sessions (the hash "
        "of each session's id, its admin token, expiry and end); indexes for the fleet "
        "views (activations by file expiry, the audit log by license and by time)",
    ),
    Version(
        9,
        "the ids of the signing keys each device says its keyring holds, so that HQ signs "
        "its files with a key the device trusts during a key rotation",
    ),
    Version(
        10,
        "when a live activation's return frees its seat, on the activation and indexed, so "
        "that activating reads only the license's waiting returns, not every return made",
    ),
    Version(
        11,
        "when the files HQ issued each activation stop running (the latest expiry and "
        "grace of any of them), so that a return without a TPM frees its seat only after "
        "every file a copy of the device's data could hold, not only the last",
    ),
    Version(
        12,
        "license keys sealed at rest: the name of the secret that seals them "
        "(storage/sealing.py), so that a home holding another secret, or none, says so "
        "instead of sealing with its own",
    ),
)
SCHEMA_VERSION = VERSIONS[-1].number

# An engine's statements for each version, in order: [(number, [statement, ...]), ...].
EngineMigrations = Sequence[tuple[int, Sequence[str]]]


def upgrade(tx: Tx, engine: str, migrations: EngineMigrations) -> None:
    """Bring the database in ``tx`` (a write transaction) to ``SCHEMA_VERSION``."""
    numbers = [number for number, _ in migrations]
    if numbers != [v.number for v in VERSIONS]:  # pragma: no cover - a programming error
        raise RuntimeError(f"the {engine} engine has migrations {numbers}, not {VERSIONS}")
    tx.create_schema_table()
    current = tx.schema_version()
    if current > SCHEMA_VERSION:
        raise ConfigError(
            f"database schema version {current} is newer than this fieldpass-hq "
            f"({SCHEMA_VERSION}): upgrade fieldpass-hq"
        )
    for number, statements in migrations:
        if number > current:
            tx.apply_migration(number, statements)


def current(tx: Tx) -> int:
    """The version of the database in ``tx`` (a write transaction: an empty database
    gets its bookkeeping table), without applying anything."""
    tx.create_schema_table()
    return tx.schema_version()


def pending(version: int) -> list[Version]:
    """What a database at ``version`` lacks, in the order it would be applied."""
    return [v for v in VERSIONS if v.number > version]
