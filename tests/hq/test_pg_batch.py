"""PostgreSQL's write transactions go out in batches (storage/postgres.py ``_Batch``):
several statements in one query, each prepared once per connection and run by
``EXECUTE`` with its values as SQL literals. What an attacker would try: values that
are SQL, quotes and backslashes; what can go wrong on a connection kept in the pool: a
batch the server refused half of, a rollback, an ``ALTER``, all followed by the same
statements on the same connection."""

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioning.errors import StorageError
from provisioning.models import AuditEvent
from provisioning.storage import open_store
from provisioning.storage.interface import Store
from tests.pg_server import Postgres

# text PostgreSQL stores (no NUL), biased to what breaks quoting
HOSTILE = st.lists(
    st.one_of(
        st.sampled_from(["'", '"', "\\", ";", "--", "/*", "*/", "$$", "%", ":x", "%(x)s", "E'"]),
        st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    ),
    max_size=30,
).map("".join)


@pytest.fixture(scope="module")
def one_connection(postgres_server: Postgres) -> Iterator[Store]:
    """A store with one pooled connection: every transaction reuses it (and its
    prepared statements)."""
    store = open_store(postgres_server.database(), pool_size=1)
    yield store
    store.close()


def _read_often(store: Store) -> None:
    """The same read ten times on the connection (psycopg, were its automatic preparing
    on, would have prepared it, and so deallocate everything at a ROLLBACK or ALTER)."""
    for n in range(10):
        with store.read() as tx:
            assert tx._one("SELECT CAST(:n AS BIGINT)", n=n)[0] == n


def _prepared(store: Store) -> set[str]:
    with store.read() as tx:
        return {r[0] for r in tx._all("SELECT name FROM pg_prepared_statements")}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(actor=HOSTILE, detail=HOSTILE, source=HOSTILE)
def test_values_are_stored_as_given_whatever_they_hold(
    one_connection: Store, actor: str, detail: str, source: str
) -> None:
    with one_connection.write() as tx:
        tx.append_audit(AuditEvent(7, actor, source, "test-quoting", None, None, detail))
        (last,) = tx._one("SELECT max(id) FROM audit")
    with one_connection.read() as tx:
        row = tx._one("SELECT actor, source, detail FROM audit WHERE id = :id", id=last)
        tables = tx._one("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
    assert tuple(row) == (actor, source, detail)
    assert tables[0] > 5  # nothing was dropped


def test_a_batch_refused_half_way_leaves_the_connection_usable(one_connection: Store) -> None:
    """The server ran the statements before the one it refused (a PREPARE outlives the
    rollback), not those after: the connection's prepared statements are dropped on
    both sides, and the same statements run again on it."""
    new_insert = "INSERT INTO audit (at, actor, source, action) VALUES (:at, 'a', 'b', 'half')"
    failing = "SELECT CAST(:v AS BIGINT)"
    with pytest.raises(StorageError, match="invalid input syntax"), one_connection.write() as tx:
        tx._send(new_insert, at=1)  # prepared, then run
        tx._send(failing, v="not a number")  # prepared, then refused
    for _ in range(2):
        with one_connection.write() as tx:
            tx._send(new_insert, at=2)
            assert tx._one(failing, v="42")[0] == 42
    with one_connection.read() as tx:
        assert tx._one("SELECT count(*) FROM audit WHERE action = 'half'")[0] == 2


def test_a_rollback_by_the_caller_keeps_what_the_connection_prepared(
    one_connection: Store,
) -> None:
    statement = "SELECT CAST(:v AS BIGINT) + 1"
    with one_connection.write() as tx:
        assert tx._one(statement, v=1)[0] == 2
    _read_often(one_connection)
    before = _prepared(one_connection)
    assert before
    with pytest.raises(ValueError), one_connection.write() as tx:
        assert tx._one(statement, v=2)[0] == 3
        raise ValueError("the caller's own refusal")
    assert _prepared(one_connection) == before  # psycopg deallocated nothing
    with one_connection.write() as tx:
        assert tx._one(statement, v=3)[0] == 4


def test_an_alter_in_a_transaction_keeps_the_prepared_statements(one_connection: Store) -> None:
    """psycopg would deallocate every statement of the session after an ``ALTER``
    (its own automatic preparing is off on the pooled connections)."""
    statement = "SELECT count(*) FROM activations WHERE id = :id"
    with one_connection.write() as tx:
        assert tx._one(statement, id="none")[0] == 0
    _read_often(one_connection)
    with one_connection.write() as tx:
        tx._send("ALTER TABLE activations DISABLE TRIGGER seats_on_activate")
        tx._send("ALTER TABLE activations ENABLE TRIGGER seats_on_activate")
        assert tx._one(statement, id="none")[0] == 0


def test_an_error_never_quotes_the_values_of_the_batch(one_connection: Store) -> None:
    """The server's context for an error quotes the statement (here an ``EXECUTE``
    with its values as literals, a license key among them): the error says the
    server's primary message only."""
    key = "FP-SECRT-SECRT-SECRT-SECRT-SECRT"
    statement = "SELECT 1 WHERE CAST(:v AS BIGINT) > 0 AND :key = 'x'"
    with pytest.raises(StorageError) as refused, one_connection.write() as tx:
        tx._one(statement, v="not a number", key=key)
    assert "invalid input syntax for type bigint" in str(refused.value)
    assert key not in str(refused.value)
    assert "EXECUTE" not in str(refused.value)
