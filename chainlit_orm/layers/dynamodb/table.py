"""The DynamoDB table client: one PynamoDB connection (one botocore client and pool), the worker
threads every call runs in, the one map from AWS error codes to this package's typed errors,
transactions, batches, paginated queries, and the check of the table on first use.

It knows nothing of Chainlit entities: the backend, the backfill and the transfer call its public
methods.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chainlit_orm import tracing as _tracing
from chainlit_orm.errors import (
    BackendUnavailableError,
    ChainlitORMError,
    ConfigurationError,
    InvalidInputError,
    MissingDependencyError,
    PayloadTooLargeError,
    SchemaError,
    SchemaOutdatedError,
    TimeoutExceededError,
    migrate_command,
)
from chainlit_orm.layers.dynamodb.config import DynamoConfig
from chainlit_orm.layers.dynamodb.items import BATCH_WRITE, string_value

# the package's one retry policy (re-exported here, where the DynamoDB layer has always had it)
from chainlit_orm.retry import BATCH_RETRY as BATCH_RETRY
from chainlit_orm.retry import CONFLICT_RETRY as CONFLICT_RETRY
from chainlit_orm.retry import RetryPolicy as RetryPolicy
from chainlit_orm.schema_gen.dynamo import (
    MIGRATION_LOCK_KEY,
    PARTITION_KEY,
    SCHEMA_VERSION_KEY,
    SORT_KEY,
    GsiSpec,
)

try:
    import botocore.exceptions
    import botocore.session
    from pynamodb.connection import Connection

except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("pynamodb", "dynamodb") from exc

logger = logging.getLogger(__name__)

_RETRYABLE_TX = {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
_THROTTLED = {
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable", "LimitExceededException",
}
#: AWS error codes that mean "these credentials are refused" (one table for the layer and for
#: ``chainlit-orm migrate``).
AUTH_ERRORS = frozenset({
    "UnrecognizedClientException", "InvalidSignatureException", "AccessDeniedException",
    "ExpiredTokenException", "MissingAuthenticationTokenException",
})
#: botocore exceptions that mean the AWS setup is incomplete (no region, no credentials).
SETUP_ERRORS = frozenset({"NoRegionError", "NoCredentialsError", "PartialCredentialsError",
                          "ProfileNotFound"})
#: Seconds the first-use check waits for a running migration (its lock item) to finish.
MIGRATION_WAIT = 20.0

#: botocore's exceptions for a request that got no answer in time (connect or read timeout).
_TIMEOUTS = ("ConnectTimeoutError", "ReadTimeoutError")


class ConditionFailed(Exception):
    """A condition of a write failed (internal; callers decide what it means).

    Attributes:
        item: the item as it was (``ReturnValuesOnConditionCheckFailure=ALL_OLD``), or None.
        reasons: for a cancelled transaction, the code of each action ("None" when it passed).
    """

    def __init__(self, item: dict[str, Any] | None, reasons: list[str] | None = None) -> None:
        super().__init__("condition failed")
        self.item = item
        self.reasons = reasons or []


def _botocore_session(profile: str | None) -> botocore.session.Session:
    """A botocore session on the AWS chain, with the named shared-config ``profile`` if any."""
    return botocore.session.Session(profile=profile)


def resolve_region(region: str | None, profile: str | None) -> str:
    """``region``, else the AWS chain's (``AWS_REGION``/``AWS_DEFAULT_REGION``, the profile's).

    Raises:
        ConfigurationError: no region anywhere, or the profile does not exist.
    """
    if region is not None:
        return region
    try:
        found = _botocore_session(profile).get_config_variable("region")
    except botocore.exceptions.ProfileNotFound as exc:
        raise ConfigurationError(str(exc), detail=profile) from exc
    if not found:
        raise ConfigurationError(
            "no AWS region: pass region=, set AWS_REGION/AWS_DEFAULT_REGION, or use a "
            "profile with a region"
        )
    return str(found)


class _ProfileConnection(Connection):
    """PynamoDB's connection, its botocore sessions opened on a named profile.

    PynamoDB opens one session per thread (botocore clients are not thread-safe to create) with
    the default profile only; a ``dynamodb://...?profile=`` URL must mean the same here as in
    ``chainlit-orm migrate``, so each of those sessions is opened on the profile instead.
    """

    def __init__(self, profile: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._profile = profile

    @property
    def session(self) -> botocore.session.Session:
        if getattr(self._local, "session", None) is None:
            self._local.session = _botocore_session(self._profile)
        session: botocore.session.Session = self._local.session
        return session


class TransactionRetry(Exception):
    """Send the request again (internal): a transaction cancelled by a conflict or throttling, a
    write refused because its item is in a transaction, or an answer cut short."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(", ".join(reasons))
        self.reasons = reasons


#: The reason given when an answer was cut short (see :func:`answer_complete`).
CUT_SHORT = "AnswerCutShort"


def answer_complete(response: Mapping[str, Any]) -> bool:
    """Whether an answer is known to be whole.

    An answer whose connection closed in the middle of its headers, before ``Content-Length``,
    is taken by urllib3 as a complete answer with an empty body (the body of an HTTP/1.1 answer
    without a length ends when the connection does), and botocore then reads ``{}``: a Query
    "without items", a write "acknowledged", an error without its code. DynamoDB (and moto) send
    ``Content-Length`` and ``x-amz-crc32`` with every answer, so one that has neither, and is not
    chunked, was cut short. Every request the layer sends may be sent again (the writes are
    idempotent or conditioned), so it is, under :data:`CONFLICT_RETRY`.
    """
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders") or {}
    return ("content-length" in headers or "x-amz-crc32" in headers
            or "chunked" in str(headers.get("transfer-encoding", "")).lower())


def _returned(result: Mapping[str, Any]) -> int:
    """The items an answer carries (Query/Scan pages, GetItem, BatchGetItem), for tracing."""
    if "Items" in result:
        return len(result["Items"])
    if "Item" in result:
        return 1
    return sum(len(items) for items in (result.get("Responses") or {}).values()
               if isinstance(items, list))


class TableClient:
    """One table's connection, worker threads and calls, with typed errors (see the module)."""

    def __init__(self, config: DynamoConfig) -> None:
        """Resolve the region (see :func:`resolve_region`) and open the connection's pool; no
        request is sent until the first call."""
        self.table = config.table_name
        self.models = config.models
        self.region = resolve_region(config.region, config.profile)
        self.endpoint_url = config.endpoint_url
        self.profile = config.profile
        self.connect_timeout = config.connect_timeout
        self.read_timeout = config.read_timeout
        self.max_attempts = config.max_attempts
        self.max_pool_connections = config.max_pool_connections
        # One PynamoDB connection (one botocore client, one pool) for every item class, with
        # botocore's own retry configuration instead of PynamoDB's legacy loop. botocore reads
        # its "max_attempts" as retries after the first attempt; "total_max_attempts" is what
        # this layer's max_attempts means: attempts in all.
        self.connection = _ProfileConnection(
            config.profile,
            region=self.region, host=config.endpoint_url,
            max_pool_connections=config.max_pool_connections,
            connect_timeout_seconds=config.connect_timeout,
            read_timeout_seconds=config.read_timeout,
            retry_configuration={"mode": config.retry_mode,
                                 "total_max_attempts": config.max_attempts},
        )
        self._executor = ThreadPoolExecutor(
            max_workers=config.max_pool_connections, thread_name_prefix="chainlit-orm-dynamodb"
        )

    @property
    def client(self) -> Any:
        """The botocore client every request goes through (PynamoDB's connection's)."""
        return self.connection.client

    @property
    def url(self) -> str:
        query = f"region={self.region}"
        if self.endpoint_url:
            query += f"&endpoint_url={self.endpoint_url}"
        if self.profile:
            query += f"&profile={self.profile}"
        return f"dynamodb://{self.table}?{query}"

    def command(self) -> str:
        """The exact ``chainlit-orm migrate`` command for this table and model set
        (:func:`chainlit_orm.errors.migrate_command`)."""
        return migrate_command(self.url, self.models)

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One API call in the worker pool, with typed errors; failed conditions raise
        :class:`ConditionFailed`.

        A plain write refused because its item is part of an ongoing transaction
        (``TransactionConflictException``, which botocore does not retry) and an answer cut
        short (:func:`answer_complete`) are sent again under :data:`CONFLICT_RETRY`: every
        request the layer sends is a read, an idempotent write or a conditioned one, so sending
        it again is safe, and giving up would lose it. Transactions are retried by
        :meth:`transact`."""
        if operation == "transact_write_items":
            return await self._raw(operation, **kwargs)
        try:
            return await CONFLICT_RETRY.call(lambda: self._raw(operation, **kwargs),
                                             retry_on=TransactionRetry)
        except TransactionRetry as last:
            raise BackendUnavailableError(
                f"DynamoDB {operation} on table {self.table} failed {CONFLICT_RETRY.attempts} "
                f"times ({', '.join(last.reasons)}): the item stayed in other transactions, or "
                "the answers were cut short", detail=last.reasons,
            ) from last

    async def _raw(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if not _tracing.ACTIVE:  # the one check paid when tracing is off
            return await loop.run_in_executor(
                self._executor, functools.partial(self._call_sync, operation, kwargs)
            )
        try:
            result = await loop.run_in_executor(
                self._executor, functools.partial(self._call_sync, operation, kwargs)
            )
        except BaseException:
            _tracing.count(api_calls=1)
            raise
        metadata = result.get("ResponseMetadata") or {}
        _tracing.count(api_calls=1, rows=_returned(result),
                       retries=int(metadata.get("RetryAttempts") or 0))
        return result

    def _call_sync(self, operation: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        client = self.connection.client
        try:
            result: dict[str, Any] = getattr(client, operation)(TableName=self.table, **kwargs) \
                if operation not in ("transact_write_items", "batch_write_item",
                                     "batch_get_item") else getattr(client, operation)(**kwargs)
        except botocore.exceptions.ClientError as exc:
            if not answer_complete(exc.response):
                raise TransactionRetry([CUT_SHORT]) from exc
            raise self._map_client_error(operation, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            name = type(exc).__name__
            if name in SETUP_ERRORS:
                raise ConfigurationError(f"{exc} (DynamoDB table {self.table})") from exc
            if name in _TIMEOUTS:
                raise TimeoutExceededError(
                    f"DynamoDB {operation} on table {self.table} got no answer within the "
                    f"configured timeouts (connect {self.connect_timeout:g} s, read "
                    f"{self.read_timeout:g} s, {self.max_attempts} attempts)", detail=name,
                ) from exc
            raise BackendUnavailableError(
                f"cannot reach DynamoDB for table {self.table}: {exc}"
            ) from exc
        if not answer_complete(result):
            raise TransactionRetry([CUT_SHORT])
        return result

    def _map_client_error(self, operation: str,
                          exc: botocore.exceptions.ClientError) -> Exception:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", ""), error.get("Message", "")
        if code == "ConditionalCheckFailedException":
            item = exc.response.get("Item")
            return ConditionFailed(dict(item) if item else None)
        if code == "TransactionConflictException":  # the item is in an ongoing transaction
            return TransactionRetry([code])
        if code == "TransactionCanceledException":
            reasons = [r.get("Code", "None") for r in exc.response.get("CancellationReasons", [])]
            if any(r in _RETRYABLE_TX for r in reasons) or not reasons:
                return TransactionRetry(reasons)
            if any(r == "ValidationError" for r in reasons):
                return InvalidInputError(f"DynamoDB {operation} refused: {message}")
            return ConditionFailed(None, reasons)
        if code == "ResourceNotFoundException":  # migrate creates what is missing
            return SchemaOutdatedError(
                f"DynamoDB table {self.table} (or an index) does not exist; run: {self.command()}",
                detail=code,
            )
        if code == "ValidationException":
            if "size" in message.lower() and ("exceed" in message.lower()
                                              or "maximum" in message.lower()):
                return PayloadTooLargeError(f"DynamoDB refused the item: {message}", detail=code)
            return InvalidInputError(f"DynamoDB {operation} refused the request: {message}",
                                     detail=code)
        if code in _THROTTLED:
            return BackendUnavailableError(
                f"DynamoDB {operation} still throttled or failing after the configured retries "
                f"({code})", detail=code)
        if code in AUTH_ERRORS:
            return BackendUnavailableError(
                f"DynamoDB refused the credentials for table {self.table} ({code})", detail=code)
        return ChainlitORMError(f"DynamoDB {operation} failed: {code}: {message}", detail=code)

    async def check(self, indexes: Mapping[str, GsiSpec]) -> None:
        """The first-use check: keyed PK/SK, every index present, ACTIVE and projecting what the
        layer reads, no unfinished backfill."""
        try:
            described = (await self.call("describe_table"))["Table"]
        except SchemaError as exc:
            raise SchemaOutdatedError(
                f"DynamoDB table {self.table} does not exist; create it with: {self.command()}"
            ) from exc
        keys = {k["KeyType"]: k["AttributeName"] for k in described["KeySchema"]}
        if keys != {"HASH": PARTITION_KEY, "RANGE": SORT_KEY}:
            raise SchemaError(f"DynamoDB table {self.table} is not keyed PK/SK: {keys}")
        existing = {g["IndexName"]: g for g in described.get("GlobalSecondaryIndexes", [])}
        problems = []
        for name, spec in indexes.items():
            found = existing.get(name)
            if found is None:
                problems.append(f"index {name} is missing")
                continue
            found_keys = {k["KeyType"]: k["AttributeName"] for k in found["KeySchema"]}
            if found_keys != {"HASH": spec.pk_attribute, "RANGE": spec.sk_attribute}:
                problems.append(f"index {name} has keys {found_keys}")
            projection = found.get("Projection", {})
            if spec.projection == "INCLUDE" and projection.get("ProjectionType") != "ALL" and (
                    set(spec.attributes) - set(projection.get("NonKeyAttributes", []))):
                problems.append(f"index {name} does not project {', '.join(spec.attributes)}")
            if found.get("IndexStatus", "ACTIVE") != "ACTIVE":
                problems.append(f"index {name} is {found.get('IndexStatus')}, not ACTIVE yet")
        if problems:
            # only missing indexes: what migrate adds (an outdated table); anything else (other
            # keys, a projection, an index still building) is a table migrate cannot fix as is
            missing_only = all(problem.endswith(" is missing") for problem in problems)
            raise (SchemaOutdatedError if missing_only else SchemaError)(
                f"DynamoDB table {self.table} cannot be used by chainlit-orm: "
                f"{'; '.join(problems)}. Run: {self.command()}",
                detail=problems,
            )
        version = await self._wait_for_migration()
        if "backfillPending" in version:
            raise SchemaOutdatedError(
                f"DynamoDB table {self.table} has an unfinished backfill; run: {self.command()}"
            )

    async def _wait_for_migration(self) -> dict[str, Any]:
        """The schema-version item, read once no ``chainlit-orm migrate`` holds the table's lock
        item (its lease not expired), waiting at most :data:`MIGRATION_WAIT` seconds: a layer
        starting during a migration checks the finished table rather than a half-migrated one.
        Both items share a partition, so one Query reads them. Still held after the wait (a GSI
        backfill can take hours): a :class:`SchemaError`, and the next call checks again."""
        deadline = time.monotonic() + MIGRATION_WAIT
        while True:
            items = (await self.call(
                "query", KeyConditionExpression="#p = :p",
                ExpressionAttributeNames={"#p": PARTITION_KEY},
                ExpressionAttributeValues={":p": string_value(SCHEMA_VERSION_KEY[PARTITION_KEY])},
                ConsistentRead=True)).get("Items", [])
            by_sort = {item[SORT_KEY]["S"]: item for item in items}
            lock = by_sort.get(MIGRATION_LOCK_KEY[SORT_KEY])
            expires = float(lock.get("lockExpiresAt", {}).get("N", "0")) if lock else 0.0
            if expires <= time.time():
                return by_sort.get(SCHEMA_VERSION_KEY[SORT_KEY]) or {}
            if time.monotonic() >= deadline:
                raise SchemaError(
                    f"DynamoDB table {self.table} is being migrated (chainlit-orm migrate holds "
                    f"its lock); the layer checks it again at its next call", detail="migrating")
            await asyncio.sleep(0.5)

    async def transact(self, actions: list[dict[str, Any]]) -> None:
        """TransactWriteItems, retrying conflicts with other transactions (:data:`CONFLICT_RETRY`).

        botocore gives each call one ``ClientRequestToken``, kept across its own retries, so a
        transaction whose answer was lost is not applied twice by DynamoDB. (moto ignores the
        token; every transaction the layer sends also carries a condition that fails once it
        has been applied, and the caller then reads the item again.)
        """
        try:
            await CONFLICT_RETRY.call(
                lambda: self.call("transact_write_items", TransactItems=actions),
                retry_on=TransactionRetry)
        except TransactionRetry as last:
            raise BackendUnavailableError(
                f"DynamoDB transaction kept conflicting ({', '.join(last.reasons)})",
                detail="TransactionConflict") from last

    async def batch_write(self, requests: list[dict[str, Any]], *,
                           last_after_rest: bool = False) -> None:
        """BatchWriteItem in chunks of 25, retrying unprocessed items with backoff.

        ``last_after_rest``: every chunk but the last is sent at once, and the last only once
        they all succeeded (``delete_thread`` puts its thread item there): two round trips of
        latency instead of one per chunk, with the same number of calls.
        """
        chunks = [requests[i:i + BATCH_WRITE] for i in range(0, len(requests), BATCH_WRITE)]
        if last_after_rest and len(chunks) > 2:
            outcomes = await asyncio.gather(
                *(self.batch_write(chunk) for chunk in chunks[:-1]), return_exceptions=True)
            for outcome in outcomes:  # all settled; the first failure is raised, none dropped
                if isinstance(outcome, BaseException):
                    raise outcome
            await self.batch_write(chunks[-1])
            return
        for pending in chunks:
            async for _ in BATCH_RETRY.tries():  # unprocessed items: back off, send the rest
                result = await self.call("batch_write_item",
                                         RequestItems={self.table: pending})
                pending = result.get("UnprocessedItems", {}).get(self.table, [])
                if not pending:
                    break
            else:
                raise BackendUnavailableError(
                    f"DynamoDB left {len(pending)} writes unprocessed after retries")

    async def batch_get(self, keys: list[dict[str, Any]], **options: Any
                         ) -> list[dict[str, Any]]:
        """BatchGetItem (consistent), retrying unprocessed keys; items in no particular order."""
        found: list[dict[str, Any]] = []
        pending: dict[str, Any] = {"Keys": keys, "ConsistentRead": True, **options}
        async for _ in BATCH_RETRY.tries():  # unprocessed keys: back off, ask for the rest
            result = await self.call("batch_get_item", RequestItems={self.table: pending})
            found += result.get("Responses", {}).get(self.table, [])
            unprocessed = result.get("UnprocessedKeys", {}).get(self.table)
            if not unprocessed:
                return found
            pending = unprocessed
        raise BackendUnavailableError("DynamoDB left keys unprocessed after retries")

    async def query_all(self, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            result = await self.call("query", **kwargs)
            items += result.get("Items", [])
            last = result.get("LastEvaluatedKey")
            if not last:
                return items
            kwargs["ExclusiveStartKey"] = last

    async def close(self) -> None:
        """Close the botocore client in its worker pool, then stop the pool."""
        client = getattr(self.connection, "_client", None)
        if client is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, client.close)
        self._executor.shutdown(wait=False)
