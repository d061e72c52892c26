"""OpenTelemetry spans for data-layer and storage calls: optional, off by default.

Install the extra (``pip install 'chainlit-orm[otel]'``, which brings ``opentelemetry-api``) and
turn it on per layer (``SQLDataLayer(..., tracing=True)``, ``DynamoDataLayer(..., tracing=True)``,
``FsspecStorage(..., tracing=True)``) or for the whole process (``CHAINLIT_ORM_TRACING=1``). The
spans go to whatever tracer provider the app configured (``opentelemetry-sdk`` with an
exporter); with none, OpenTelemetry's API drops them.

What is emitted (names and attributes are this module's constants):

* one span per data-layer call, ``chainlit_orm.<method>`` (``chainlit_orm.create_step``, ...),
  a child of the caller's current span (Chainlit's, the app's, or none), with ``db.system.name``
  (``sqlite``, ``postgresql``, ``mysql``, ``mariadb``, ``aws.dynamodb``),
  ``chainlit_orm.backend`` (``sql`` or ``dynamodb``), ``db.operation.name`` (the method),
  ``chainlit_orm.thread_id`` when the call names a thread, ``chainlit_orm.statements`` (SQL
  statements sent, BEGIN/COMMIT included) or ``chainlit_orm.api_calls`` (DynamoDB requests),
  ``db.response.returned_rows`` (rows fetched / items returned), ``chainlit_orm.retries`` (the
  layer's retries, and botocore's on DynamoDB) and, when it fails, ``error.type`` (the
  exception's class), the exception event and an error status;
* one span per storage call, ``chainlit_orm.storage.<method>`` (``upload_file``,
  ``delete_file``, ``discard_file``, ``read_file``, ``get_read_url``, ``list_keys``), a child of
  the data-layer call that made it, with ``chainlit_orm.storage.backend`` (``s3``, ``azure``,
  ``local``, ``memory``, or the client's class for a storage client that is not
  :class:`~chainlit_orm.storage.FsspecStorage`), ``chainlit_orm.object_key``,
  ``chainlit_orm.bytes`` (uploaded or read) and ``error.type``.

A SQL write that joined another caller's multi-row statement (the layer combines concurrent step
writes) reports the statements under the span of the call that sent it; its own span counts 0.

Why nothing is paid when it is off: turning it on replaces the traced methods *of that
instance* with traced ones (the class is untouched), so a layer without tracing runs exactly the
code it ran before this module existed. The backends' counters check one module-level flag,
:data:`ACTIVE` (False until something is traced in this process), once per backend call; no
tracer is looked up on any call path (it is fetched once, when an instance is instrumented).
"""

from __future__ import annotations

import functools
import os
import types
from collections.abc import Callable, Coroutine, Mapping
from contextvars import ContextVar
from typing import Any, TypeVar

from chainlit_orm.errors import ConfigurationError, MissingDependencyError

__all__ = [
    "ACTIVE",
    "ENV_TRACING",
    "TRACED_LAYER_CALLS",
    "TRACED_STORAGE_CALLS",
    "count",
    "instrument_layer",
    "instrument_storage",
    "wanted",
]

#: The environment variable that turns tracing on for every layer and storage made after it is
#: read (``1``/``true``/``yes``/``on``; ``0``/``false``/``no``/``off`` or unset: off).
ENV_TRACING = "CHAINLIT_ORM_TRACING"

#: True once a layer or storage of this process is traced: the backends count statements, rows
#: and retries only then (one check of this flag per backend call).
ACTIVE = False

#: The data-layer methods that get a span: Chainlit's ``BaseDataLayer`` interface and the
#: layer's own public calls.
TRACED_LAYER_CALLS = (
    "get_user", "create_user", "update_thread", "get_thread_author", "get_thread",
    "list_threads", "delete_thread", "restore_thread", "erase_user", "purge", "create_step",
    "update_step", "delete_step", "get_step", "get_favorite_steps", "create_element",
    "get_element", "delete_element", "upsert_feedback", "delete_feedback", "check",
)
#: The storage methods that get a span.
TRACED_STORAGE_CALLS = ("upload_file", "delete_file", "discard_file", "read_file", "get_read_url",
                        "list_keys")

SPAN_PREFIX = "chainlit_orm."
SYSTEM = "db.system.name"
BACKEND = "chainlit_orm.backend"
OPERATION = "db.operation.name"
THREAD_ID = "chainlit_orm.thread_id"
STATEMENTS = "chainlit_orm.statements"
API_CALLS = "chainlit_orm.api_calls"
ROWS = "db.response.returned_rows"
RETRIES = "chainlit_orm.retries"
ERROR_TYPE = "error.type"
STORAGE_BACKEND = "chainlit_orm.storage.backend"
OBJECT_KEY = "chainlit_orm.object_key"
BYTES = "chainlit_orm.bytes"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])


def wanted(option: object) -> bool:
    """Whether to trace: the ``tracing=`` option when given, else :data:`ENV_TRACING`.

    Raises:
        ConfigurationError: the option is not a bool, or the variable is not a yes/no word.
    """
    if option is not None:
        if not isinstance(option, bool):
            raise ConfigurationError(f"tracing must be True, False or None, got {option!r}",
                                     detail="tracing")
        return option
    raw = os.environ.get(ENV_TRACING, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigurationError(f"{ENV_TRACING}={raw!r}: use 1 (on) or 0 (off)", detail=ENV_TRACING)


class CallStats:
    """What one data-layer call sent, summed over its backend calls (see :func:`count`)."""

    __slots__ = ("api_calls", "retries", "rows", "statements")

    def __init__(self) -> None:
        self.statements = 0
        self.api_calls = 0
        self.rows = 0
        self.retries = 0


#: The counters of the traced data-layer call running in this context (None outside one).
_STATS: ContextVar[CallStats | None] = ContextVar("chainlit_orm_call_stats", default=None)


def count(*, statements: int = 0, api_calls: int = 0, rows: int = 0, retries: int = 0) -> None:
    """Add to the counters of the traced call running in this context (nothing outside one).
    Callers check :data:`ACTIVE` first, so an untraced process does not get here."""
    stats = _STATS.get()
    if stats is not None:
        stats.statements += statements
        stats.api_calls += api_calls
        stats.rows += rows
        stats.retries += retries


def _otel() -> tuple[Any, Any, Any]:
    """OpenTelemetry's ``trace`` module, ``SpanKind`` and ``Status``/``StatusCode``.

    Raises:
        MissingDependencyError: ``opentelemetry-api`` is not installed (extra ``otel``).
    """
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise MissingDependencyError("opentelemetry-api", "otel") from exc
    return trace, trace.SpanKind, trace.StatusCode


def _tracer() -> Any:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("chainlit-orm")
    except PackageNotFoundError:  # a source tree that was never installed
        installed = "0+unknown"
    trace, _, _ = _otel()
    return trace.get_tracer("chainlit_orm", installed)


def _activate() -> None:
    global ACTIVE
    ACTIVE = True


def instrument_layer(layer: Any, *, system: str, backend: str,
                     requeue: Callable[[Any], Any]) -> None:
    """Give ``layer`` (a :class:`~chainlit_orm.layers.base.ChainlitLayer`) a span per call of
    :data:`TRACED_LAYER_CALLS`, and its storage a span per call (see the module docstring).

    A method Chainlit queues before a session's first message (``queue_until_user_message``,
    passed as ``requeue``: this module imports no layer) is traced *inside* the queue, so the
    span covers the call when it runs, not when it is queued. A storage client with an
    ``enable_tracing()`` method (:class:`~chainlit_orm.storage.FsspecStorage`) traces itself;
    any other (Chainlit's own clients) is traced where the layer calls it.

    Raises:
        MissingDependencyError: ``opentelemetry-api`` is not installed.
    """
    tracer = _tracer()
    _, kind, _ = _otel()
    counter = API_CALLS if backend == "dynamodb" else STATEMENTS
    base = {SYSTEM: system, BACKEND: backend}
    cls = type(layer)
    for name in TRACED_LAYER_CALLS:
        method = getattr(cls, name)
        queued = getattr(method, "queued_until_user_message", False)
        inner = method.__wrapped__ if queued else method
        traced = _layer_span(tracer, kind.CLIENT, inner, name,
                             {**base, OPERATION: name}, counter)
        if queued:
            traced = requeue(traced)
        setattr(layer, name, types.MethodType(traced, layer))
    storage = layer.storage
    if storage is not None and not getattr(storage, "traced", False):
        enable = getattr(storage, "enable_tracing", None)
        if callable(enable):
            enable()
        else:  # a client of Chainlit's: traced where the layer calls it
            call = _foreign_storage_span(tracer, kind.CLIENT,
                                         cls._storage_call, type(storage).__name__)
            layer._storage_call = types.MethodType(call, layer)
    _activate()


def instrument_storage(storage: Any) -> None:
    """Give an :class:`~chainlit_orm.storage.FsspecStorage` a span per call of
    :data:`TRACED_STORAGE_CALLS` (once; a second call changes nothing).

    Raises:
        MissingDependencyError: ``opentelemetry-api`` is not installed.
    """
    if getattr(storage, "traced", False):
        return
    tracer = _tracer()
    _, kind, _ = _otel()
    cls = type(storage)
    for name in TRACED_STORAGE_CALLS:
        traced = _storage_span(tracer, kind.CLIENT, getattr(cls, name), name,
                               storage.kind)
        setattr(storage, name, types.MethodType(traced, storage))
    storage.traced = True
    _activate()


def _layer_span(tracer: Any, kind: Any, method: F, name: str,
                attributes: Mapping[str, Any], counter: str) -> F:
    span_name = SPAN_PREFIX + name
    thread_of = _THREAD_ID_OF.get(name)

    @functools.wraps(method)
    async def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        stats = CallStats()
        token = _STATS.set(stats)
        try:
            attributes_: Mapping[str, Any] = attributes
            if thread_of is not None:
                thread_id = thread_of(args, kwargs)
                if isinstance(thread_id, str):
                    attributes_ = {**attributes, THREAD_ID: thread_id}
            with tracer.start_as_current_span(span_name, kind=kind, attributes=attributes_,
                                              record_exception=True,
                                              set_status_on_exception=True) as span:
                error: str | None = None
                try:
                    return await method(self, *args, **kwargs)
                except BaseException as exc:
                    error = type(exc).__qualname__
                    raise
                finally:
                    # one call (one lock in the SDK) for everything known at the end
                    sent = stats.api_calls if counter == API_CALLS else stats.statements
                    end: dict[str, int | str] = {counter: sent, ROWS: stats.rows,
                                                 RETRIES: stats.retries}
                    if error is not None:
                        end[ERROR_TYPE] = error
                    span.set_attributes(end)
        finally:
            _STATS.reset(token)

    return traced  # type: ignore[return-value]


def _storage_span(tracer: Any, kind: Any, method: F, name: str,
                  backend: str) -> F:
    span_name = SPAN_PREFIX + "storage." + name

    @functools.wraps(method)
    async def traced(self: Any, key: Any, *args: Any, **kwargs: Any) -> Any:
        attributes: dict[str, str | int] = {
            STORAGE_BACKEND: backend, OPERATION: name,
            OBJECT_KEY: key if isinstance(key, str) else repr(key)}
        if name == "upload_file":
            data = args[0] if args else kwargs.get("data")
            if isinstance(data, bytes | str):
                attributes[BYTES] = len(data.encode() if isinstance(data, str) else data)
        with tracer.start_as_current_span(span_name, kind=kind, attributes=attributes,
                                          record_exception=True,
                                          set_status_on_exception=True) as span:
            try:
                result = await method(self, key, *args, **kwargs)
            except BaseException as exc:
                span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
                raise
            if name == "read_file" and isinstance(result, bytes):
                span.set_attribute(BYTES, len(result))
            return result

    return traced  # type: ignore[return-value]


def _foreign_storage_span(tracer: Any, kind: Any, storage_call: Any,
                          backend: str) -> Any:
    """The layer's ``_storage_call`` with a span, for a storage client this module cannot
    instrument itself (Chainlit's own clients)."""

    async def traced(self: Any, what: str, object_key: str, make: Any, **options: Any) -> Any:
        attributes = {STORAGE_BACKEND: backend, OPERATION: what, OBJECT_KEY: object_key}
        with tracer.start_as_current_span(SPAN_PREFIX + "storage." + what, kind=kind,
                                          attributes=attributes, record_exception=True,
                                          set_status_on_exception=True) as span:
            try:
                return await storage_call(self, what, object_key, make, **options)
            except BaseException as exc:
                span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
                raise

    return traced


def _arg(index: int, name: str) -> Callable[[tuple[Any, ...], Mapping[str, Any]], Any]:
    def get(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        return args[index] if len(args) > index else kwargs.get(name)

    return get


def _step_thread(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    step = args[0] if args else kwargs.get("step_dict")
    return step.get("threadId") if isinstance(step, Mapping) else None


def _attr_thread(name: str, attribute: str) -> Callable[[tuple[Any, ...], Mapping[str, Any]], Any]:
    def get(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        value = args[0] if args else kwargs.get(name)
        return getattr(value, attribute, None)

    return get


#: How each call that names a thread gives its id.
_THREAD_ID_OF: dict[str, Callable[[tuple[Any, ...], Mapping[str, Any]], Any]] = {
    "update_thread": _arg(0, "thread_id"),
    "get_thread_author": _arg(0, "thread_id"),
    "get_thread": _arg(0, "thread_id"),
    "delete_thread": _arg(0, "thread_id"),
    "restore_thread": _arg(0, "thread_id"),
    "get_element": _arg(0, "thread_id"),
    "delete_element": _arg(1, "thread_id"),
    "create_step": _step_thread,
    "update_step": _step_thread,
    "create_element": _attr_thread("element", "thread_id"),
    "upsert_feedback": _attr_thread("feedback", "threadId"),
}
