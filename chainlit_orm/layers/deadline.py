"""A client-side time limit on every data-layer call: the layers' ``timeout`` option.

Why client-side: a server-side limit (``SET statement_timeout``) is a session setting that a
transaction-mode pooler (PgBouncer, RDS Proxy) does not keep, and it bounds neither a connect, nor
a wait for a free connection, nor a network that swallows packets. So :class:`ChainlitLayer` runs
every backend call under a :class:`CallDeadline`: when the call is still running ``timeout``
seconds after it started, its task is cancelled and the caller gets a
:class:`~chainlit_orm.errors.TimeoutExceededError`. The backend's own cleanup (a cancelled
statement's connection is never handed out again) runs as the cancellation unwinds.

Why one timer per layer, not one per call: ``asyncio.timeout`` schedules and cancels a timer
handle per use, about 5 us, a tenth of a short SQLite read. Here a call only registers itself in
a dict (well under a microsecond) and one timer, armed while calls are in flight, checks the
registered calls every ``timeout / 20`` seconds (at most 1 s). So the typed error arrives between
``timeout`` and ``timeout`` plus one check interval after the call started.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

from chainlit_orm.defaults import DEFAULT_MIGRATE_TIMEOUT
from chainlit_orm.errors import ConfigurationError, TimeoutExceededError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MIGRATE_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "BoundedBackend",
    "CallDeadline",
    "call_budget",
    "call_end",
    "check_timeout",
]

#: Seconds a data-layer call may take, retries and waits for a connection included.
DEFAULT_TIMEOUT = 30.0
#: Seconds to open one database connection (TCP, TLS, authentication).
DEFAULT_CONNECT_TIMEOUT = 10.0


#: The loop time by which the layer call running in this context must end, or None outside one.
#: Why a context variable: one layer call makes several backend and storage calls (an upload,
#: the row, a clean-up), and each of them must use what is *left* of the call's ``timeout``, not
#: a fresh one, or the call as a whole runs past it.
_CALL_END: ContextVar[float | None] = ContextVar("chainlit_orm_call_end", default=None)


def call_end() -> float | None:
    """The loop time the current layer call must end by (None outside a bounded call)."""
    return _CALL_END.get()


@contextlib.contextmanager
def call_budget(end: float) -> Iterator[None]:
    """Run the body with ``end`` (a loop time) as the deadline of every backend and storage call
    it makes (:meth:`CallDeadline.wrap` bounds by the earlier of this and its own ``timeout``)."""
    token = _CALL_END.set(end)
    try:
        yield
    finally:
        # a coroutine closed by the garbage collector (its loop gone) runs this in whatever
        # context is current then: nothing of this call is set there, so nothing to undo (and
        # setting a value there would hand a stale deadline to unrelated calls)
        with contextlib.suppress(ValueError):
            _CALL_END.reset(token)


def check_timeout(value: object, name: str) -> float:
    """``value`` as a positive, finite number of seconds; a :class:`ConfigurationError`
    naming ``name`` otherwise (a limit of 0, a negative one or infinity bounds nothing)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class CallDeadline:
    """Bounds calls to ``timeout`` seconds each; see the module docstring.

    Invariant: ``_active`` holds exactly the calls in flight on ``_loop`` (key -> deadline,
    task, the task's cancellation count at entry); ``_fired`` the keys this deadline cancelled
    and whose call has not unwound yet.
    """

    def __init__(self, timeout: float, *, what: str = "data-layer call") -> None:
        self.timeout = check_timeout(timeout, "timeout")
        self.what = what
        self._interval = min(max(self.timeout / 20, 0.005), 1.0)
        self._active: dict[int, tuple[float, asyncio.Task[Any], int]] = {}
        self._fired: set[int] = set()
        self._next = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def wrap(self, method: Callable[..., Awaitable[Any]], name: str
             ) -> Callable[..., Awaitable[Any]]:
        """``method`` bounded: same arguments and result, or :class:`TimeoutExceededError`."""
        active, fired = self._active, self._fired

        async def bounded(*args: Any, **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)
            if task is None:  # pragma: no cover - a coroutine always runs in a task here
                return await method(*args, **kwargs)
            if loop is not self._loop or self._timer is None:
                self._arm(loop)
            self._next += 1
            key = self._next
            cancelling = task.cancelling()
            end = loop.time() + self.timeout
            outer = _CALL_END.get()
            if outer is not None and outer < end:
                end = outer  # part of a layer call: what is left of its deadline
            active[key] = (end, task, cancelling)
            try:
                return await method(*args, **kwargs)
            except BaseException as exc:
                if key in fired and task.uncancel() <= cancelling:
                    # this deadline's cancellation, and no other: the call timed out
                    raise TimeoutExceededError(
                        f"{name} did not finish within the {self.what} timeout of "
                        f"{self.timeout:g} s", detail=name,
                    ) from (None if isinstance(exc, asyncio.CancelledError) else exc)
                raise
            finally:
                del active[key]
                fired.discard(key)

        bounded.__name__ = bounded.__qualname__ = name
        bounded.__doc__ = method.__doc__
        return bounded

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            # a new event loop (a test's, a restarted app's): calls left registered on the old
            # one can never unwind here, and their tasks must not be touched
            self._active.clear()
            self._fired.clear()
            self._loop = loop
        self._timer = loop.call_later(self._interval, self._check)

    def _check(self) -> None:
        """Cancel every call past its deadline; re-arm while calls are in flight."""
        loop = self._loop
        assert loop is not None
        now = loop.time()
        for key, (deadline, task, _) in self._active.items():
            if deadline <= now and key not in self._fired:
                self._fired.add(key)
                task.cancel()
        self._timer = loop.call_later(self._interval, self._check) if self._active else None


class BoundedBackend:
    """A backend whose coroutine methods run under a :class:`CallDeadline`; every other
    attribute is the backend's own. (A proxy, so every call a layer makes to its backend is
    bounded, whichever method it is.)"""

    def __init__(self, backend: object, deadline: CallDeadline) -> None:
        self._backend = backend
        self._deadline = deadline

    @property
    def unbounded(self) -> object:
        """The backend itself."""
        return self._backend

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._backend, name)
        if not inspect.iscoroutinefunction(value):
            return value
        bounded = self._deadline.wrap(value, name)
        setattr(self, name, bounded)  # found directly from now on
        return bounded
