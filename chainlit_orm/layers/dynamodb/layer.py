"""``DynamoDataLayer``: the Chainlit data layer on one DynamoDB table, configured by one frozen
:class:`DynamoConfig`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from chainlit.data.storage_clients.base import BaseStorageClient

from chainlit_orm.errors import (
    ConfigurationError,
)
from chainlit_orm.layers.base import ChainlitLayer, ThreadOrder
from chainlit_orm.layers.deadline import DEFAULT_TIMEOUT
from chainlit_orm.layers.dynamodb.backend import DynamoBackend
from chainlit_orm.layers.dynamodb.config import DynamoConfig
from chainlit_orm.layers.dynamodb.items import DEFAULT_OFFLOAD_BYTES
from chainlit_orm.lifecycle.hooks import DEFAULT_HOOK_BREAKER, DEFAULT_HOOK_TIMEOUT, OnDelete
from chainlit_orm.models.modelset import DEFAULT_MODELS, ModelSet

__all__ = ["DynamoConfig", "DynamoDataLayer"]


class DynamoDataLayer(ChainlitLayer):
    """The Chainlit data layer on one DynamoDB table.

    Create or upgrade the table first with ``chainlit-orm migrate 'dynamodb://TABLE?region=...'``
    (it also adds the indexes this layer needs to a table made from Chainlit's docs CloudFormation
    and backfills them); the layer checks the table on first use and refuses, naming that command,
    a table that lacks them.

    Args:
        table_name: the table.
        storage: a Chainlit ``BaseStorageClient`` for element bytes and offloaded step texts.
        region: AWS region (default: the standard chain, ``AWS_REGION``/``AWS_DEFAULT_REGION`` or
            the profile's).
        endpoint_url: a DynamoDB-compatible endpoint (DynamoDB Local, moto, LocalStack).
        profile: a named profile of the shared AWS config for credentials and the default
            region (``dynamodb://...?profile=`` in ``from_env()``).
        models: the model set (its ``__dynamo__`` declarations give keys and indexes).
        max_pool_connections: botocore connection-pool size, which is also the number of worker
            threads, so at most that many requests run at once.
        retry_mode, max_attempts: botocore's retries of throttling, transient errors and
            timeouts: ``"standard"`` (default) or ``"adaptive"`` (client-side rate limiting
            too), and the number of attempts in all (default 8, so 7 retries).
        connect_timeout, read_timeout: seconds botocore waits for a connection (default 5) and
            for each read of an answer (default 30). One API call that gets no answer (a
            black-holed endpoint) therefore ends, with
            :class:`~chainlit_orm.errors.TimeoutExceededError`, after at most ``max_attempts x
            (connect_timeout + read_timeout)`` plus botocore's backoff between attempts (random,
            at most 1, 2, 4, ... 20 s); ``timeout`` bounds the whole data-layer call. A refused
            or dropped connection is retried the same way and ends with
            :class:`~chainlit_orm.errors.BackendUnavailableError`.
        offload_bytes: step texts larger than this go to ``storage`` if it can read them back
            (an ``async read_file(object_key) -> bytes`` method, as
            :class:`~chainlit_orm.storage.FsspecStorage` has). Chainlit's own storage clients
            cannot, so with them texts stay in the item and a step whose item would exceed
            DynamoDB's 400 KB is refused (:class:`~chainlit_orm.errors.PayloadTooLargeError`).
        timeout: seconds each data-layer call may take, botocore's retries included (see
            :class:`~chainlit_orm.layers.base.ChainlitLayer`).
        on_delete, soft_delete, on_delete_timeout, on_delete_breaker: the on-delete hook, the
            opt-in trash, the bound of one hook call (seconds, default 30) and the hook calls in
            a row past it after which a purge or an erasure stops calling the hook (default
            16); see :class:`~chainlit_orm.layers.base.ChainlitLayer`.
        retention: DynamoDB's native TTL: a thread item carries ``expiresAt`` (its activity
            plus ``retention``), moved by the write that moves its activity (no extra write);
            reads treat a thread past it as gone at once, DynamoDB removes the item within
            days, and ``chainlit-orm purge`` removes what it leaves (its other items, its
            files: TTL removes no file and calls no hook). None (default): nothing expires.
        tracing: an OpenTelemetry span per call (``otel`` extra); None (default) follows
            ``CHAINLIT_ORM_TRACING``. See :mod:`chainlit_orm.tracing`.

    The keyword arguments make a :class:`DynamoConfig` (``self.config``), which checks them.

    Credentials come from the standard AWS chain (environment, shared profile, instance/task
    role). Threads are listed by activity only (``thread_order="created"`` is refused).
    """

    def __init__(
        self,
        table_name: str,
        storage: BaseStorageClient | None = None,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        profile: str | None = None,
        models: ModelSet = DEFAULT_MODELS,
        max_pool_connections: int = 10,
        retry_mode: str = "standard",
        max_attempts: int = 8,
        offload_bytes: int = DEFAULT_OFFLOAD_BYTES,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        thread_order: ThreadOrder = "activity",
        max_text_bytes: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_delete: OnDelete | None = None,
        soft_delete: timedelta | None = None,
        on_delete_timeout: float = DEFAULT_HOOK_TIMEOUT,
        on_delete_breaker: int = DEFAULT_HOOK_BREAKER,
        retention: timedelta | None = None,
        tracing: bool | None = None,
    ) -> None:
        if thread_order != "activity":
            raise ConfigurationError(
                "DynamoDataLayer lists threads by activity (its list index is ordered by it); "
                f"thread_order={thread_order!r} is not supported")
        self.config = DynamoConfig(
            table_name, models=models, region=region, endpoint_url=endpoint_url,
            profile=profile, max_pool_connections=max_pool_connections, retry_mode=retry_mode,
            max_attempts=max_attempts, connect_timeout=connect_timeout,
            read_timeout=read_timeout, offload_bytes=offload_bytes, retention=retention,
        )
        backend = DynamoBackend(self.config, storage=lambda: self.storage)
        kwargs: dict[str, Any] = {}
        if max_text_bytes is not None:
            kwargs["max_text_bytes"] = max_text_bytes
        super().__init__(backend, storage=storage, thread_order=thread_order, timeout=timeout,
                         on_delete=on_delete, soft_delete=soft_delete,
                         on_delete_timeout=on_delete_timeout,
                         on_delete_breaker=on_delete_breaker, tracing=tracing, **kwargs)
        self.dynamo: DynamoBackend = backend


