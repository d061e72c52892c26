"""Copy, export and import: moving every row and file of a store somewhere else, resumably.

The loop is the same for all three: the destination gets its schema (``migrate``); users are
checked for conflicts and written; then threads, a batch at a time in the source's id order: the
batch is checked for conflicts, its element files are read (and hashed) and stored, then its rows
are written, and the checkpoint records the batch's last thread id. Killed at any point and run
again with the same arguments, a copy starts after the last recorded batch and writes the batch
that was in flight again (every write is an upsert keyed by id, every file an overwrite of the
same key), so it ends with exactly one copy of every row and file. Finally the destination is
verified against the source (:mod:`chainlit_orm.transfer.verify`) and the checkpoint removed.

The checkpoint is a small JSON file, ``.chainlit-orm-copy-<hash>.json`` in the current directory
by default, named after a hash of the source, destination and scope, so another copy never picks
it up; it holds ids and counts, never a URL's password.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from chainlit.data.storage_clients.base import BaseStorageClient

from chainlit_orm.defaults import DEFAULT_TRANSFER_BATCH, SOURCE_KINDS
from chainlit_orm.errors import ConfigurationError, mask_url
from chainlit_orm.models.modelset import DEFAULT_MODELS, ModelSet
from chainlit_orm.transfer import _layer
from chainlit_orm.transfer._layer import DEFAULT_TRANSFER_TIMEOUT
from chainlit_orm.transfer._tasks import gather_bounded
from chainlit_orm.transfer.bundle import BundleReader, BundleWriter
from chainlit_orm.transfer.official import OFFICIAL_TABLES, OfficialSource
from chainlit_orm.transfer.progress import NoProgress, Progress, Summary
from chainlit_orm.transfer.records import CHILD_ENTITIES, ENTITY_NAMES, FILE_KEY, ThreadData
from chainlit_orm.transfer.sinks import DynamoSink, Sink, SQLSink
from chainlit_orm.transfer.sources import (
    DynamoSource,
    Scope,
    Source,
    SQLSource,
    Store,
    file_info,
)
from chainlit_orm.transfer.verify import verify
from chainlit_orm.urls import STORAGE_URL_VARIABLE, DynamoURL, parse_url

__all__ = ["DEFAULT_BATCH", "DEFAULT_TRANSFER_TIMEOUT", "SOURCE_KINDS", "copy", "export",
           "import_bundle"]

#: Threads per batch: the unit of a transaction, of a checkpoint and of what a rerun repeats.
DEFAULT_BATCH = DEFAULT_TRANSFER_BATCH

#: Element files read and stored at once.
FILE_COPIES = 8

STORAGE_ENV = STORAGE_URL_VARIABLE

StorageSpec = str | BaseStorageClient | None


# ------------------------------------------------------------------------- endpoints


def _is_dynamo(url: str) -> bool:
    """Whether ``url`` names a DynamoDB table (parsed, and so checked, by the one URL parser)."""
    return isinstance(parse_url(url), DynamoURL)


async def _sql_kinds(url: str, models: ModelSet) -> set[str]:
    """Which schemas a SQL database holds: ``chainlit-orm`` (the set's tables) and/or
    ``official`` (Chainlit's official data layer's, in the default schema)."""
    db = _layer.SQLHandle(url, models, check_schema=False)
    postgres = db.dialect == "postgresql"

    def names(sync: Any) -> tuple[set[str], set[str]]:
        inspector = sa.inspect(sync)
        default = set(inspector.get_table_names())
        if postgres and models.schema is not None:
            return set(inspector.get_table_names(schema=models.schema)), default
        return default, default

    async def inspect() -> tuple[set[str], set[str]]:
        async with db.engine.connect() as conn:
            return await conn.run_sync(names)

    try:
        ours, default = await db.run(inspect)
    finally:
        await db.close()
    kinds = set()
    if all(models.table(e).name in ours for e in ENTITY_NAMES):
        kinds.add("chainlit-orm")
    if postgres and all(name in default for name in OFFICIAL_TABLES):
        kinds.add("official")
    return kinds


async def open_source(url: str, models: ModelSet, storage: BaseStorageClient | None,
                      source_kind: str | None) -> Source:
    """The source a URL names; a PostgreSQL database is recognised from its tables.

    Raises:
        ConfigurationError: an unknown ``source_kind``; a database with both schemas and no
            ``source_kind``; a database with neither.
    """
    if source_kind is not None and source_kind not in SOURCE_KINDS:
        raise ConfigurationError(f"source kind must be one of {', '.join(SOURCE_KINDS)}: "
                                 f"{source_kind!r}")
    if _is_dynamo(url):
        if source_kind == "official":
            raise ConfigurationError("Chainlit's official data layer is a PostgreSQL schema")
        return DynamoSource(url, models, storage)
    kinds = await _sql_kinds(url, models)
    if source_kind is None:
        if kinds == {"chainlit-orm", "official"}:
            raise ConfigurationError(
                f"{mask_url(url)} holds both chainlit-orm's tables and Chainlit's official data "
                "layer's; say which to read with --source-kind chainlit-orm or "
                "--source-kind official", detail=sorted(kinds))
        if not kinds:
            raise ConfigurationError(
                f"{mask_url(url)} holds neither chainlit-orm's tables nor Chainlit's official "
                'data layer\'s ("User", "Thread", "Step", "Element", "Feedback")')
        source_kind = kinds.pop()
    elif source_kind not in kinds:
        raise ConfigurationError(f"{mask_url(url)} has no {source_kind} tables")
    if source_kind == "official":
        return OfficialSource(url, models, storage)
    return SQLSource(url, models, storage)


def open_sink(url: str, models: ModelSet, storage: BaseStorageClient | None, *,
              retention: timedelta | None = None) -> Sink:
    """The destination a URL names. ``retention`` (DynamoDB only, as the layer's
    ``retention=``): the thread items get its TTL attribute.

    Raises:
        ConfigurationError: ``retention`` for a SQL destination (SQL has no TTL: its threads
            expire by ``purge``), or not a timedelta of at least one second.
    """
    check_retention(url, retention)
    if _is_dynamo(url):
        return DynamoSink(url, models, storage, retention=retention)  # checked by the table
    return SQLSink(url, models, storage)


def check_retention(url: str, retention: timedelta | None) -> None:
    """Refuse a ``retention`` for a SQL destination (the CLI checks it with the command line,
    before any work, so the refusal is a usage error there).

    Raises:
        ConfigurationError: ``retention`` given for a SQL destination (SQL has no TTL: its
            threads expire by ``purge``).
    """
    if retention is not None and not _is_dynamo(url):
        raise ConfigurationError("--retention is DynamoDB's TTL (the layer's retention=); a SQL "
                                 "destination has none: its threads expire by purge",
                                 detail="retention")


def open_store(url: str, models: ModelSet, storage: BaseStorageClient | None,
               scope: Scope) -> Store:
    """The destination as a verification reads it: a DynamoDB table is read by a snapshot when
    the whole source was copied, by a Query per thread when one user's data were."""
    if _is_dynamo(url):
        return DynamoSource(url, models, storage, snapshot=scope.user is None)
    return SQLSource(url, models, storage)


@dataclass
class _Storages:
    src: BaseStorageClient | None
    dst: BaseStorageClient | None
    same: bool
    owned: list[BaseStorageClient] = field(default_factory=list)

    async def close(self) -> None:
        for client in self.owned:
            with contextlib.suppress(Exception):  # closing only; never hides a transfer error
                await client.close()


def _identity(spec: StorageSpec, env: Mapping[str, str]) -> tuple[object, StorageSpec]:
    if spec is None:
        spec = env.get(STORAGE_ENV) or None
    if isinstance(spec, str):
        return spec.strip().rstrip("/"), spec
    return (id(spec) if spec is not None else None), spec


def _storages(src: StorageSpec, dst: StorageSpec, env: Mapping[str, str] | None,
              *, need_src: bool = True, need_dst: bool = True) -> _Storages:
    """The storage clients of both sides: each given as a URL or a client, else the environment
    (``CHAINLIT_ORM_STORAGE_URL``). When both are the same storage, one client serves both and
    files are already in place."""
    env = os.environ if env is None else env
    src_id, src_spec = _identity(src, env) if need_src else (None, None)
    dst_id, dst_spec = _identity(dst, env) if need_dst else (None, None)
    owned: list[BaseStorageClient] = []

    def make(spec: StorageSpec) -> BaseStorageClient | None:
        if spec is None or not isinstance(spec, str):
            return spec
        from chainlit_orm.storage import FsspecStorage

        client = FsspecStorage(spec, mount=False)
        owned.append(client)
        return client

    same = need_src and need_dst and src_id is not None and src_id == dst_id
    src_client = make(src_spec)
    dst_client = src_client if same else make(dst_spec)
    return _Storages(src_client, dst_client, same, owned)


# ------------------------------------------------------------------------ checkpoint


@dataclass
class Checkpoint:
    """Where a copy stands (see the module docstring). ``path`` None: not kept (an export)."""

    path: Path | None
    key: str
    users_done: bool = False
    after: str | None = None
    rows: dict[str, int] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path | None, key: str) -> Checkpoint:
        if path is None or not path.exists():
            return cls(path, key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigurationError(f"checkpoint {path} is not JSON; remove it to start the "
                                     "copy from the beginning") from exc
        if data.get("key") != key:
            raise ConfigurationError(
                f"checkpoint {path} belongs to another copy (other source, destination or "
                "scope); remove it or pass another --checkpoint", detail=str(path))
        fields = {k: data[k] for k in ("users_done", "after", "rows", "files", "bytes",
                                       "missing") if k in data}
        return cls(path, key, **fields)

    async def save(self) -> None:
        if self.path is None:
            return
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        path = self.path

        def write() -> None:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:  # a read-only working directory (the default place), a full disk
            raise ConfigurationError(
                f"cannot write the checkpoint {path}: {exc.strerror or exc}; pass --checkpoint "
                "FILE in a writable directory (what is copied so far stays; a rerun resumes "
                "from the last checkpoint written)", detail=str(path)) from exc

    def remove(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _checkpoint_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def default_checkpoint(key: str) -> Path:
    return Path.cwd() / f".chainlit-orm-copy-{key[:16]}.json"


# ------------------------------------------------------------------------------ loop


class _Transfer:
    """One run of the loop in the module docstring."""

    def __init__(self, source: Source, sink: Sink, scope: Scope, *, files: bool, batch: int,
                 storages: _Storages, progress: Progress, checkpoint: Checkpoint,
                 summary: Summary) -> None:
        if batch < 1:
            raise ConfigurationError(f"batch must be a positive number of threads: {batch}")
        self.source, self.sink, self.scope = source, sink, scope
        self.files, self.batch, self.storages = files, batch, storages
        self.progress, self.checkpoint, self.summary = progress, checkpoint, summary

    async def run(self) -> None:
        ck = self.checkpoint
        started = time.monotonic()
        self.summary.resumed_after = ck.after
        before = sum(ck.rows.values())
        totals = dict(await self.source.totals(self.scope))
        if self.files:
            totals.setdefault("files", None)
        self.progress.start(self.summary.action, totals)
        try:
            if not ck.users_done:
                async for users in self.source.iter_users(self.scope, 1000):
                    await self.sink.check_users(users)
                async for users in self.source.iter_users(self.scope, 1000):
                    await self.sink.write_users(users)
                    ck.rows["users"] = ck.rows.get("users", 0) + len(users)
                    self.progress.advance("users", len(users))
                ck.users_done = True
                await ck.save()
            async for threads in self.source.iter_threads(self.scope, ck.after, self.batch):
                await self.sink.check_threads(threads)
                if self.files:
                    await self._files(threads)
                else:
                    for data in threads:
                        for element in data.elements:
                            element.pop(FILE_KEY, None)
                await self.sink.write_threads(threads)
                for data in threads:
                    for name, count in data.counts().items():
                        ck.rows[name] = ck.rows.get(name, 0) + count
                        self.progress.advance(name, count)
                ck.after = threads[-1].id
                await ck.save()
        finally:
            self.progress.stop()
        self.summary.seconds = time.monotonic() - started
        self.summary.rows = {name: ck.rows.get(name, 0) for name in ENTITY_NAMES.values()}
        self.summary.moved = sum(ck.rows.values()) - before
        self.summary.files, self.summary.bytes = ck.files, ck.bytes
        self.summary.files_missing = list(ck.missing)

    async def _files(self, threads: list[ThreadData]) -> None:
        """Read, hash and store the files of a batch's elements (before its rows)."""
        elements = [e for d in threads for e in d.elements]
        in_place = self.storages.same
        for element in elements:
            if FILE_KEY not in element and not element.get("objectKey"):
                element[FILE_KEY] = None
        pending = [e for e in elements if e.get("objectKey")]
        if (pending and not in_place and not isinstance(self.sink, BundleWriter)
                and getattr(self.sink, "storage", None) is None):
            raise ConfigurationError(
                f"element {pending[0]['id']} has a stored file but no destination storage is "
                "configured: pass --dst-storage (or --no-files to copy rows only)",
                detail=pending[0]["id"])

        async def one(element: dict[str, Any]) -> None:
            data = await self.source.read_file(element)
            element[FILE_KEY] = file_info(data)
            if data is None:
                if len(self.checkpoint.missing) < 100:
                    self.checkpoint.missing.append(str(element["id"]))
                return
            if not in_place:
                await self.sink.write_file(element, data)
            self.checkpoint.files += 1
            self.checkpoint.bytes += len(data)
            self.progress.advance("files", 1, len(data))

        await gather_bounded(FILE_COPIES, (one(e) for e in pending))


def _models(models: ModelSet | None) -> ModelSet:
    return DEFAULT_MODELS if models is None else models


async def copy(
    src: str,
    dst: str,
    *,
    src_storage: StorageSpec = None,
    dst_storage: StorageSpec = None,
    user: str | None = None,
    since: str | None = None,
    files: bool = True,
    batch: int = DEFAULT_BATCH,
    source_kind: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    verify_only: bool = False,
    models: ModelSet | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TRANSFER_TIMEOUT,  # noqa: ASYNC109
    retention: timedelta | None = None,
) -> Summary:
    """Copy users, threads, steps, elements (with their files) and feedback from ``src`` to
    ``dst``, then verify ``dst`` against ``src``.

    Args:
        src: a chainlit-orm database URL, ``dynamodb://TABLE?...``, or a PostgreSQL URL of
            Chainlit's official data layer (recognised from its tables).
        dst: a chainlit-orm database URL or ``dynamodb://TABLE?...``; migrated first.
        src_storage, dst_storage: where each side keeps element files (a storage URL or a
            Chainlit storage client); None: ``CHAINLIT_ORM_STORAGE_URL``. The same storage on
            both sides means the files are already in place.
        user: copy one user's data only (an identifier).
        since: copy only threads active at or after this time.
        files: copy element files (False: rows only, and files are not verified).
        batch: threads per batch.
        source_kind: ``"chainlit-orm"`` or ``"official"`` for a database holding both.
        checkpoint: the resume file (default: ``.chainlit-orm-copy-<hash>.json`` here).
        verify_only: copy nothing; only compare ``dst`` with ``src``.
        models: the model set of both sides.
        progress: where progress goes (default: nowhere).
        timeout: seconds each statement may take (a batch's read or write, a DynamoDB call,
            retries included); past it a ``TimeoutExceededError`` (the copy resumes from its
            checkpoint when run again).
        retention: a DynamoDB destination's ``retention=``: each copied thread item gets the
            TTL attribute the layer writes (``expiresAt``, its activity plus ``retention``).

    Raises:
        ConflictError: a row ``dst`` holds differently (the first one is named).
        VerificationError: ``dst`` differs from ``src`` after the copy.
    """
    with _layer.transfer_timeout(timeout):
        models = _models(models)
        progress = progress or NoProgress()
        if src.strip() == dst.strip():
            raise ConfigurationError("the source and the destination are the same store")
        scope = Scope(user, since)
        storages = _storages(src_storage, dst_storage, env)
        summary = Summary("copy", mask_url(src), mask_url(dst), files_skipped=not files,
                          files_in_place=storages.same)
        source = await open_source(src, models, storages.src, source_kind)
        sink = open_sink(dst, models, storages.dst, retention=retention)
        store = open_store(dst, models, storages.dst, scope)
        try:
            summary.source, summary.destination = source.shown, sink.shown
            await source.open(scope)
            key = _checkpoint_key(src=src, dst=dst, user=user, since=scope.since, files=files,
                                  kind=source.kind, prefix=models.prefix, schema=models.schema)
            path = Path(checkpoint) if checkpoint is not None else default_checkpoint(key)
            ck = Checkpoint.load(path, key)
            return await _write_and_verify(source, sink, store, scope, ck, summary,
                                           verify_only=verify_only, files=files, batch=batch,
                                           storages=storages, progress=progress)
        finally:
            await _close(source, sink, store, storages)


async def _verify(source: Source, store: Store, scope: Scope, *, files: bool, batch: int,
                  progress: Progress, summary: Summary) -> None:
    started = time.monotonic()
    # what the copy moved is what the verification reads again
    totals: dict[str, int | None] = {k: v for k, v in summary.rows.items() if v}
    progress.start("verify", totals)
    try:
        result = await verify(source, store, scope, files=files, batch=batch, progress=progress)
    finally:
        progress.stop()
    summary.verify_seconds = time.monotonic() - started
    summary.verified_threads = result.threads
    summary.skipped = dict(source.skipped)
    if not summary.rows:
        summary.rows = dict(result.counts)


async def _close(*parts: Any) -> None:
    """Close everything that was opened; the first failure is raised once all are closed."""
    errors = []
    for part in parts:
        try:
            await part.close()
        except Exception as exc:  # each part is closed whatever the others did
            errors.append(exc)
    if errors:
        raise errors[0]


async def export(
    src: str,
    out: str | os.PathLike[str],
    *,
    src_storage: StorageSpec = None,
    user: str | None = None,
    since: str | None = None,
    files: bool = True,
    batch: int = DEFAULT_BATCH,
    source_kind: str | None = None,
    canonical: bool = False,
    models: ModelSet | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TRANSFER_TIMEOUT,  # noqa: ASYNC109
) -> Summary:
    """Write ``src`` (or one user's part of it) as a bundle directory ``out``
    (:mod:`chainlit_orm.transfer.bundle`). ``canonical`` leaves the export time and the source
    out of the manifest, so the bundle depends on the data alone."""
    with _layer.transfer_timeout(timeout):
        models = _models(models)
        progress = progress or NoProgress()
        scope = Scope(user, since)
        storages = _storages(src_storage, None, env, need_dst=False)
        summary = Summary("export", mask_url(src), str(out), files_skipped=not files)
        source = await open_source(src, models, storages.src, source_kind)
        sink = BundleWriter(out, models, files=files, canonical=canonical)
        try:
            summary.source = source.shown
            await source.open(scope)
            await sink.prepare()
            await _Transfer(source, sink, scope, files=files, batch=batch, storages=storages,
                            progress=progress, checkpoint=Checkpoint(None, ""),
                            summary=summary).run()
            summary.skipped = dict(source.skipped)
            await sink.finish(scope=scope, skipped=summary.skipped, source=source.shown)
            return summary
        finally:
            await _close(source, sink, storages)


async def import_bundle(
    bundle: str | os.PathLike[str],
    dst: str,
    *,
    dst_storage: StorageSpec = None,
    files: bool = True,
    batch: int = DEFAULT_BATCH,
    checkpoint: str | os.PathLike[str] | None = None,
    verify_only: bool = False,
    models: ModelSet | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TRANSFER_TIMEOUT,  # noqa: ASYNC109
    retention: timedelta | None = None,
) -> Summary:
    """Write a bundle into ``dst`` (migrated first), resumably, then verify ``dst`` against it;
    see :func:`copy` for the arguments (``retention`` included)."""
    with _layer.transfer_timeout(timeout):
        models = _models(models)
        progress = progress or NoProgress()
        storages = _storages(None, dst_storage, env, need_src=False)
        source = BundleReader(bundle, models)
        files = files and source.has_files
        summary = Summary("import", str(bundle), mask_url(dst), files_skipped=not files)
        sink = open_sink(dst, models, storages.dst, retention=retention)
        scope = Scope()
        store = open_store(dst, models, storages.dst, scope)
        try:
            summary.destination = sink.shown
            manifest_hash = hashlib.sha256(json.dumps(source.manifest["entities"],
                                                      sort_keys=True).encode()).hexdigest()
            key = _checkpoint_key(bundle=manifest_hash, dst=dst, files=files,
                                  prefix=models.prefix, schema=models.schema)
            path = Path(checkpoint) if checkpoint is not None else default_checkpoint(key)
            ck = Checkpoint.load(path, key)
            if not verify_only:
                await source.check(files=files)  # a bad byte refuses it before any write
            return await _write_and_verify(source, sink, store, scope, ck, summary,
                                           verify_only=verify_only, files=files, batch=batch,
                                           storages=storages, progress=progress)
        finally:
            await _close(source, sink, store, storages)


#: The ``left out`` reason of a thread the destination has a tombstone for.
ERASED_REASON = "thread erased in the destination (tombstone)"


class _SkipErased:
    """The source as a copy or an import into a destination sees it: without the threads the
    destination has a tombstone for (``erase_user`` removed them there), nor their steps,
    elements, feedback and files. Without it, restoring a backup taken before an erasure, or
    copying an older copy of the store, would bring the erased threads back. The transfer and
    its verification both read through it, so neither side holds or compares those threads;
    they are counted once each in ``skipped``."""

    def __init__(self, source: Any, sink: Any) -> None:
        self._source, self._sink = source, sink
        self._erased: set[str] = set()
        self.models, self.shown, self.kind = source.models, source.shown, source.kind

    @property
    def skipped(self) -> dict[str, int]:
        out = dict(self._source.skipped)
        if self._erased:
            out[ERASED_REASON] = len(self._erased)
        return out

    async def open(self, scope: Scope) -> None:
        await self._source.open(scope)

    def iter_users(self, scope: Scope, batch: int) -> AsyncIterator[list[dict[str, Any]]]:
        it: AsyncIterator[list[dict[str, Any]]] = self._source.iter_users(scope, batch)
        return it

    async def iter_threads(self, scope: Scope, after: str | None, batch: int
                           ) -> AsyncIterator[list[ThreadData]]:
        async for threads in self._source.iter_threads(scope, after, batch):
            erased = await self._sink.erased([d.id for d in threads])
            self._erased |= erased
            kept = [d for d in threads if d.id not in erased]
            if kept:  # a batch wholly erased is read again by a resume, and left out again
                yield kept

    async def totals(self, scope: Scope) -> dict[str, int | None]:
        totals: dict[str, int | None] = await self._source.totals(scope)
        return totals

    async def read_file(self, element: Mapping[str, Any]) -> bytes | None:
        data: bytes | None = await self._source.read_file(element)
        return data

    async def close(self) -> None:
        await self._source.close()


async def _write_and_verify(source: Any, sink: Any, store: Any, scope: Scope, ck: Checkpoint,
                            summary: Summary, *, verify_only: bool, files: bool, batch: int,
                            storages: _Storages, progress: Progress) -> Summary:
    """The end every transfer shares (copy and import): unless only verifying, the
    destination's schema, then the batches; then the destination read back and compared with
    the source, and the checkpoint removed once they match. Both read the source through
    :class:`_SkipErased`: a thread the destination has a tombstone for is left out."""
    source = _SkipErased(source, sink)
    if not verify_only:
        summary.schema = await sink.prepare()
        await _Transfer(source, sink, scope, files=files, batch=batch, storages=storages,
                        progress=progress, checkpoint=ck, summary=summary).run()
    await store.open(Scope())
    await _verify(source, store, scope, files=files, batch=batch, progress=progress,
                  summary=summary)
    ck.remove()
    return summary


_ = CHILD_ENTITIES
