"""The one retry policy of the package: every loop that retries on its own (the SQL backend's
transient errors, DynamoDB's write conflicts, transactions and unprocessed batch items) is driven
by a :class:`RetryPolicy`, whose stop and wait rules are tenacity's (``stop_after_attempt``, and
``wait_random_exponential``: AWS's "full jitter" exponential backoff).

Two ways to use it, one policy, one loop underneath:

* :meth:`RetryPolicy.call` runs a function again while it raises the exceptions named: for
  loops that send the same request again.
* ``async for attempt in policy.tries():`` for loops that change the request between tries (a
  failed condition tells how to write next time, unprocessed batch items shrink the batch).

tenacity's own control flow (``AsyncRetrying``) is not used: it would need every "try again"
turned into a raise of a marker exception and every give-up into a ``RetryError`` handler, which
hides the loops' logic, and it costs about 60 us per call even when the first try succeeds, on
paths (every SQL and DynamoDB call) where one try is the rule. The iterator keeps
``continue``/``break``/``for ... else``, allocates nothing until a retry happens, and takes its
rules from tenacity.

Every retry waits: the first try runs at once, retry ``k`` (``k >= 1``) first sleeps a uniformly
random ``0 .. min(cap, base * 2**(k-1))`` seconds, so writers that collided spread out instead of
colliding again in lock step. After ``attempts`` tries the loop ends and its caller raises a
typed error; nothing is retried for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt
from tenacity.wait import wait_random_exponential

from chainlit_orm import tracing as _tracing

__all__ = ["BATCH_RETRY", "CONFLICT_RETRY", "RetryPolicy", "Tries", "transient_retry"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded tries with full-jitter exponential backoff (see the module docstring).

    Args:
        attempts: tries in all (the first one included); at least 1.
        base: the backoff window of the first retry, in seconds (it doubles each retry).
        cap: the largest window, in seconds.
    """

    attempts: int = 10
    base: float = 0.01
    cap: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base <= 0 or self.cap < self.base:
            raise ValueError(f"a retry policy needs attempts >= 1 and 0 < base <= cap: {self}")

    def wait(self) -> wait_random_exponential:
        """tenacity's wait rule for this policy."""
        return wait_random_exponential(multiplier=self.base, max=self.cap)

    def stop(self) -> stop_after_attempt:
        """tenacity's stop rule for this policy."""
        return stop_after_attempt(self.attempts)

    def tries(self) -> Tries:
        """An async iterator over the try numbers ``0 .. attempts - 1`` that sleeps the policy's
        backoff before each retry (never before the first try)."""
        return Tries(self)

    async def call(self, fn: Callable[[], Awaitable[T]],
                   retry_on: type[BaseException] | tuple[type[BaseException], ...]) -> T:
        """``await fn()``, again after a backoff while it raises ``retry_on``; after the last
        try that exception is raised as it is (the caller turns it into a typed error).

        Driven by :meth:`tries`, not by tenacity's ``AsyncRetrying``: that one costs about
        60 us per call even when the first try succeeds (measured on this machine: 63 us
        against 0.6 us for :meth:`tries`), and :class:`~chainlit_orm.layers.dynamodb.table.
        TableClient` sends every DynamoDB request through here."""
        async for attempt in self.tries():
            try:
                return await fn()
            except retry_on:
                if attempt + 1 >= self.attempts:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover - the last try returns or raises


class Tries:
    """The iterator :meth:`RetryPolicy.tries` returns (a class, not an async generator: a
    generator left at a ``break`` or ``return`` is finalized by a task the event loop schedules,
    one per call)."""

    __slots__ = ("_next", "_policy", "_state")

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._next = 0
        self._state: RetryCallState | None = None

    def __aiter__(self) -> Tries:
        return self

    async def __anext__(self) -> int:
        attempt = self._next
        if attempt:
            if self._state is None:
                self._state = RetryCallState(AsyncRetrying(), None, (), {})
            self._state.attempt_number = attempt  # the try that failed, as tenacity counts
            if self._policy.stop()(self._state):
                raise StopAsyncIteration
            if _tracing.ACTIVE:  # the retry shows on the caller's span (chainlit_orm.tracing)
                _tracing.count(retries=1)
            await asyncio.sleep(self._policy.wait()(self._state))
        self._next = attempt + 1
        return attempt


def transient_retry(attempts: int) -> RetryPolicy:
    """The SQL backend's policy for transient errors (deadlock, serialization failure, lost
    connection): ``attempts`` tries, backoff windows from 20 ms up to 1 s."""
    return RetryPolicy(attempts=max(1, attempts), base=0.02, cap=1.0)


#: Conflicts between DynamoDB writers (failed conditions, cancelled transactions, items in
#: another transaction, answers cut short): at most 10 tries, at most about 3.3 s of sleeping.
CONFLICT_RETRY = RetryPolicy(attempts=10, base=0.01, cap=1.0)
#: Unprocessed DynamoDB batch items (the table is over its capacity): at most 10 tries, at most
#: about 9 s of sleeping.
BATCH_RETRY = RetryPolicy(attempts=10, base=0.05, cap=2.0)
