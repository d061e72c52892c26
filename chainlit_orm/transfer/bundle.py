"""The portable bundle: a directory that ``chainlit-orm export`` writes and ``import`` reads.

Format ``chainlit-orm-bundle``, version 1::

    BUNDLE/
      manifest.json     what the bundle holds (below); written last
      users.jsonl       one user per line, sorted by id
      threads.jsonl     one thread per line, sorted by id
      steps.jsonl       one step per line, sorted by (threadId, id)
      elements.jsonl    one element per line, sorted by (threadId, id)
      feedbacks.jsonl   one feedback per line, sorted by (threadId, id)
      files.jsonl       one stored file per line: {"path", "sha256", "size"}, sorted by sha256
      files/ab/abcdef…  each element file once, named by the SHA-256 of its bytes

Each ``.jsonl`` line is one *record* (:mod:`chainlit_orm.transfer.records`) in canonical JSON:
sorted keys, UTF-8, no insignificant whitespace, integral numbers as integers, ids as lower-case
dashed UUIDs, timestamps as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC. Keys are chainlit-orm's
column names, which are Chainlit's own keys (``threadId``, ``createdAt``, ``showInput``, ...),
plus:

* ``threads.activityAt``: the thread's activity (its latest user message), the order of
  Chainlit's thread list;
* ``extra``: keys a newer Chainlit sent that have no column yet (or null);
* ``elements.$file``: ``{"sha256": HEX, "size": BYTES}`` for an element whose file was stored
  (``files/HEX[:2]/HEX`` holds it), ``{"missing": true}`` when its record names an object that
  was not in storage, ``null`` for an element without a stored file. ``objectKey`` is where the
  file is stored again on import.

Columns a write derives from ``metadata`` (``favorite``, custom ``metadata_column`` fields) are
not in the bundle: importing recomputes them, as the layer does on every write.

``manifest.json``::

    {"format": "chainlit-orm-bundle", "version": 1,
     "entities": {"users": {"path": "users.jsonl", "count": 2, "sha256": HEX}, ...,
                  "feedbacks": {...}},
     "files": {"path": "files.jsonl", "count": 3, "bytes": 1234, "sha256": HEX}
              (or {"included": false} for an export made with --no-files),
     "scope": {"user": IDENTIFIER or null, "since": TIMESTAMP or null},
     "skipped": {REASON: COUNT, ...},
     "exported_at": TIMESTAMP, "source": URL (password masked)}

``exported_at`` and ``source`` are left out of a *canonical* export (``--canonical``), whose every
byte then depends on the data alone: two stores holding the same data give identical bundles.

Writing streams: records are appended batch by batch (memory holds one batch), into
``BUNDLE.partial``, which is renamed to ``BUNDLE`` once the manifest is written, so a bundle that
exists is complete. Reading streams too. An import reads the whole bundle once, checked, before it
writes anything (:meth:`BundleReader.check`: links, the manifest's hashes and counts, every
stored file's size and SHA-256, every record against the limits every layer write passes
(:mod:`chainlit_orm.models.limits`), order, repeated ids, references, object keys): one bad byte
refuses the bundle whole, and the destination is left as it was.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from chainlit_orm.errors import ConfigurationError, InvalidInputError, NotFoundError, StorageError
from chainlit_orm.models.limits import MAX_JSON_DEPTH
from chainlit_orm.models.modelset import ENTITIES, ModelSet
from chainlit_orm.models.types import utc_now
from chainlit_orm.transfer._layer import portable_columns, validate_key
from chainlit_orm.transfer.records import (
    CHILD_ENTITIES,
    ENTITY_NAMES,
    FILE_KEY,
    ThreadData,
    canonical_json,
    finish_thread,
    record,
)
from chainlit_orm.transfer.sources import Scope

__all__ = ["FORMAT", "VERSION", "BundleReader", "BundleWriter"]

FORMAT = "chainlit-orm-bundle"
VERSION = 1
MANIFEST = "manifest.json"
FILES_INDEX = "files.jsonl"
_PARTIAL_MARK = ".chainlit-orm-partial"


def _is_sha256(value: object) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


def _open_regular(bundle: Path, name: str) -> IO[bytes]:
    """``bundle / name`` open for reading if it is a regular file, not a link to one (checked
    on the open file, so a link put in place after the check pass is refused too).

    Raises:
        InvalidInputError: a symbolic link or not a regular file.
        FileNotFoundError: no such file.
    """
    try:
        fd = os.open(bundle / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise InvalidInputError(f"{name} in the bundle is a symbolic link; a bundle holds "
                                "regular files only") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidInputError(f"{name} in the bundle is not a regular file; a bundle holds "
                                "regular files only")
    return os.fdopen(fd, "rb")


def _file_path(sha256: str) -> str:
    return f"files/{sha256[:2]}/{sha256}"


class BundleWriter:
    """Writes a bundle (a transfer's destination). See the module docstring."""

    kind = "bundle"

    def __init__(self, out: str | os.PathLike[str], models: ModelSet, *, files: bool,
                 canonical: bool) -> None:
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.models = models
        self.files = files
        self.canonical = canonical
        self.shown = str(self.out)
        self._handles: dict[str, IO[str]] = {}
        self._hashes: dict[str, Any] = {}
        self._counts: dict[str, int] = dict.fromkeys(ENTITIES, 0)

    async def prepare(self) -> list[str]:
        if self.out.exists():
            raise ConfigurationError(f"{self.out} exists; export writes a new directory",
                                     detail=str(self.out))
        await asyncio.to_thread(self._prepare_sync)
        return []

    def _prepare_sync(self) -> None:
        if self.partial.exists():
            if not (self.partial / _PARTIAL_MARK).exists():
                raise ConfigurationError(
                    f"{self.partial} exists and is not an unfinished export; move it away",
                    detail=str(self.partial))
            shutil.rmtree(self.partial)  # an export that was interrupted: start again
        (self.partial / "files").mkdir(parents=True)
        (self.partial / _PARTIAL_MARK).touch()
        for entity in ENTITIES:
            name = f"{ENTITY_NAMES[entity]}.jsonl"
            self._handles[entity] = open(self.partial / name, "w", encoding="utf-8",  # noqa: SIM115
                                         newline="\n")
            self._hashes[entity] = hashlib.sha256()

    def _append(self, lines: Mapping[str, list[str]]) -> None:
        for entity, entity_lines in lines.items():
            if not entity_lines:
                continue
            text = "".join(line + "\n" for line in entity_lines)
            self._handles[entity].write(text)
            self._hashes[entity].update(text.encode())
            self._counts[entity] += len(entity_lines)

    async def check_users(self, users: Sequence[Mapping[str, Any]]) -> None:
        return None

    async def check_threads(self, batch: Sequence[ThreadData]) -> None:
        return None

    async def write_users(self, users: Sequence[Mapping[str, Any]]) -> None:
        lines = [canonical_json(u) for u in users]
        await asyncio.to_thread(self._append, {"user": lines})

    async def write_threads(self, batch: Sequence[ThreadData]) -> None:
        lines: dict[str, list[str]] = {e: [] for e in ("thread", *CHILD_ENTITIES)}
        for data in batch:
            lines["thread"].append(canonical_json(data.thread))
            for entity in CHILD_ENTITIES:
                for row in data.children(entity):
                    if entity == "element" and not self.files:
                        row = {k: v for k, v in row.items() if k != FILE_KEY}
                    lines[entity].append(canonical_json(row))
        await asyncio.to_thread(self._append, lines)

    async def write_file(self, element: Mapping[str, Any], data: bytes) -> None:
        info = element[FILE_KEY]
        await asyncio.to_thread(self._write_file_sync, str(info["sha256"]), data)

    def _write_file_sync(self, sha256: str, data: bytes) -> None:
        path = self.partial / _file_path(sha256)
        if path.exists():
            return  # content-addressed: the same bytes are already there
        path.parent.mkdir(exist_ok=True)
        # a name of its own: two elements with the same bytes may be written at once
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    async def finish(self, *, scope: Scope, skipped: Mapping[str, int], source: str) -> None:
        """Close the record files, index the stored files, write the manifest, and make the
        bundle appear under its name (only now)."""
        await asyncio.to_thread(self._finish_sync, scope, dict(skipped), source)

    def _finish_sync(self, scope: Scope, skipped: dict[str, int], source: str) -> None:
        for handle in self._handles.values():
            handle.close()
        entities = {
            ENTITY_NAMES[e]: {"path": f"{ENTITY_NAMES[e]}.jsonl", "count": self._counts[e],
                              "sha256": self._hashes[e].hexdigest()} for e in ENTITIES}
        files: dict[str, Any] = {"included": False}
        if self.files:
            index = hashlib.sha256()
            count = size = 0
            with open(self.partial / FILES_INDEX, "w", encoding="utf-8", newline="\n") as out:
                for sha256, length in self._stored_files():
                    line = canonical_json({"path": _file_path(sha256), "sha256": sha256,
                                           "size": length}) + "\n"
                    out.write(line)
                    index.update(line.encode())
                    count += 1
                    size += length
            files = {"path": FILES_INDEX, "count": count, "bytes": size,
                     "sha256": index.hexdigest()}
        manifest: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "entities": entities, "files": files,
            "scope": {"user": scope.user, "since": scope.since}, "skipped": skipped,
        }
        if not self.canonical:
            manifest["exported_at"] = utc_now()
            manifest["source"] = source
        (self.partial / MANIFEST).write_text(
            json.dumps(manifest, sort_keys=True, ensure_ascii=False, indent=1) + "\n",
            encoding="utf-8")
        (self.partial / _PARTIAL_MARK).unlink()
        os.replace(self.partial, self.out)

    def _stored_files(self) -> Iterator[tuple[str, int]]:
        """(sha256, size) of every stored file, sorted, one fan-out directory at a time."""
        root = self.partial / "files"
        for fan in sorted(p.name for p in root.iterdir() if p.is_dir()):
            for name in sorted(p.name for p in (root / fan).iterdir()
                               if not p.name.endswith(".tmp")):
                yield name, (root / fan / name).stat().st_size

    async def close(self) -> None:
        for handle in self._handles.values():
            if not handle.closed:
                handle.close()


def _known_keys(models: ModelSet, entity: str) -> set[str]:
    """The keys a bundle record may carry: the portable columns (and an element's file)."""
    return {*portable_columns(models, entity), *((FILE_KEY,) if entity == "element" else ())}


def parse_line(path: Path, number: int, line: bytes, entity: str,
               models: ModelSet) -> dict[str, Any]:
    """The record on line ``number`` of a bundle file, checked (:func:`record` with
    ``validate``). Every refusal is an :class:`InvalidInputError` whose message starts with the
    file and line: the bytes are decoded as strict UTF-8 here (a decoding error is the bundle's,
    not a crash of the reader).

    Raises:
        InvalidInputError: the line is not UTF-8, not a JSON object, or its record is refused
            (``PayloadTooLargeError`` for a record above the record limit).
    """
    where = f"{path.name} line {number}"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"{where} is not UTF-8 (byte {exc.start + 1} of the line: "
            f"{line[exc.start:exc.start + 1]!r})") from None
    try:
        data = json.loads(text)
    except RecursionError:
        # the parser recurses per level: a line nested beyond Python's stack is refused by the
        # same limit (and message) as one nested 33 levels, which check_record refuses
        raise InvalidInputError(
            f"{where}: {entity} record is nested more than {MAX_JSON_DEPTH} levels deep"
        ) from None
    except ValueError as exc:
        raise InvalidInputError(f"{where} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"{where} is not a JSON object")
    unknown = sorted(set(data) - _known_keys(models, entity))
    if unknown:
        # record() keeps the known columns only: an unknown key would be dropped in silence,
        # and verify (which compares records) could not notice
        raise InvalidInputError(
            f"{where}: unknown key {unknown[0][:100]!r} in a {entity} record (not a column "
            f"of this model set's {entity} table)", detail=unknown[0][:100])
    try:
        return record(models, entity, data, validate=True)
    except InvalidInputError as exc:  # the same type (PayloadTooLargeError stays one)
        raise type(exc)(f"{where}: {exc}", detail=exc.detail) from exc


class _Lines:
    """A JSONL file read a block of lines at a time, in a worker thread, with one line of
    look-ahead (the merge of a thread with its rows needs it)."""

    def __init__(self, path: Path, entity: str, models: ModelSet) -> None:
        self.path = path
        self.entity = entity
        self.models = models
        self.handle: IO[bytes] | None = None
        self.buffer: list[dict[str, Any]] = []
        self.number = 0
        self.done = False

    def _read_block(self) -> list[tuple[int, bytes]]:
        if self.handle is None:
            self.handle = _open_regular(self.path.parent, self.path.name)
        block = []
        for _ in range(1000):
            line = self.handle.readline()
            if not line:
                break
            self.number += 1
            block.append((self.number, line))
        return block

    async def peek(self) -> dict[str, Any] | None:
        while not self.buffer and not self.done:
            block = await asyncio.to_thread(self._read_block)
            if not block:
                self.done = True
            for number, line in block:
                self.buffer.append(self._parse(number, line))
        return self.buffer[0] if self.buffer else None

    async def take(self) -> dict[str, Any] | None:
        found = await self.peek()
        if found is not None:
            self.buffer.pop(0)
        return found

    def _parse(self, number: int, line: bytes) -> dict[str, Any]:
        return parse_line(self.path, number, line, self.entity, self.models)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


class _Index:
    """Ids seen by the check pass, in a temporary SQLite file (not in memory: a bundle of any
    size is checked in bounded memory). Each id is looked up by its primary key."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
            "CREATE TABLE ids (entity TEXT, id TEXT, PRIMARY KEY (entity, id)) WITHOUT ROWID;"
            "CREATE TABLE files (sha256 TEXT PRIMARY KEY, size INTEGER) WITHOUT ROWID;")

    def add(self, entity: str, row_id: str) -> bool:
        """Record ``row_id``; False if it was already there."""
        try:
            self.db.execute("INSERT INTO ids VALUES (?, ?)", (entity, row_id))
        except sqlite3.IntegrityError:
            return False
        return True

    def has(self, entity: str, row_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM ids WHERE entity = ? AND id = ?",
                               (entity, row_id)).fetchone() is not None

    def add_file(self, sha256: str, size: int) -> None:
        self.db.execute("INSERT INTO files VALUES (?, ?)", (sha256, size))

    def file_size(self, sha256: str) -> int | None:
        found = self.db.execute("SELECT size FROM files WHERE sha256 = ?",
                                (sha256,)).fetchone()
        return None if found is None else int(found[0])

    def close(self) -> None:
        self.db.close()


class BundleReader:
    """Reads a bundle (a transfer's source). See the module docstring."""

    kind = "bundle"

    def __init__(self, path: str | os.PathLike[str], models: ModelSet) -> None:
        self.path = Path(path)
        self.models = models
        self.shown = str(self.path)
        self.skipped: dict[str, int] = {}
        try:
            self.manifest = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigurationError(f"{self.path} is not a bundle (no {MANIFEST})") from exc
        except ValueError as exc:
            raise InvalidInputError(f"{self.path / MANIFEST} is not JSON: {exc}") from exc
        if not isinstance(self.manifest, dict):
            raise InvalidInputError(f"{self.path / MANIFEST} is not a JSON object")
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise ConfigurationError(
                f"{self.path} is not a {FORMAT} version {VERSION} bundle "
                f"(format {self.manifest.get('format')!r}, version "
                f"{self.manifest.get('version')!r})")
        self._check_manifest()
        self.has_files = self.manifest["files"].get("included", True) is not False
        self._open: list[_Lines] = []

    def _check_manifest(self) -> None:
        """The manifest's shape: an entry (plain file name, count, SHA-256) per entity and for
        the file index, so the check pass can hold every file to it.

        Raises:
            InvalidInputError: an entry is missing or malformed.
        """
        def entry(name: str, value: object, *, index: bool) -> None:
            where = f"{MANIFEST}: {name}"
            if not isinstance(value, dict):
                raise InvalidInputError(f"{where} is not an object")
            path = value.get("path")
            if not isinstance(path, str) or "/" in path or "\\" in path or path.startswith("."):
                raise InvalidInputError(f"{where} names an unexpected file {path!r}")
            numbers = ("count", "bytes") if index else ("count",)
            for key in numbers:
                count = value.get(key)
                if type(count) is not int or count < 0:
                    raise InvalidInputError(f"{where}.{key} is not a count: {count!r}"[:200])
            if not _is_sha256(value.get("sha256")):
                raise InvalidInputError(f"{where}.sha256 is not a SHA-256: "
                                        f"{value.get('sha256')!r}"[:200])

        entities = self.manifest.get("entities")
        if not isinstance(entities, dict):
            raise InvalidInputError(f"{MANIFEST}: entities is not an object")
        for name in ENTITY_NAMES.values():
            entry(f"entities.{name}", entities.get(name), index=False)
        files = self.manifest.get("files")
        if files != {"included": False}:
            entry("files", files, index=True)
            if files["path"] != FILES_INDEX:
                raise InvalidInputError(f"{MANIFEST}: files names an unexpected file "
                                        f"{files['path']!r}")

    def _lines(self, entity: str) -> _Lines:
        name = self.manifest["entities"][ENTITY_NAMES[entity]]["path"]
        if "/" in name or name.startswith("."):
            raise InvalidInputError(f"manifest names an unexpected file {name!r}")
        lines = _Lines(self.path / name, entity, self.models)
        self._open.append(lines)
        return lines

    async def open(self, scope: Scope) -> None:
        if scope.user is None:
            return
        async for users in self.iter_users(scope, 1000):
            for user in users:
                scope.user_id = str(user["id"])
                return
        raise NotFoundError(f"no user {scope.user!r} in {self.shown}", detail=scope.user)

    async def iter_users(self, scope: Scope, batch: int) -> AsyncIterator[list[dict[str, Any]]]:
        lines = self._lines("user")
        try:
            page: list[dict[str, Any]] = []
            previous = ""
            while (user := await lines.take()) is not None:
                if str(user["id"]) <= previous:
                    raise InvalidInputError(f"{lines.path.name}: users are not sorted by id")
                previous = str(user["id"])
                if scope.user is not None and user["identifier"] != scope.user:
                    continue
                page.append(user)
                if len(page) == batch:
                    yield page
                    page = []
            if page:
                yield page
        finally:
            lines.close()

    async def iter_threads(self, scope: Scope, after: str | None, batch: int
                           ) -> AsyncIterator[list[ThreadData]]:
        threads = self._lines("thread")
        children = {e: self._lines(e) for e in CHILD_ENTITIES}
        try:
            page: list[ThreadData] = []
            previous = ""
            while (thread := await threads.take()) is not None:
                thread_id = str(thread["id"])
                if thread_id <= previous:
                    raise InvalidInputError(f"{threads.path.name}: threads are not sorted by id")
                previous = thread_id
                data = ThreadData(thread)
                for entity, lines in children.items():
                    while (row := await lines.peek()) is not None:
                        owner = str(row.get("threadId"))
                        if owner > thread_id:
                            break
                        if owner < thread_id:
                            raise InvalidInputError(
                                f"{lines.path.name} line {lines.number - len(lines.buffer) + 1}"
                                f": {entity} {row['id']} names thread {owner}, which is not in "
                                "the bundle (or the file is not sorted by threadId)")
                        data.children(entity).append(row)
                        await lines.take()
                if after is not None and thread_id <= after:
                    continue
                if scope.user_id is not None and thread.get("userId") != scope.user_id:
                    continue
                if scope.since is not None and str(thread.get("activityAt") or "") < scope.since:
                    continue
                page.append(finish_thread(self.models, data))
                if len(page) == batch:
                    yield page
                    page = []
            if page:
                yield page
            for entity, lines in children.items():
                left = await lines.peek()
                if left is not None:
                    raise InvalidInputError(
                        f"{lines.path.name}: {entity} {left['id']} names thread "
                        f"{left.get('threadId')}, which is not in the bundle")
        finally:
            threads.close()
            for lines in children.values():
                lines.close()

    async def check(self, *, files: bool = True) -> None:
        """Read the whole bundle once, checked, before an import writes anything: a bundle with
        one bad byte is refused whole, with the file and line named, and the destination (its
        database and its storage) is left as it was. Memory stays flat: files are streamed a
        line (a stored file a block) at a time, and the ids the references are checked against
        go to a temporary SQLite file, not to memory.

        In order: nothing in the bundle is a link or other than a regular file; every entry of
        ``files.jsonl`` is ``files/HEX[:2]/HEX`` and that file has the size and SHA-256 named;
        each record file, parents first, is held to its manifest entry (SHA-256 of its bytes,
        line count), and each of its records is checked exactly as the import reads it (UTF-8,
        JSON, known keys, ids and timestamps, the limits every layer write passes), in the
        documented order, each id once, naming only what the bundle holds (a thread's user, a
        row's thread, an element's file) and only object keys every storage accepts.

        With ``files`` false (an import with ``--no-files``, which stores no file) the stored
        files' bytes are not read; ``files.jsonl`` is still held to the manifest and its
        entries to their shape, and the elements' references to it.

        What is checked here is read again to be written; the write pass checks each file's
        hash again as it stores it, so a bundle changed in between is refused then.

        Raises:
            InvalidInputError: the first bad record or reference, a link, or a file that does
                not match the manifest (``PayloadTooLargeError`` for a record above the record
                limit).
            StorageError: a stored file that is missing or does not match its size and hash.
        """
        await asyncio.to_thread(self._check_sync, files)

    def _check_sync(self, files: bool) -> None:
        self._check_tree()
        with tempfile.TemporaryDirectory(prefix="chainlit-orm-check-") as tmp:
            index = _Index(Path(tmp) / "ids.sqlite")
            try:
                if self.has_files:
                    self._check_files(index, read=files)
                for entity in ENTITIES:
                    self._check_entity(entity, index)
            finally:
                index.close()

    def _check_files(self, index: _Index, *, read: bool) -> None:
        """Every entry of ``files.jsonl``: its exact shape and place (``files/HEX[:2]/HEX``,
        nothing else: no path leads out of the bundle), its order, and (with ``read``) the
        file's size and SHA-256, read in blocks."""
        entry = self.manifest["files"]
        previous: list[str] = []
        total: list[int] = [0]

        def one(number: int, line: bytes) -> None:
            where = f"{FILES_INDEX} line {number}"
            try:
                info = json.loads(line.decode("utf-8"))
            except (ValueError, RecursionError):
                raise InvalidInputError(f"{where} is not a JSON object of UTF-8 text") from None
            if (not isinstance(info, dict) or set(info) != {"path", "sha256", "size"}
                    or not _is_sha256(info["sha256"]) or type(info["size"]) is not int
                    or info["path"] != _file_path(info["sha256"])):
                raise InvalidInputError(f'{where} is not {{"path": "files/HEX[:2]/HEX", '
                                        f'"sha256": HEX, "size": BYTES}}: {line[:200]!r}')
            sha256, size, name = info["sha256"], info["size"], info["path"]
            if previous and sha256 <= previous[0]:
                raise InvalidInputError(f"{where}: {name} is out of order or repeated (the "
                                        "file is sorted by sha256, each file once)")
            previous[:] = [sha256]
            index.add_file(sha256, size)
            total[0] += size
            if not read:
                return
            digest = hashlib.sha256()
            length = 0
            try:
                with _open_regular(self.path, name) as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
                        length += len(block)
            except FileNotFoundError:
                raise StorageError(f"the bundle lacks {name} ({where})") from None
            if digest.hexdigest() != sha256 or length != size:
                raise StorageError(f"{name} in the bundle does not match its hash or size "
                                   f"({where})")

        self._check_lines(FILES_INDEX, entry, one)
        if total[0] != entry["bytes"]:
            raise InvalidInputError(f"{FILES_INDEX} indexes {total[0]} bytes; the manifest "
                                    f"says {entry['bytes']}")

    def _check_tree(self) -> None:
        """Refuse a bundle holding anything but directories and regular files: a symbolic link
        (to a file or a directory) would import bytes from outside the bundle."""
        stack = [self.path]
        while stack:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    shown = os.path.relpath(entry.path, self.path)
                    if entry.is_symlink():
                        raise InvalidInputError(f"{shown} in the bundle is a symbolic link; a "
                                                "bundle holds regular files only")
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif not entry.is_file(follow_symlinks=False):
                        raise InvalidInputError(f"{shown} in the bundle is not a regular file; "
                                                "a bundle holds regular files only")

    def _check_entity(self, entity: str, index: _Index) -> None:
        entry = self.manifest["entities"][ENTITY_NAMES[entity]]
        path = self.path / entry["path"]
        order = ("id",) if entity in ("user", "thread") else ("threadId", "id")
        previous: list[tuple[str, ...]] = []

        def one(number: int, line: bytes) -> None:
            row = parse_line(path, number, line, entity, self.models)
            where = f"{path.name} line {number}"
            key = tuple(str(row.get(k) or "") for k in order)
            if previous and key <= previous[0]:
                what = "repeats the one before" if key == previous[0] else "is out of order"
                raise InvalidInputError(
                    f"{where}: {entity} {row['id']} {what} (the file is sorted by "
                    f"{', '.join(order)}, each record once)", detail=str(row["id"]))
            previous[:] = [key]
            if not index.add(entity, str(row["id"])):
                raise InvalidInputError(
                    f"{where}: {entity} {row['id']} is already in the bundle (in another "
                    "thread)", detail=str(row["id"]))
            self._check_references(where, entity, row, index)

        self._check_lines(entry["path"], entry, one)

    def _check_references(self, where: str, entity: str, row: Mapping[str, Any],
                          index: _Index) -> None:
        """What a record names must be in the bundle (parents come first, so their ids are in
        the index): a thread's user, a row's thread, an element's stored file; and an element's
        object key must be one every storage accepts."""
        row_id = str(row["id"])
        if entity == "thread" and row.get("userId") is not None and not index.has(
                "user", str(row["userId"])):
            raise InvalidInputError(f"{where}: thread {row_id} names user {row['userId']}, "
                                    "which is not in the bundle", detail=row_id)
        if entity in CHILD_ENTITIES and (row.get("threadId") is None or not index.has(
                "thread", str(row["threadId"]))):
            raise InvalidInputError(f"{where}: {entity} {row_id} names thread "
                                    f"{row.get('threadId')}, which is not in the bundle",
                                    detail=row_id)
        if entity != "element":
            return
        if row.get("objectKey") is not None:
            try:
                validate_key(row["objectKey"])
            except InvalidInputError as exc:
                raise InvalidInputError(f"{where}: element {row_id}: {exc}",
                                        detail=row_id) from None
        info = row.get(FILE_KEY)
        if info is None or info == {"missing": True} or not self.has_files:
            return
        if (not isinstance(info, dict) or set(info) != {"sha256", "size"}
                or not _is_sha256(info["sha256"])):
            raise InvalidInputError(f'{where}: element {row_id}: {FILE_KEY} is not '
                                    f'{{"sha256": HEX, "size": BYTES}}, {{"missing": true}} or '
                                    f'null: {info!r}'[:300], detail=row_id)
        size = index.file_size(info["sha256"])
        if size is None or size != info["size"]:
            raise InvalidInputError(
                f"{where}: element {row_id} names file {_file_path(info['sha256'])} of "
                f"{info['size']!r} bytes, which is not in {FILES_INDEX}", detail=row_id)

    def _check_lines(self, name: str, entry: Mapping[str, Any],
                     each: Callable[[int, bytes], None]) -> None:
        """Stream ``name`` a line at a time through ``each``, then hold its SHA-256 and line
        count to the manifest's ``entry``."""
        digest = hashlib.sha256()
        number = 0
        with _open_regular(self.path, name) as handle:
            for line in handle:
                number += 1
                digest.update(line)
                each(number, line)
        if number != entry["count"]:
            raise InvalidInputError(f"{name} holds {number} lines; the manifest counts "
                                    f"{entry['count']}")
        if digest.hexdigest() != entry["sha256"]:
            raise InvalidInputError(f"{name} does not match the SHA-256 in the manifest "
                                    "(the file was changed after the export)")

    async def totals(self, scope: Scope) -> dict[str, int | None]:
        if scope.user is not None or scope.since is not None:
            return {}
        return {name: int(entry["count"]) for name, entry in self.manifest["entities"].items()}

    async def read_file(self, element: Mapping[str, Any]) -> bytes | None:
        info = element.get(FILE_KEY)
        if not element.get("objectKey") or not info:
            return None
        if info.get("missing"):
            return None
        sha256 = str(info.get("sha256", ""))
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise InvalidInputError(f"element {element['id']}: {FILE_KEY} has no valid sha256")
        def read() -> bytes:
            with _open_regular(self.path, _file_path(sha256)) as handle:
                return handle.read()

        try:
            data = await asyncio.to_thread(read)
        except FileNotFoundError as exc:
            raise StorageError(f"the bundle lacks the file of element {element['id']} "
                               f"({_file_path(sha256)})", detail=element["id"]) from exc
        if hashlib.sha256(data).hexdigest() != sha256 or len(data) != info.get("size"):
            raise StorageError(f"{_file_path(sha256)} in the bundle does not match its hash "
                               f"or size (element {element['id']})", detail=element["id"])
        return data

    async def close(self) -> None:
        for lines in self._open:
            lines.close()
