"""The bundle: one user's data-access export, the manifest's counts and hashes, import into
another backend, and refusal of a damaged bundle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from chainlit.user import User

from chainlit_orm import SQLDataLayer
from chainlit_orm.errors import ConfigurationError, InvalidInputError, StorageError
from chainlit_orm.transfer import export, import_bundle
from tests.fixtures.legacy import temp_sqlite_url
from tests.transfer.conftest import dynamo_table, memory_storage
from tests.transfer.seed import answers, seed, seed_many
from tests.transfer.test_round_trip import layer_for, tree


def _lines(bundle: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (bundle / name).read_text().splitlines()]


@pytest.fixture
async def source(tmp_path: Path) -> Any:
    """A SQLite store: the seeded one plus 6 small threads of two more users."""
    async with temp_sqlite_url(tmp_path) as url, memory_storage("bundle") as storage:
        layer = SQLDataLayer(url, storage=storage, create_schema=True)
        seeded = await seed(layer, big_text=False)
        extra = [await layer.create_user(User(identifier=f"x{i}@example.com")) for i in (1, 2)]
        many = await seed_many(layer, extra, 6)
        wanted = await answers(layer, seeded, messages=True)
        await layer.close()
        yield url, storage, seeded, many, wanted


async def test_one_users_export_holds_exactly_their_data(source: Any, tmp_path: Path) -> None:
    url, storage, seeded, _many, _ = source
    alice = seeded.users["alice@example.com"]
    out = tmp_path / "alice"
    summary = await export(url, out, src_storage=storage, user="alice@example.com")
    assert summary.rows == {"users": 1, "threads": 2, "steps": 5, "elements": 5,
                            "feedbacks": 2}
    assert [u["identifier"] for u in _lines(out, "users.jsonl")] == ["alice@example.com"]
    threads = _lines(out, "threads.jsonl")
    assert sorted(t["id"] for t in threads) == sorted(
        [seeded.threads["alice-1"], seeded.threads["alice-2"]])
    assert {t["userId"] for t in threads} == {alice.id}
    ids = {t["id"] for t in threads}
    for name in ("steps.jsonl", "elements.jsonl", "feedbacks.jsonl"):
        assert {row["threadId"] for row in _lines(out, name)} <= ids, name
    # exactly alice's files: the bytes of every element of hers that has one, nothing else
    from chainlit_orm.transfer._layer import read_object

    wanted = set()
    for element in _lines(out, "elements.jsonl"):
        if element["objectKey"]:
            data = await read_object(storage, element["objectKey"])
            assert data is not None
            wanted.add(hashlib.sha256(data).hexdigest())
            assert element["$file"] == {"sha256": hashlib.sha256(data).hexdigest(),
                                        "size": len(data)}
        else:
            assert element["$file"] is None
    stored = {p.name for p in (out / "files").rglob("*") if p.is_file()}
    assert stored == wanted and len(stored) == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scope"] == {"user": "alice@example.com", "since": None}
    assert manifest["source"] == url and manifest["exported_at"].endswith("Z")
    for name, entry in manifest["entities"].items():
        data = (out / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), name
        assert entry["count"] == len(data.splitlines()) == summary.rows[name]
    index = _lines(out, "files.jsonl")
    assert manifest["files"] == {
        "path": "files.jsonl", "count": 4, "bytes": sum(f["size"] for f in index),
        "sha256": hashlib.sha256((out / "files.jsonl").read_bytes()).hexdigest()}
    assert [f["sha256"] for f in index] == sorted(wanted)


async def test_since_compares_thread_activity(source: Any, tmp_path: Path) -> None:
    url, storage, _seeded, _many, _ = source
    full = tmp_path / "full"
    await export(url, full, src_storage=storage, files=False)
    activity = sorted(t["activityAt"] for t in _lines(full, "threads.jsonl"))
    since = activity[-3]
    out = tmp_path / "since"
    summary = await export(url, out, src_storage=storage, since=since, files=False)
    assert sorted(t["activityAt"] for t in _lines(out, "threads.jsonl")) == activity[-3:]
    assert summary.rows["threads"] == 3 and summary.rows["users"] == 5
    assert json.loads((out / "manifest.json").read_text())["files"] == {"included": False}
    assert not (out / "files").exists() or not any((out / "files").iterdir())
    assert all("$file" not in e for e in _lines(out, "elements.jsonl"))


@pytest.mark.parametrize("backend", ["sqlite", "dynamodb"])
async def test_import_answers_like_the_source(source: Any, tmp_path: Path, backend: str) -> None:
    url, storage, seeded, _many, wanted = source
    bundle = tmp_path / "all"
    await export(url, bundle, src_storage=storage)
    target: Any = (lambda: temp_sqlite_url(tmp_path)) if backend == "sqlite" else dynamo_table
    async with target() as dst, memory_storage("import") as dst_storage:
        summary = await import_bundle(bundle, dst, dst_storage=dst_storage,
                                      checkpoint=tmp_path / "ck.json")
        assert summary.rows == {"users": 5, "threads": 11, "steps": 28, "elements": 14,
                                "feedbacks": 6}
        assert summary.files == 12 and summary.verified_threads == 11
        layer = layer_for(dst, dst_storage)
        try:
            got = await answers(layer, seeded, messages=backend != "dynamodb")
        finally:
            await layer.close()
        for key, value in wanted.items():
            if backend == "dynamodb" and key.startswith("message "):
                assert got[key] is None
            else:
                assert got[key] == value, key
        again = tmp_path / "again"
        await export(dst, again, src_storage=dst_storage)
        strip = {"manifest.json"}
        assert {k: v for k, v in tree(again).items() if k not in strip} == {
            k: v for k, v in tree(bundle).items() if k not in strip}


async def test_a_damaged_bundle_is_refused(source: Any, tmp_path: Path) -> None:
    url, storage, _seeded, _many, _ = source
    bundle = tmp_path / "b"
    await export(url, bundle, src_storage=storage)
    with pytest.raises(ConfigurationError, match="exists; export writes a new directory"):
        await export(url, bundle, src_storage=storage)

    some_file = next(p for p in (bundle / "files").rglob("*") if p.is_file())
    some_file.write_bytes(some_file.read_bytes() + b"!")
    async with temp_sqlite_url(tmp_path) as dst, memory_storage("bad") as dst_storage:
        with pytest.raises(StorageError, match=f"files/{some_file.name[:2]}/{some_file.name} in "
                                               "the bundle does not match its hash or size"):
            await import_bundle(bundle, dst, dst_storage=dst_storage,
                                checkpoint=tmp_path / "1.json")

    steps = (bundle / "steps.jsonl").read_text().splitlines()
    (bundle / "steps.jsonl").write_text("\n".join([steps[0], "{not json", *steps[1:]]) + "\n")
    async with temp_sqlite_url(tmp_path) as dst:
        with pytest.raises(InvalidInputError, match=r"steps\.jsonl line 2 is not JSON"):
            await import_bundle(bundle, dst, files=False, checkpoint=tmp_path / "2.json")

    broken = json.loads(steps[0])
    broken["createdAt"] = "yesterday"
    (bundle / "steps.jsonl").write_text("\n".join([json.dumps(broken), *steps[1:]]) + "\n")
    async with temp_sqlite_url(tmp_path) as dst:
        with pytest.raises(InvalidInputError, match=r"steps\.jsonl line 1: not an ISO-8601 "
                                                    r"timestamp: 'yesterday'"):
            await import_bundle(bundle, dst, files=False, checkpoint=tmp_path / "3.json")

    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = 2
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigurationError, match="is not a chainlit-orm-bundle version 1 "
                                                 "bundle \\(format 'chainlit-orm-bundle', "
                                                 "version 2\\)"):
        await import_bundle(bundle, "sqlite+aiosqlite:///unused.db")
