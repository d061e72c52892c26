"""``DynamoConfig``: every setting of a DynamoDB layer, backend and table client in one frozen
value, checked once when it is made (the layer's constructor, the backend, the backfill and the
transfer used to repeat the same ten parameters and checks)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from chainlit_orm.errors import ConfigurationError, SchemaError
from chainlit_orm.layers.dynamodb.items import DEFAULT_OFFLOAD_BYTES
from chainlit_orm.models.modelset import DEFAULT_MODELS, ModelSet
from chainlit_orm.schema_gen.dynamo import dynamo_table_spec

__all__ = ["DynamoConfig"]


@dataclass(frozen=True)
class DynamoConfig:
    """How to reach one table and what to store in it.

    Attributes:
        table_name: the table.
        models: the model set (its ``__dynamo__`` declarations give keys and indexes).
        region: AWS region; None takes the AWS chain's (``AWS_REGION``, the profile's), resolved
            when a table client is made.
        endpoint_url: a DynamoDB-compatible endpoint (DynamoDB Local, moto, LocalStack).
        profile: a named profile of the shared AWS config.
        max_pool_connections: botocore connection-pool size, also the number of worker threads.
        retry_mode, max_attempts: botocore's retry mode and attempts in all.
        connect_timeout, read_timeout: seconds botocore waits for a connection and each read.
        offload_bytes: step texts larger than this go to a storage that can read them back.
        retention: DynamoDB's native TTL: thread items carry ``expiresAt`` (activity plus
            retention); None: nothing expires (see :class:`DynamoDataLayer`).

    Raises:
        ConfigurationError: the model set cannot be laid out in one table, or a setting is out
            of range.
    """

    table_name: str
    models: ModelSet = DEFAULT_MODELS
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    max_pool_connections: int = 10
    retry_mode: str = "standard"
    max_attempts: int = 8
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    offload_bytes: int = DEFAULT_OFFLOAD_BYTES
    retention: timedelta | None = None

    def __post_init__(self) -> None:
        try:
            dynamo_table_spec(self.models, self.table_name)
        except SchemaError as exc:
            raise ConfigurationError(str(exc), detail=self.table_name) from exc
        if self.retry_mode not in ("standard", "adaptive"):
            raise ConfigurationError(
                f"retry_mode must be 'standard' or 'adaptive': {self.retry_mode!r}")
        if self.max_pool_connections < 1 or self.max_attempts < 1:
            raise ConfigurationError("max_pool_connections and max_attempts must be positive")
        for name, seconds in (("connect_timeout", self.connect_timeout),
                              ("read_timeout", self.read_timeout)):
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
                    0 < seconds < float("inf")):
                raise ConfigurationError(f"{name} must be a positive number of seconds, got "
                                         f"{seconds!r}", detail=name)
        check_retention(self.retention)


def check_retention(retention: object) -> timedelta | None:
    """``retention=``: None, or a timedelta of at least one second.

    Raises:
        ConfigurationError: anything else.
    """
    if retention is None:
        return None
    if not isinstance(retention, timedelta) or retention < timedelta(seconds=1):
        raise ConfigurationError(f"retention must be a timedelta of at least 1 s: {retention!r}",
                                 detail="retention")
    return retention
