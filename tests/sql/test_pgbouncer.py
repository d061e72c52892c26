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
import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from chainlit.context import init_http_context
from chainlit.user import User

from chainlit_orm import SQLDataLayer, migrate
from chainlit_orm.errors import CheckFailedError, ConfigurationError
from chainlit_orm.layers.pooler import probe_sql
from chainlit_orm.migrations.sql import refuse_pooler
from chainlit_orm.schema_gen import SCHEMA_VERSION
from chainlit_orm.urls import parse_sql_url
from tests.backends import PGBOUNCER_PORT as PORT
from tests.backends import POOLER_FLAG, through_pgbouncer
from tests.contract.conftest import message
from tests.fixtures.legacy import temp_postgres_db


@pytest.fixture
async def direct_url() -> AsyncIterator[str]:
    """A fresh database on :5432, migrated there (never through the pooler)."""
    async with temp_postgres_db() as url:
        await migrate(url)
        yield url


@pytest.fixture
async def direct_url_unmigrated() -> AsyncIterator[str]:
    """A fresh, empty database on :5432."""
    async with temp_postgres_db() as url:
        yield url


#: the console script of this environment
CLI = str(Path(sys.executable).with_name("chainlit-orm"))


def migrate_refusal(shown: str) -> str:
    """The one stderr line of a migrate refused behind a pooler."""
    return f"chainlit-orm: error: {refuse_pooler(shown, f'127.0.0.1:{PORT}')}"


async def _tables(direct_url: str) -> int:
    """How many tables the database's public schema has."""
    conn = await asyncpg.connect(direct_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"))
    finally:
        await conn.close()


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


async def test_a_statement_prepared_on_one_server_connection_is_missing_on_another(
        direct_url: str) -> None:
    """With the flag, a call after the database's one server connection was taken by another
    client runs on a new server connection and still works (every statement unnamed)."""
    pooled = through_pgbouncer(direct_url)
    layer = SQLDataLayer(pooled)
    init_http_context(thread_id=str(uuid.uuid4()))
    try:
        # the schema check and this call run on the database's one server connection so far
        assert await layer.get_user("nobody") is None
        other = await _hold_the_server_connection(pooled)
        try:
            assert await layer.get_user("nobody") is None
        finally:
            await other.execute("ROLLBACK")
            await other.close()
        assert layer.sql.pooler is not None and layer.sql.pooler.seen == f"127.0.0.1:{PORT}"
    finally:
        await layer.close()


def _refused(url_text: str) -> str:
    return (f"127.0.0.1:{PORT} is a connection pooler (PgBouncer, Supavisor, Neon's pooler), "
            "where asyncpg's named prepared statements are mixed up between clients; add "
            f"?prepared_statement_cache_size=0 to the database URL ({url_text}); nothing was "
            "sent")


async def test_without_the_flag_every_call_is_refused_before_any_statement(
        direct_url: str) -> None:
    """outside attack #18 F4: 4 layers (each its own pooled connections, as 4 processes) x 150
    concurrent conversations through PgBouncer without the flag. Before, most calls raised the
    documented ConfigurationError, but some raised BackendUnavailableError ("bind message
    supplies 5 parameters, but prepared statement ... requires 1") or a bare ChainlitORMError
    ("unsupported jsonb version number 249"): statements had run on another client's prepared
    statement. Now the pooler is detected when a connection opens (the pid of BackendKeyData is
    not pg_backend_pid()), so every call is refused with ConfigurationError before any of its
    statements is sent, and nothing is written."""
    pooled = _without_flag(through_pgbouncer(direct_url))
    init_http_context(thread_id=str(uuid.uuid4()))
    layers = [SQLDataLayer(pooled) for _ in range(4)]
    sent: list[str] = []
    for layer in layers:
        layer.sql.on_statement.append(sent.append)
    kinds: collections.Counter[str] = collections.Counter()
    messages: set[str] = set()

    async def one(layer: SQLDataLayer, i: int) -> None:
        try:
            user = await layer.create_user(User(identifier=f"u{uuid.uuid4().hex[:10]}"))
            assert user is not None
            tid = str(uuid.uuid4())
            await layer.update_thread(tid, name=f"t{i}", user_id=user.id)
            await layer.create_step(message(tid, "hi"))
            await layer.get_thread(tid)
            kinds["ok"] += 1
        except Exception as exc:  # counted by type: the test asserts exactly which
            kinds[type(exc).__name__] += 1
            messages.add(str(exc))

    try:
        await asyncio.gather(*(one(layer, i) for layer in layers for i in range(150)))
    finally:
        for layer in layers:
            await layer.close()
    assert kinds == {"ConfigurationError": 600}
    assert messages == {_refused(layers[0].sql.url_text)}
    assert sent == []
    conn = await asyncpg.connect(direct_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        assert await conn.fetchval('SELECT count(*) FROM users') == 0
    finally:
        await conn.close()


async def test_a_direct_connection_is_not_taken_for_a_pooler(direct_url: str) -> None:
    """The probe on a direct connection: the pid of BackendKeyData is pg_backend_pid(), so
    nothing is refused and no pooler is recorded (the flag on a direct URL changes neither)."""
    for url in (direct_url, direct_url + "?" + POOLER_FLAG):
        layer = SQLDataLayer(url)
        try:
            assert await layer.get_user("nobody") is None
            assert layer.sql.pooler is not None and layer.sql.pooler.seen is None
        finally:
            await layer.close()


@pytest.mark.parametrize("flag", [False, True], ids=["without-flag", "with-flag"])
def test_migrate_through_pgbouncer_is_refused_before_any_ddl(direct_url_unmigrated: str,
                                                            flag: bool) -> None:
    """outside attack #18 F1: ``chainlit-orm migrate`` through the transaction-mode pooler
    exited 0 and migrated: its check of the backend pid when the lock was taken and released
    passed whenever PgBouncer handed back the same server connection. Now migrate refuses a
    pooler when its first connection opens (exit 1, one line), before the lock and any DDL;
    the database stays empty."""
    pooled = through_pgbouncer(direct_url_unmigrated)
    if not flag:
        pooled = _without_flag(pooled)
    done = subprocess.run([CLI, "migrate", pooled, "--timeout", "60"], capture_output=True,
                          text=True, check=False)
    shown = pooled.replace("postgresql://", "postgresql+asyncpg://")
    assert (done.returncode, done.stdout, done.stderr) == (1, "", migrate_refusal(shown) + "\n")
    assert asyncio.run(_tables(direct_url_unmigrated)) == 0


@pytest.fixture
def session_pgbouncer() -> Iterator[int]:
    """A PgBouncer of this test's own in *session* mode on a free port (the shared one on :6432
    is in transaction mode and is left alone), stopped by its pid at the end. Run as the
    ``postgres`` user when the test runs as root, as scripts/services.sh does."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    # under /tmp itself: pytest's tmp_path is under a root-only directory
    directory = Path(tempfile.mkdtemp(prefix="clorm-pgbouncer-"))
    (directory / "userlist.txt").write_text('"postgres" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n* = host=127.0.0.1 port=5432\n[pgbouncer]\nlisten_addr = 127.0.0.1\n"
        f"listen_port = {port}\nunix_socket_dir =\nauth_type = trust\n"
        f"auth_file = {directory}/userlist.txt\npool_mode = session\nmax_client_conn = 50\n"
        "default_pool_size = 4\nignore_startup_parameters = extra_float_digits\n"
        f"logfile = {directory}/pgbouncer.log\npidfile = {directory}/pgbouncer.pid\n")
    command = ["/usr/sbin/pgbouncer", "-d", str(directory / "pgbouncer.ini")]
    if os.getuid() == 0:
        for path in (directory, *directory.iterdir()):
            shutil.chown(path, "postgres", "postgres")
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, check=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield port
    finally:
        os.kill(int((directory / "pgbouncer.pid").read_text()), signal.SIGTERM)
        shutil.rmtree(directory, ignore_errors=True)


async def test_the_probe_tells_the_server_from_a_pooler(direct_url_unmigrated: str,
                                                        session_pgbouncer: int) -> None:
    """What the detector rests on, on the real servers: the pid of BackendKeyData (asyncpg's
    ``get_server_pid()``) is ``pg_backend_pid()`` on a direct connection, and not through
    PgBouncer, in transaction mode (:6432) as in session mode; the probe's command tag says
    which. So a session-mode pooler is refused by migrate too (documented: migrate needs a
    direct connection)."""
    database = direct_url_unmigrated.rsplit("/", 1)[1]
    for port, pooled in ((5432, False), (PORT, True), (session_pgbouncer, True)):
        for _ in range(3):
            conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres",
                                         database=database, statement_cache_size=0)
            try:
                key_pid = conn.get_server_pid()
                backend = await conn.fetchval("SELECT pg_backend_pid()")
                assert (key_pid != backend) is pooled
                assert await conn.execute(probe_sql(key_pid)) == (
                    "SELECT 0" if pooled else "SELECT 1")
            finally:
                await conn.close()
    through_session = direct_url_unmigrated.replace(":5432/", f":{session_pgbouncer}/")
    with pytest.raises(ConfigurationError) as info:
        await migrate(through_session)
    assert str(info.value) == str(refuse_pooler(through_session,
                                                f"127.0.0.1:{session_pgbouncer}"))
    assert await _tables(direct_url_unmigrated) == 0


async def test_check_behind_pgbouncer_names_a_direct_migrate(direct_url_unmigrated: str) -> None:
    """outside attack #18 F5: ``layer.check()`` through PgBouncer on an unmigrated database
    suggested ``chainlit-orm migrate`` with the pooler's URL, which migrate refuses. The
    command now has the server's address in place of the pooler's, and says why."""
    pooled = through_pgbouncer(direct_url_unmigrated)
    layer = SQLDataLayer(pooled)
    try:
        with pytest.raises(CheckFailedError) as info:
            await layer.check()
    finally:
        await layer.close()
    shown = layer.sql.url_text
    direct = shown.replace(f"127.0.0.1:{PORT}", "SERVER-HOST:5432")
    assert info.value.problems == [
        f"database: {shown} has none of the chainlit-orm tables; create them with: "
        f"chainlit-orm migrate '{direct}' (127.0.0.1:{PORT} is a connection pooler and migrate "
        "needs a direct connection: put the database server's own host and port in place of "
        "SERVER-HOST:5432)"]


async def test_four_layers_create_an_empty_schema_at_once_through_pgbouncer(
        direct_url_unmigrated: str) -> None:
    """The layer's first-use creation (``create_schema=True``) is safe behind the pooler, unlike
    migrate: its lock is a transaction advisory lock taken in the one transaction that creates
    the schema, which PgBouncer keeps on one server connection. 4 layers at once: all work, the
    schema is created once (one version record)."""
    pooled = through_pgbouncer(direct_url_unmigrated)
    layers = [SQLDataLayer(pooled, create_schema=True) for _ in range(4)]
    try:
        assert await asyncio.gather(*(layer.get_user("nobody") for layer in layers)) == [
            None] * 4
    finally:
        for layer in layers:
            await layer.close()
    conn = await asyncpg.connect(direct_url_unmigrated.replace("postgresql+asyncpg",
                                                               "postgresql"))
    try:
        assert await conn.fetch("SELECT version FROM chainlit_orm_version") == [
            (SCHEMA_VERSION,)]
    finally:
        await conn.close()


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
