"""A tampered bundle is refused whole, before anything is written (issue 16, the outside attack's
findings F1-F7): ``chainlit-orm import`` exits with status 1 and one line naming the file and
line, the library raises the typed error, and the destination database and storage hold nothing
afterwards (both are looked at directly, not through the layer)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chainlit.user import User

from chainlit_orm import FsspecStorage, SQLDataLayer
from chainlit_orm.cli import main
from chainlit_orm.errors import InvalidInputError, StorageError
from chainlit_orm.transfer import export, import_bundle
from tests.fixtures.legacy import temp_sqlite_url
from tests.transfer.seed import seed_many

TABLES = ("users", "threads", "steps", "elements", "feedbacks")


@pytest.fixture
async def bundle(tmp_path: Path) -> Path:
    """An exported bundle of 2 users and 3 threads, with element files."""
    files = f"file://{tmp_path / 'src-files'}"
    async with temp_sqlite_url(tmp_path) as url:
        layer = SQLDataLayer(url, storage=FsspecStorage(files, mount=False), create_schema=True)
        users = [await layer.create_user(User(identifier=f"u{i}@example.com")) for i in (1, 2)]
        await seed_many(layer, users, 3)
        await layer.close()
        out = tmp_path / "bundle"
        summary = await export(url, out, src_storage=FsspecStorage(files, mount=False))
        assert summary.rows == {"users": 2, "threads": 3, "steps": 9, "elements": 3,
                                "feedbacks": 1}
        assert summary.files == 3
        return out


def lines(bundle: Path, name: str) -> list[bytes]:
    return (bundle / name).read_bytes().splitlines(keepends=True)


def write(bundle: Path, name: str, new: list[bytes]) -> None:
    (bundle / name).write_bytes(b"".join(new))


def edit(bundle: Path, name: str, index: int, change: Callable[[dict[str, Any]], None]) -> int:
    """Change record ``index`` of ``name`` (canonical JSON again); return its line number."""
    old = lines(bundle, name)
    data = json.loads(old[index])
    change(data)
    old[index] = json.dumps(data, sort_keys=True, separators=(",", ":"),
                            ensure_ascii=False).encode() + b"\n"
    write(bundle, name, old)
    return index % len(old) + 1


def fix_manifest(bundle: Path) -> None:
    """Make the manifest agree with the edited files, as a careful attacker would."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    entries = [*manifest["entities"].values(), manifest["files"]]
    for entry in (e for e in entries if "path" in e):
        data = (bundle / entry["path"]).read_bytes()
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        entry["count"] = len(data.splitlines())
    (bundle / "manifest.json").write_text(json.dumps(manifest))


async def refused(bundle: Path, tmp_path: Path, error: type[Exception], message: str) -> None:
    """The import is refused with ``error`` whose whole message is ``message`` (a regex), by the
    library and by the CLI (status 2, that one line on stderr), and DST holds nothing."""
    db = tmp_path / "dst.db"
    store = tmp_path / "dst-files"
    url = f"sqlite+aiosqlite:///{db}"
    with pytest.raises(error) as caught:
        await import_bundle(bundle, url, dst_storage=f"file://{store}", batch=1,
                            checkpoint=tmp_path / "ck.json")
    assert type(caught.value) is error
    assert re.fullmatch(message, str(caught.value)), str(caught.value)
    assert_empty(db, store)

    import asyncio
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = await asyncio.to_thread(main, [
            "import", str(bundle), f"sqlite:///{db}", "--dst-storage", f"file://{store}",
            "--batch", "1", "--checkpoint", str(tmp_path / "ck.json")])
    assert code == 1
    shown = [line for line in err.getvalue().splitlines() if line.startswith("chainlit-orm:")]
    assert len(shown) == 1 and "Traceback" not in err.getvalue(), err.getvalue()
    assert re.fullmatch(f"chainlit-orm: error: {message}", shown[0]), shown[0]
    assert_empty(db, store)


def assert_empty(db: Path, store: Path) -> None:
    """No row in any table of DST (the bundle is refused before migrate: not even the file)
    and no object in its storage."""
    if db.exists():
        with sqlite3.connect(db) as conn:
            names = {r[0] for r in conn.execute("select name from sqlite_master")}
            counts = {t: conn.execute(f"select count(*) from {t}").fetchone()[0]
                      for t in TABLES if t in names}
        assert counts == dict.fromkeys(counts, 0)
    stored = [p for p in store.rglob("*") if p.is_file()] if store.exists() else []
    assert stored == []


# --------------------------------------------------------------------- F6, F7: the lines


async def test_a_line_that_is_not_utf8_is_refused(bundle: Path, tmp_path: Path) -> None:
    old = lines(bundle, "threads.jsonl")
    old[1] = old[1].replace(b'"name":"', b'"name":"\xff\xfe', 1)
    write(bundle, "threads.jsonl", old)
    fix_manifest(bundle)
    await refused(bundle, tmp_path, InvalidInputError,
                  r"threads\.jsonl line 2 is not UTF-8 \(byte \d+ of the line: b'\\xff'\)")


async def test_json_nested_100000_deep_is_refused_with_the_limit(bundle: Path,
                                                                tmp_path: Path) -> None:
    old = lines(bundle, "steps.jsonl")
    assert b'"metadata":{}' in old[0]
    old[0] = old[0].replace(b'"metadata":{}', b'"metadata":' + b"[" * 100_000 + b"]" * 100_000)
    write(bundle, "steps.jsonl", old)
    fix_manifest(bundle)
    await refused(bundle, tmp_path, InvalidInputError,
                  r"steps\.jsonl line 1: step record is nested more than 32 levels deep")


# ------------------------------------------------------------------- F5: unknown keys


async def test_an_unknown_key_is_refused_not_dropped(bundle: Path, tmp_path: Path) -> None:
    edit(bundle, "users.jsonl", 1, lambda u: u.update(evil=1))
    fix_manifest(bundle)
    await refused(bundle, tmp_path, InvalidInputError,
                  r"users\.jsonl line 2: unknown key 'evil' in a user record \(not a column of "
                  r"this model set's user table\)")


# ------------------------------------------------------ F1: the manifest's hashes and counts


def _manifest(bundle: Path, change: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


async def test_a_record_file_changed_after_the_export_is_refused(bundle: Path,
                                                                tmp_path: Path) -> None:
    edit(bundle, "steps.jsonl", 0, lambda s: s.update(output="evil"))  # a valid record
    await refused(bundle, tmp_path, InvalidInputError,
                  r"steps\.jsonl does not match the SHA-256 in the manifest \(the file was "
                  r"changed after the export\)")


@pytest.mark.parametrize(("entry", "name"), [
    (lambda m: m["entities"]["users"], "users"), (lambda m: m["files"], "files")])
async def test_a_manifest_hash_that_is_not_the_files_is_refused(
        bundle: Path, tmp_path: Path, entry: Callable[[dict[str, Any]], dict[str, Any]],
        name: str) -> None:
    _manifest(bundle, lambda m: entry(m).update(sha256="0" * 64))
    await refused(bundle, tmp_path, InvalidInputError,
                  rf"{name}\.jsonl does not match the SHA-256 in the manifest \(the file was "
                  r"changed after the export\)")


async def test_a_manifest_count_that_is_not_the_files_is_refused(bundle: Path,
                                                                tmp_path: Path) -> None:
    _manifest(bundle, lambda m: m["entities"]["steps"].update(count=17))
    await refused(bundle, tmp_path, InvalidInputError,
                  r"steps\.jsonl holds 9 lines; the manifest counts 17")


async def test_a_manifest_entry_that_is_missing_is_refused(bundle: Path, tmp_path: Path) -> None:
    _manifest(bundle, lambda m: m["entities"]["feedbacks"].pop("sha256"))
    await refused(bundle, tmp_path, InvalidInputError,
                  r"manifest\.json: entities\.feedbacks\.sha256 is not a SHA-256: None")


# ----------------------------------------------------------- F3: order and duplicates


async def test_records_out_of_order_are_refused(bundle: Path, tmp_path: Path) -> None:
    old = lines(bundle, "steps.jsonl")
    old[0], old[1] = old[1], old[0]
    write(bundle, "steps.jsonl", old)
    fix_manifest(bundle)
    first = json.loads(old[1])["id"]
    await refused(bundle, tmp_path, InvalidInputError,
                  rf"steps\.jsonl line 2: step {first} is out of order \(the file is sorted by "
                  r"threadId, id, each record once\)")


async def test_a_repeated_record_is_refused(bundle: Path, tmp_path: Path) -> None:
    old = lines(bundle, "threads.jsonl")
    old.insert(1, old[0])
    write(bundle, "threads.jsonl", old)
    fix_manifest(bundle)
    first = json.loads(old[0])["id"]
    await refused(bundle, tmp_path, InvalidInputError,
                  rf"threads\.jsonl line 2: thread {first} repeats the one before \(the file "
                  r"is sorted by id, each record once\)")


async def test_one_id_in_two_threads_is_refused(bundle: Path, tmp_path: Path) -> None:
    old = lines(bundle, "steps.jsonl")
    steps = [json.loads(line) for line in old]
    assert [s["threadId"] for s in steps[-3:]] == [steps[-1]["threadId"]] * 3
    assert steps[0]["threadId"] < steps[-1]["threadId"]
    write(bundle, "steps.jsonl", old[:-3] + old[-1:])  # the last thread keeps one step
    line = edit(bundle, "steps.jsonl", -1, lambda s: s.update(id=steps[0]["id"]))
    fix_manifest(bundle)
    await refused(bundle, tmp_path, InvalidInputError,
                  rf"steps\.jsonl line {line}: step {steps[0]['id']} is already in the bundle "
                  r"\(in another thread\)")


# ------------------------------------------------------------------------- F4: links


@pytest.mark.parametrize("what", ["file", "directory"])
async def test_a_link_in_the_bundle_is_refused(bundle: Path, tmp_path: Path, what: str) -> None:
    """Even a link to the very bytes the index names (the hash matches): nothing in a bundle
    may lead outside it."""
    stored = sorted(p for p in (bundle / "files").rglob("*") if p.is_file())[0]
    outside = tmp_path / "outside" / stored.parent.name
    outside.mkdir(parents=True)
    (outside / stored.name).write_bytes(stored.read_bytes())
    if what == "file":
        stored.unlink()
        os.symlink(outside / stored.name, stored)
        shown = f"files/{stored.parent.name}/{stored.name}"
    else:
        for p in stored.parent.iterdir():
            (outside / p.name).write_bytes(p.read_bytes())
            p.unlink()
        stored.parent.rmdir()
        os.symlink(outside, stored.parent)
        shown = f"files/{stored.parent.name}"
    await refused(bundle, tmp_path, InvalidInputError,
                  rf"{shown} in the bundle is a symbolic link; a bundle holds regular files only")


# ------------------------------------------ F2: everything checked before the first write


def _stored(bundle: Path) -> tuple[Path, int]:
    """The first stored file and its line in files.jsonl."""
    stored = sorted(p for p in (bundle / "files").rglob("*") if p.is_file())[0]
    return stored, 1


@pytest.mark.parametrize("damage", ["bytes", "truncated"])
async def test_a_stored_file_that_does_not_match_is_refused(bundle: Path, tmp_path: Path,
                                                           damage: str) -> None:
    stored, line = _stored(bundle)
    data = stored.read_bytes()
    stored.write_bytes(data[:-1] + b"X" if damage == "bytes" else data[:3])
    name = f"files/{stored.parent.name}/{stored.name}"
    await refused(bundle, tmp_path, StorageError,
                  rf"{name} in the bundle does not match its hash or size \(files\.jsonl "
                  rf"line {line}\)")


async def test_an_index_entry_leading_out_of_the_bundle_is_refused(bundle: Path,
                                                                  tmp_path: Path) -> None:
    old = lines(bundle, "files.jsonl")
    entry = json.loads(old[0])
    entry["path"] = "files/../../outside"
    old[0] = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
    write(bundle, "files.jsonl", old)
    fix_manifest(bundle)
    await refused(bundle, tmp_path, InvalidInputError,
                  r'files\.jsonl line 1 is not \{"path": "files/HEX\[:2\]/HEX", "sha256": HEX, '
                  r'"size": BYTES\}: b\'\{"path":"files/\.\./\.\./outside",.*')


async def test_an_object_key_leading_out_of_the_storage_is_refused(bundle: Path,
                                                                  tmp_path: Path) -> None:
    element = json.loads(lines(bundle, "elements.jsonl")[0])
    edit(bundle, "elements.jsonl", 0, lambda e: e.update(objectKey="../../escaped"))
    fix_manifest(bundle)
    await refused(bundle, tmp_path, InvalidInputError,
                  rf"elements\.jsonl line 1: element {element['id']}: invalid object key "
                  r"'\.\./\.\./escaped': contains a '\.' or '\.\.' segment")
    assert not (tmp_path / "escaped").exists()


async def test_an_element_naming_a_file_the_bundle_lacks_is_refused(bundle: Path,
                                                                   tmp_path: Path) -> None:
    element = json.loads(lines(bundle, "elements.jsonl")[-1])
    line = edit(bundle, "elements.jsonl", -1,
                lambda e: e.update({"$file": {"sha256": "1" * 64, "size": 3}}))
    fix_manifest(bundle)
    await refused(bundle, tmp_path, InvalidInputError,
                  rf"elements\.jsonl line {line}: element {element['id']} names file "
                  rf"files/11/{'1' * 64} of 3 bytes, which is not in files\.jsonl")


async def test_a_thread_whose_user_is_not_in_the_bundle_is_refused(bundle: Path,
                                                                  tmp_path: Path) -> None:
    thread = json.loads(lines(bundle, "threads.jsonl")[-1])
    stranger = "ffffffff-ffff-4fff-8fff-ffffffffffff"
    line = edit(bundle, "threads.jsonl", -1, lambda t: t.update(userId=stranger))
    fix_manifest(bundle)
    await refused(bundle, tmp_path, InvalidInputError,
                  rf"threads\.jsonl line {line}: thread {thread['id']} names user {stranger}, "
                  r"which is not in the bundle")


async def test_a_bad_last_record_leaves_nothing_written(bundle: Path, tmp_path: Path) -> None:
    """The last line of the last file: users, threads, steps, elements and their files
    before it would all be written by a check that came later."""
    line = edit(bundle, "feedbacks.jsonl", -1, lambda f: f.update(value=5))
    fix_manifest(bundle)
    await refused(bundle, tmp_path, InvalidInputError,
                  rf"feedbacks\.jsonl line {line}: feedback value must be 0 or 1, got 5")
