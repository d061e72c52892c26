"""``DynamoDataLayer``: the Chainlit layer on one DynamoDB table (PynamoDB's connection, botocore).

Layout: Chainlit's own single table (contract §3.3) plus the GSIs ``chainlit-orm migrate`` adds,
all derived from the models' ``__dynamo__`` declarations (:mod:`chainlit_orm.schema_gen.dynamo`).
A thread and everything in it (steps, elements, feedback) share the partition ``THREAD#{id}``, so
``get_thread`` is one Query page and ``delete_thread`` one Query plus batched deletes.

How it works, and why:

* **Never on the event loop.** PynamoDB and botocore are synchronous. Every request runs in a
  dedicated thread pool whose size is the connection-pool size (``max_pool_connections``, default
  10), so at most that many requests are in flight and none waits for a pooled connection while
  holding a thread. One botocore client (the one of a PynamoDB ``Connection``, shared by the
  generated item classes) serves every call.
* **Retries are botocore's, and bounded.** ``retry_mode`` and ``max_attempts`` (attempts in
  all) configure botocore's retries of throttling, transient errors and timeouts;
  ``connect_timeout``/``read_timeout`` bound each attempt. What still fails becomes a typed error
  raised ``from`` the botocore error: :class:`~chainlit_orm.errors.TimeoutExceededError` for an
  endpoint that never answered, :class:`~chainlit_orm.errors.BackendUnavailableError` for a
  refused or dropped connection. Contention the layer resolves itself (a condition another writer
  invalidated, a transaction conflict, unprocessed batch items) is retried under
  :class:`RetryPolicy`: a bounded number of tries with jittered exponential backoff.
* **Concurrent writes all land.** The writes of one process to a thread item (``update_thread``,
  a user message's activity bump, feedback counters) take turns under a per-thread lock; across
  processes they commute (metadata paths, ``if_not_exists``, ``ADD`` counters) or are
  conditioned and retried. No transaction is sent that Chainlit's own write order would cancel:
  moto answers a cancelled transaction by restoring a copy of the whole table taken when it began,
  undoing what other clients wrote meanwhile (DynamoDB itself does not).
* **Items are what schema_gen declares.** The attribute types come from the generated PynamoDB
  item classes (:func:`~chainlit_orm.schema_gen.pynamo.pynamodb_models`): numbers keep their type
  (an int stays an int), ``showInput`` is a BOOL or a string, JSON documents are native maps.
  Keys are rendered and parsed from the declared templates (``render_key``/``parse_key``), never
  with ``str.strip``.
* **Hot paths are one call.** ``get_user``, ``get_thread_author``, ``update_step`` and
  ``create_step`` (a user message bumps its thread's activity in the same TransactWriteItems) are
  one request; ``get_thread`` one Query page; a ``list_threads`` page one Query on ``UserActivity``
  (or a feedback index) that returns exactly ``first`` threads, because the cursor *is* the
  index's ``ExclusiveStartKey``.
* **Metadata is merged in place**: ``SET metadata.#k = :v`` / ``REMOVE metadata.#k`` on the map, so
  concurrent merges of different keys all survive; ``createdAt`` and the owner are written with
  ``if_not_exists`` (set once).
* **Feedback** is its own item (``FEEDBACK#{stepId}``), one per step, written in one transaction
  with the per-value counters on the thread item that keep the sparse ``UserFeedback0/1`` indexes
  exact. Feedback Chainlit's layer embedded in step items is read too (and converted by migrate).
* **Item size.** A step text (``input``/``output``) above ``offload_bytes`` (default 100 KB) is
  stored with the storage client under ``threads/{threadId}/steps/{stepId}/{field}`` and read back
  transparently, if that client can read it back (:func:`can_read_back`: an ``async
  read_file(object_key) -> bytes`` method, or chainlit-orm's ``FsspecStorage``; Chainlit's own
  clients cannot). Otherwise the text stays in the item, and a step whose item would exceed
  DynamoDB's 400 KB is refused with :class:`~chainlit_orm.errors.PayloadTooLargeError` before
  anything is written. Texts uploaded for a write DynamoDB then refuses are deleted again. A
  stored text that cannot be read back (its object is gone) reads as :data:`UNREADABLE_TEXT`,
  flagged in the step's metadata under :data:`UNREADABLE_KEY`, and the rest of the thread reads
  as stored: one item never makes a thread unreadable.
* **Deletes and writes.** A delete of a thread waits for this process's writes of it that are
  running, and the writes that arrive meanwhile wait for it; a write that comes after this
  process deleted the thread recreates it as an ownerless stub (as the SQL foreign key does),
  so a thread is either entirely gone or holds what was written (see ``_child_write`` for the
  limit across processes).
* **Search** matches the thread name only, case-insensitively (the one documented deviation from
  the SQL layers, which also search message text), with the package's one folding
  (:mod:`chainlit_orm.models.search`: full Unicode case folding, nothing else): the folded term is
  looked for in the folded name of the summary rows the list index returns, so the answers are
  the SQL layers' on names. The folded copy is computed on read, not stored: a
  ``FilterExpression`` would not read fewer capacity units (filters apply after the read), and a
  stored copy would have to be projected into the list indexes, whose projection cannot change in
  place (every existing table would have to rebuild three GSIs).
* **Checked once.** On first use the layer reads ``DescribeTable`` (and the schema-version item)
  and refuses, naming ``chainlit-orm migrate``, a table without the indexes it needs or with an
  unfinished backfill.
"""


from chainlit_orm.layers.dynamodb.backend import DynamoBackend, can_read_back
from chainlit_orm.layers.dynamodb.backfill import backfill
from chainlit_orm.layers.dynamodb.config import DynamoConfig
from chainlit_orm.layers.dynamodb.items import (
    BATCH_WRITE,
    DEFAULT_OFFLOAD_BYTES,
    FEEDBACK_COUNTERS,
    ITEM_LIMIT,
    TEXT_REFS,
    UNREADABLE_KEY,
    UNREADABLE_TEXT,
    ItemLayout,
)
from chainlit_orm.layers.dynamodb.layer import DynamoDataLayer
from chainlit_orm.layers.dynamodb.table import BATCH_RETRY, CONFLICT_RETRY, RetryPolicy, TableClient

__all__ = [
    "BATCH_RETRY", "BATCH_WRITE", "CONFLICT_RETRY", "DEFAULT_OFFLOAD_BYTES", "FEEDBACK_COUNTERS",
    "ITEM_LIMIT", "TEXT_REFS", "UNREADABLE_KEY", "UNREADABLE_TEXT", "DynamoBackend",
    "DynamoConfig", "DynamoDataLayer", "ItemLayout", "RetryPolicy", "TableClient", "backfill",
    "can_read_back",
]
