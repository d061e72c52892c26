"""Detect a connection pooler (PgBouncer, Supavisor, Neon's pooler) in front of PostgreSQL.

Why: a URL does not say whether it reaches the server or a pooler, and guessing from a port
(6432, 6543) or a host name (``-pooler``) is wrong as often as right. Behind a pooler two things
break, and neither fails reliably enough to be noticed in time:

* ``chainlit-orm migrate``'s session advisory lock: in transaction mode the lock lands on
  whatever server connection served that one statement, so two migrations can both "hold" it
  (and a check of the backend pid when the lock is taken and released passes whenever the pooler
  happens to hand back the same server connection);
* the layer without ``?prepared_statement_cache_size=0``: asyncpg's named prepared statements are
  made on one server connection and used on another, where another client's statement of the
  same name may exist: statements then run with another statement's plan (a parameter count
  mismatch, ``unsupported jsonb version number``), which is a data-integrity risk, not only an
  error.

The detector: asyncpg's :meth:`asyncpg.Connection.get_server_pid` is the process id of the
``BackendKeyData`` message the server sent at connection start. PostgreSQL sends its backend's
own pid; a pooler answers the client's start-up itself and sends a key of its own making
(PgBouncer: random bytes, so that it can route cancel requests), in session mode as in
transaction mode. So on a direct connection it equals ``pg_backend_pid()``, and behind a pooler
it does not (PgBouncer 1.18: always differs; a random 32-bit value meets the real pid with a
probability of about 1 in 4 billion).

The probe is one statement on the simple query protocol (no prepared statement, nothing a
pooler could mix up), ``SELECT 1 WHERE pg_backend_pid() = <key pid>``, read by its command tag
alone: ``SELECT 1`` on a direct connection, ``SELECT 0`` behind a pooler. Plain SQL, so it needs
no procedural language and works on a read-only standby. It runs once per new driver connection
from the pool's ``connect`` event, ahead of SQLAlchemy's own first-connect queries: nothing else
has been sent on the connection when it refuses. It goes through the driver directly, so it is
not one of the statements a call counts (:func:`chainlit_orm.layers.sqlexec.tracking_sent`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from chainlit_orm.errors import ConfigurationError, migrate_command

__all__ = ["PoolerProbe", "direct_migrate_command", "probe_sql"]


def probe_sql(key_pid: int) -> str:
    """The probe: one row (command tag ``SELECT 1``) when the serving backend is the one whose
    pid the connection received at start-up, none (``SELECT 0``) otherwise."""
    pid = int(key_pid)  # an int from the protocol, never text from outside
    return f"SELECT 1 WHERE pg_backend_pid() = {pid}"


@dataclass
class PoolerProbe:
    """Runs the probe on every new PostgreSQL connection of the engines it is installed on, and
    remembers whether a pooler was seen (``seen``: the pooler's ``host:port``).

    Args:
        where: the ``host:port`` the URL names, for messages.
        refuse: called with that ``host:port`` when a pooler is seen; returns the error to raise
            (the connection is then closed by the pool and never used), or None to accept it.
    """

    where: str
    refuse: Callable[[str], ConfigurationError | None]
    seen: str | None = None

    @classmethod
    def of(cls, engine: AsyncEngine,
           refuse: Callable[[str], ConfigurationError | None]) -> PoolerProbe:
        """A probe for ``engine``'s URL (not yet installed)."""
        url = engine.url
        return cls(f"{url.host or 'localhost'}:{url.port or 5432}", refuse)

    def install(self, engine: AsyncEngine) -> None:
        """Probe each connection ``engine`` opens, first among the ``connect`` listeners (before
        SQLAlchemy's first-connect queries and asyncpg's codec set-up). PostgreSQL/asyncpg
        only; nothing for another dialect."""
        if engine.dialect.name != "postgresql":
            return
        event.listen(engine.sync_engine, "connect", self._on_connect, insert=True)

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy's asyncpg adapter: run_async runs a coroutine on the driver connection from
        # this (greenlet-adapted) synchronous listener
        if dbapi_connection.run_async(_is_pooled):
            self.seen = self.where
            error = self.refuse(self.where)
            if error is not None:
                # the pool does not close a connection whose connect event raised
                dbapi_connection.close()
                raise error


async def _is_pooled(conn: Any) -> bool:
    """Whether the asyncpg connection ``conn`` talks to a pooler (see the module docstring):
    ``execute`` without arguments uses the simple query protocol and returns the command tag."""
    tag = await conn.execute(probe_sql(conn.get_server_pid()))
    return bool(tag != "SELECT 1")


#: What stands in for the server's own address in a migrate command made for a pooled URL.
SERVER_ADDRESS = "SERVER-HOST:5432"


def direct_migrate_command(shown: str, models: object, pooler: str | None) -> str:
    """The ``chainlit-orm migrate`` command to suggest for the database ``shown`` (masked URL).

    Behind a pooler (``pooler``: its ``host:port``, as :class:`PoolerProbe` saw it) the URL's
    host and port are replaced by :data:`SERVER_ADDRESS` and the hint says why: migrate refuses a
    pooler (its session lock needs a session of the server's own), so the command with the
    pooler's address could only fail."""
    if pooler is None:
        return migrate_command(shown, models)
    direct = re.sub(r"(//(?:[^@/?]*@)?)[^/?]*", lambda m: m.group(1) + SERVER_ADDRESS, shown,
                    count=1)
    return (f"{migrate_command(direct, models)} ({pooler} is a connection pooler and migrate "
            f"needs a direct connection: put the database server's own host and port in place "
            f"of {SERVER_ADDRESS})")
