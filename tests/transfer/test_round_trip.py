"""SQLite -> PostgreSQL -> DynamoDB -> MariaDB -> SQLite: the canonical export is byte-identical at
the end, and every stop answers Chainlit's reads (lists, searches, feedback filters, favorites,
whole threads) exactly as the store written through the layer."""

from __future__ import annotations

import contextlib
import filecmp
import itertools
from pathlib import Path

from chainlit_orm import DynamoDataLayer, FsspecStorage, SQLDataLayer
from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.transfer import copy, export
from chainlit_orm.transfer._layer import read_object
from tests.fixtures.legacy import temp_mariadb_db, temp_postgres_db, temp_sqlite_url
from tests.transfer.conftest import (
    MOTO_ENDPOINT,
    REGION,
    dynamo_table,
    memory_storage,
    s3_storage,
)
from tests.transfer.seed import answers, seed


def layer_for(url: str, storage: FsspecStorage) -> ChainlitLayer:
    if url.startswith("dynamodb://"):
        table = url.split("://", 1)[1].split("?", 1)[0]
        return DynamoDataLayer(table, storage=storage, region=REGION, endpoint_url=MOTO_ENDPOINT)
    return SQLDataLayer(url, storage=storage)


def tree(root: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


EXPECTED_ROWS = {"users": 3, "threads": 5, "steps": 10, "elements": 8, "feedbacks": 3}


async def test_round_trip_through_every_backend(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        sqlite_a = await stack.enter_async_context(temp_sqlite_url(tmp_path))
        postgres = await stack.enter_async_context(temp_postgres_db())
        dynamo = await stack.enter_async_context(dynamo_table())
        maria = await stack.enter_async_context(temp_mariadb_db())
        sqlite_b = await stack.enter_async_context(temp_sqlite_url(tmp_path))
        stops: list[tuple[str, FsspecStorage]] = [
            (sqlite_a, await stack.enter_async_context(memory_storage("a"))),
            (postgres, await stack.enter_async_context(memory_storage("pg"))),
            (dynamo, await stack.enter_async_context(s3_storage())),
            (maria, await stack.enter_async_context(memory_storage("maria"))),
            (sqlite_b, await stack.enter_async_context(memory_storage("b"))),
        ]

        layer = SQLDataLayer(sqlite_a, storage=stops[0][1], create_schema=True)
        seeded = await seed(layer)
        sql_answers = await answers(layer, seeded, messages=True)
        await layer.close()
        dynamo_answers = {**sql_answers, **{k: None for k in sql_answers
                                            if k.startswith("message ")}}
        # the seeded answers themselves (so equality below cannot pass on empty answers)
        alice, bob = seeded.users["alice@example.com"], seeded.users["bob 🐢@example.com"]
        t = seeded.threads
        assert sql_answers["list alice@example.com"][0][0] == t["alice-2"]
        assert [row[0] for row in sql_answers["list bob 🐢@example.com"]] == [t["bob-2"],
                                                                             t["bob-1"]]
        assert sql_answers["name alice@example.com"] == [t["alice-1"]]
        assert sql_answers["name bob 🐢@example.com"] == [t["bob-1"]]
        assert sql_answers["message alice@example.com"] == [t["alice-2"]]
        assert sql_answers["feedback 1 alice@example.com"] == [t["alice-1"]]
        assert sql_answers["feedback 0 alice@example.com"] == [t["alice-2"]]
        assert sql_answers["feedback 0 bob 🐢@example.com"] == [t["bob-1"]]
        assert len(sql_answers["favorites alice@example.com"]) == 1
        assert len(sql_answers["favorites bob 🐢@example.com"]) == 1
        assert alice.id != bob.id

        first = tmp_path / "export-0"
        summary = await export(sqlite_a, first, src_storage=stops[0][1], canonical=True)
        assert summary.rows == EXPECTED_ROWS and summary.files == seeded.files
        reference = tree(first)
        print(f"\nstop 0 sqlite (seeded): canonical export sha256 {_tree_digest(first)}, "
              f"manifest sha256 {_manifest_digest(first)}")  # shown with -s, for the record
        assert sorted(reference) == sorted([
            "manifest.json", "users.jsonl", "threads.jsonl", "steps.jsonl", "elements.jsonl",
            "feedbacks.jsonl", "files.jsonl",
            *(f"files/{name[:2]}/{name}" for name in _file_hashes(first))])

        digests = []
        for number, ((src, src_storage), (dst, dst_storage)) in enumerate(
                itertools.pairwise(stops), start=1):
            summary = await copy(src, dst, src_storage=src_storage, dst_storage=dst_storage,
                                 batch=2, checkpoint=tmp_path / f"ck-{number}.json")
            assert summary.rows == EXPECTED_ROWS, dst
            assert summary.files == seeded.files and not summary.files_in_place
            assert summary.verified_threads == EXPECTED_ROWS["threads"]
            assert not (tmp_path / f"ck-{number}.json").exists()
            layer = layer_for(dst, dst_storage)
            try:
                got = await answers(layer, seeded, messages=not dst.startswith("dynamodb://"))
            finally:
                await layer.close()
            if dst.startswith("dynamodb://"):  # the long text went to the storage, as the layer
                key = f"threads/{t['alice-2']}/steps/{seeded.big_step}/output"  # puts it there
                stored = await read_object(dst_storage, key)
                assert stored is not None and stored.decode().startswith("A zebra crossing is… 🦓🦓")
                assert len(stored) > 100_000
            wanted = dynamo_answers if dst.startswith("dynamodb://") else sql_answers
            for key in wanted:
                assert got[key] == wanted[key], (dst, key)
            out = tmp_path / f"export-{number}"
            await export(dst, out, src_storage=dst_storage, canonical=True)
            mismatch = filecmp.dircmp(first, out)
            assert tree(out) == reference, (dst, mismatch.diff_files)
            digests.append(_manifest_digest(out))
            print(f"stop {number} {dst.split(':', 1)[0]}: canonical export sha256 "
                  f"{_tree_digest(out)}, manifest sha256 {digests[-1]}")
        assert len(set(digests)) == 1 and digests[0] == _manifest_digest(first)


def _file_hashes(bundle: Path) -> list[str]:
    import json

    lines = (bundle / "files.jsonl").read_text().splitlines()
    return [json.loads(line)["sha256"] for line in lines]


def _manifest_digest(bundle: Path) -> str:
    import hashlib

    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()



def _tree_digest(bundle: Path) -> str:
    """SHA-256 over every file of a bundle (its relative path, its length, its bytes, in path
    order): one figure for the whole canonical export."""
    import hashlib

    digest = hashlib.sha256()
    for name, data in tree(bundle).items():
        digest.update(f"{name}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()
