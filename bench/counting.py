"""Statement / API-call counting, attributed to the operation running in the current task.

- SQLAlchemy targets: ``before_cursor_execute`` (statements) and ``begin`` (transactions) events on
  the engine's sync engine.
- Raw drivers (floors) and Chainlit's asyncpg layer: a wrapper around the call that runs a
  statement.
- DynamoDB (boto3 and PynamoDB alike): a botocore ``before-call.dynamodb`` event hook registered on
  every client botocore creates.

The active counter lives in a context variable (copied into tasks, greenlets and
``asyncio.to_thread``); a process-wide fallback covers ``run_in_executor`` threads, which get no
context. Counts are taken in sequential passes, so the fallback is unambiguous there.
"""

from __future__ import annotations

import contextvars
from collections import Counter as _Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class OpCounter:
    statements: int = 0
    transactions: int = 0
    api_calls: int = 0
    by_kind: _Counter[str] = field(default_factory=_Counter)

    def total(self) -> int:
        return self.statements + self.api_calls


_current: contextvars.ContextVar[OpCounter | None] = contextvars.ContextVar("bench_counter",
                                                                              default=None)
_fallback: list[OpCounter | None] = [None]


def current() -> OpCounter | None:
    c = _current.get()
    return c if c is not None else _fallback[0]


class counting:
    """``with counting() as c:`` around one operation (sequential passes only)."""

    def __enter__(self) -> OpCounter:
        self.c = OpCounter()
        self.tok = _current.set(self.c)
        _fallback[0] = self.c
        return self.c

    def __exit__(self, *exc: Any) -> None:
        _current.reset(self.tok)
        _fallback[0] = None


def statement(kind: str = "sql") -> None:
    c = current()
    if c is not None:
        c.statements += 1
        c.by_kind[kind] += 1


def transaction() -> None:
    c = current()
    if c is not None:
        c.transactions += 1


def layer_statement(word: str) -> None:
    """A statement reported by chainlit-orm's ``SQLBackend.on_statement`` (its first keyword).
    As for the floors, ``BEGIN`` counts as a transaction and ``COMMIT``/``ROLLBACK`` as nothing."""
    if word == "BEGIN":
        transaction()
    elif word not in ("COMMIT", "ROLLBACK"):
        statement(word)


def instrument_engine(engine: Any) -> None:
    """Count statements and transactions of an SQLAlchemy (async) engine."""
    from sqlalchemy import event

    sync = getattr(engine, "sync_engine", engine)

    @event.listens_for(sync, "before_cursor_execute")
    def _stmt(conn, cursor, stmt, params, context, executemany):  # type: ignore[no-untyped-def]
        word = stmt.lstrip().split(None, 1)[0].upper() if stmt.strip() else "?"
        statement(word)

    @event.listens_for(sync, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        transaction()


_botocore_hooked = False


def _on_dynamodb_call(model: Any = None, **kwargs: Any) -> None:
    c = current()
    if c is not None:
        c.api_calls += 1
        c.by_kind[getattr(model, "name", "?")] += 1


def hook_botocore() -> None:
    """Register the counting hook on every botocore client created from now on."""
    global _botocore_hooked
    if _botocore_hooked:
        return
    import botocore.session

    orig = botocore.session.Session.create_client

    def create_client(self, service_name, *args, **kwargs):  # type: ignore[no-untyped-def]
        client = orig(self, service_name, *args, **kwargs)
        if service_name == "dynamodb":
            client.meta.events.register("before-call.dynamodb", _on_dynamodb_call)
        return client

    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]
    _botocore_hooked = True
