"""The layer through a real PgBouncer 1.18 in transaction mode (``scripts/services.sh``, :6432).

Behind a transaction-mode pooler each transaction (each statement, in autocommit) may run on a
different server connection, so a named prepared statement made on one is missing on the next.
``?prepared_statement_cache_size=0`` in the URL makes the layer run every statement unnamed
(asyncpg's ``statement_cache_size=0``); without it the layer says what to add.

* :func:`test_a_statement_prepared_on_one_server_connection_is_missing_on_another`: the failure,
  made deterministic: a call prepares its statement on the database's only server connection,
  another client then holds that connection in a transaction, so the next call runs on a new
  server connection; without the flag it raises ``ConfigurationError`` naming the flag, with it
  the same sequence works.
* :func:`test_32_concurrent_conversations_through_pgbouncer`: 32 conversations at once (17 of 32
  failed before the flag was honoured), every write and read exact.
* :func:`test_40_layers_starting_at_once_through_pgbouncer`: the first-connect queries and the
  schema check, the only statements on SQLAlchemy's own asyncpg path, while other layers start.

The whole contract suite also runs through PgBouncer (``pgbouncer`` in ``tests/backends.py``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from chainlit.context import init_http_context
from chainlit.user import User

from chainlit_orm import SQLDataLayer, migrate
from chainlit_orm.errors import ConfigurationError
from chainlit_orm.urls import parse_sql_url
from tests.backends import POOLER_FLAG, through_pgbouncer
from tests.contract.conftest import message
from tests.fixtures.legacy import temp_postgres_db


@pytest.fixture
async def direct_url() -> AsyncIterator[str]:
    """A fresh database on :5432, migrated there (never through the pooler)."""
    async with temp_postgres_db() as url:
        await migrate(url)
        yield url


def _without_flag(url: str) -> str:
    return url.replace("?" + POOLER_FLAG, "")


async def _hold_the_server_connection(pooled_url: str) -> asyncpg.Connection:
    """Another client of PgBouncer that opens a transaction: it takes the database's idle server
    connection and keeps it until it ends the transaction."""
    parsed = parse_sql_url(pooled_url).url
    other = await asyncpg.connect(host="127.0.0.1", port=parsed.port, user="postgres",
                                  database=parsed.database, statement_cache_size=0)
    await other.execute("BEGIN")
    await other.execute("SELECT 1")
    return other


@pytest.mark.parametrize("flag", [False, True], ids=["without-flag", "with-flag"])
async def test_a_statement_prepared_on_one_server_connection_is_missing_on_another(
        direct_url: str, flag: bool) -> None:
    pooled = through_pgbouncer(direct_url)
    layer = SQLDataLayer(pooled if flag else _without_flag(pooled))
    init_http_context(thread_id=str(uuid.uuid4()))
    try:
        # the schema check and this call run on the database's one server connection so far
        assert await layer.get_user("nobody") is None
        other = await _hold_the_server_connection(pooled)
        try:
            if flag:
                assert await layer.get_user("nobody") is None
                return
            with pytest.raises(ConfigurationError) as raised:
                await layer.get_user("nobody")
        finally:
            await other.execute("ROLLBACK")
            await other.close()
    finally:
        await layer.close()
    text = str(raised.value)
    assert 'prepared statement "__asyncpg_stmt_' in text and "does not exist" in text
    assert text.endswith("the server looks to be behind a transaction-mode pooler (PgBouncer, "
                         "Supavisor, Neon's pooler), where named prepared statements do not "
                         "survive; add ?prepared_statement_cache_size=0 to the database URL "
                         f"({layer.sql.url_text})")


async def test_32_concurrent_conversations_through_pgbouncer(direct_url: str) -> None:
    layer = SQLDataLayer(through_pgbouncer(direct_url))
    init_http_context(thread_id=str(uuid.uuid4()))
    try:
        owner = await layer.create_user(User(identifier=f"pgb-{uuid.uuid4().hex[:8]}"))
        assert owner is not None

        async def conversation(i: int) -> tuple[str, dict[str, str]]:
            tid = str(uuid.uuid4())
            await layer.update_thread(tid, name=f"conversation {i}", user_id=owner.id)
            written = {}
            for turn in range(3):
                asked = message(tid, f"question {turn} of {i}")
                await layer.create_step(asked)
                answer = message(tid, "", author="assistant", type_="assistant_message")
                await layer.create_step(answer)
                answer["output"] = f"answer {turn} to {i}"
                await layer.update_step(answer)
                written[asked["id"]] = asked["output"]
                written[answer["id"]] = answer["output"]
            return tid, written

        results = await asyncio.gather(*(conversation(i) for i in range(32)),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == []
        for i, (tid, written) in enumerate(r for r in results
                                           if not isinstance(r, BaseException)):
            thread = await layer.get_thread(tid)
            assert thread is not None
            assert (thread["name"], thread["userId"]) == (f"conversation {i}", owner.id)
            assert {s["id"]: s["output"] for s in thread["steps"]} == written
    finally:
        await layer.close()


async def test_40_layers_starting_at_once_through_pgbouncer(direct_url: str) -> None:
    """40 app processes' layers starting together: each one's first connection runs
    SQLAlchemy's first-connect queries and its first call the schema check, both on SQLAlchemy's
    asyncpg path, which prepares named statements (39 of 40 failed before they ran in a
    transaction). Each layer then makes 5 calls."""
    pooled = through_pgbouncer(direct_url)
    init_http_context(thread_id=str(uuid.uuid4()))

    async def start() -> list[object]:
        layer = SQLDataLayer(pooled, pool_size=1)
        try:
            return [await layer.get_user("nobody") for _ in range(5)]
        finally:
            await layer.close()

    results = await asyncio.gather(*(start() for _ in range(40)), return_exceptions=True)
    assert results == [[None] * 5] * 40
