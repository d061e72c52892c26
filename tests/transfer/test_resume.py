"""Safe to stop and run again; conflicts refused; other users' data left alone."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from chainlit.types import Pagination, ThreadFilter
from chainlit.user import User
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm import FsspecStorage, SQLDataLayer
from chainlit_orm.errors import ConflictError
from chainlit_orm.transfer import copy, export
from tests.fixtures.legacy import temp_postgres_db, temp_sqlite_url
from tests.transfer.conftest import dynamo_table, memory_storage
from tests.transfer.seed import seed_many
from tests.transfer.test_round_trip import layer_for, tree

REPO = Path(__file__).resolve().parents[2]
TABLES = ("users", "threads", "steps", "elements", "feedbacks")


async def _counts(url: str) -> dict[str, int]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return {t: int((await conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}"))).scalar_one())
                    for t in TABLES}
    finally:
        await engine.dispose()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and ".chainlit-orm-meta" not in p.parts)


def _cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "CHAINLIT_ORM_STORAGE_URL"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen([sys.executable, "-m", "chainlit_orm.cli", *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def _kill_when(proc: subprocess.Popen[str], checkpoint: Path,
                     ready: Any) -> dict[str, Any]:
    """SIGKILL ``proc`` as soon as its checkpoint satisfies ``ready``; the checkpoint seen."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if checkpoint.exists():
            try:
                state = json.loads(checkpoint.read_text())
            except ValueError:  # never: it is replaced atomically
                raise
            if ready(state):
                proc.send_signal(signal.SIGKILL)
                assert proc.wait() == -signal.SIGKILL  # killed mid-run, not finished
                return state
        assert proc.poll() is None, proc.communicate()
        await asyncio.sleep(0.005)
    raise AssertionError("the copy made no progress")


async def test_a_killed_copy_resumes_to_an_identical_result(tmp_path: Path) -> None:
    src_root, dst_root = tmp_path / "src-files", tmp_path / "dst-files"
    src_files, dst_files = f"file://{src_root}", f"file://{dst_root}"
    async with temp_sqlite_url(tmp_path) as src, temp_postgres_db() as dst:
        storage = FsspecStorage(src_files, mount=False)
        layer = SQLDataLayer(src, storage=storage, create_schema=True)
        users = [await layer.create_user(User(identifier=f"u{i}@example.com")) for i in range(3)]
        await seed_many(layer, users, 40)
        await layer.close()
        checkpoint = tmp_path / "ck.json"
        args = ("copy", src, dst, "--src-storage", src_files, "--dst-storage", dst_files,
                "--batch", "1", "--checkpoint", str(checkpoint))

        first = await _kill_when(_cli(*args, cwd=tmp_path), checkpoint,
                                 lambda s: s["users_done"])
        second = await _kill_when(_cli(*args, cwd=tmp_path), checkpoint,
                                  lambda s: s["after"] not in (None, first["after"]))
        assert second["rows"]["threads"] >= 1

        done = _cli(*args, cwd=tmp_path)
        out, err = done.communicate(timeout=300)
        assert done.returncode == 0, err
        after = json.loads(checkpoint.read_text()) if checkpoint.exists() else None
        assert after is None  # removed once verified
        assert "resumed after thread" in out and "verified: 40 threads" in out
        assert await _counts(dst) == await _counts(src) == {
            "users": 3, "threads": 40, "steps": 120, "elements": 40, "feedbacks": 20}
        assert _files(dst_root) == _files(src_root) and len(_files(src_root)) == 40

        # nothing differs, down to the bytes of a canonical export of each side
        await export(src, tmp_path / "a", src_storage=src_files, canonical=True)
        await export(dst, tmp_path / "b", src_storage=dst_files, canonical=True)
        assert tree(tmp_path / "a") == tree(tmp_path / "b")


async def test_conflicts_stop_the_copy_naming_the_row(tmp_path: Path) -> None:
    async with (temp_sqlite_url(tmp_path) as src, temp_sqlite_url(tmp_path) as dst,
                memory_storage("c") as storage):
        src_layer = SQLDataLayer(src, storage=storage, create_schema=True)
        alice = await src_layer.create_user(User(identifier="alice@example.com"))
        [thread_id] = await seed_many(src_layer, [alice], 1, files=False)
        await src_layer.close()

        # the destination knows alice under another id
        dst_layer = SQLDataLayer(dst, create_schema=True)
        other = await dst_layer.create_user(User(identifier="alice@example.com"))
        assert other is not None and other.id != alice.id
        before = await _counts(dst)
        with pytest.raises(ConflictError, match="user 'alice@example.com' exists in .* with "
                                                f"another id \\({other.id}, not {alice.id}\\)"):
            await copy(src, dst, files=False, checkpoint=tmp_path / "1.json")
        assert await _counts(dst) == before

        # the destination holds the thread for another user
        async with temp_sqlite_url(tmp_path) as dst2:
            layer2 = SQLDataLayer(dst2, create_schema=True)
            mallory = await layer2.create_user(User(identifier="mallory@example.com"))
            await layer2.update_thread(thread_id, name="mine", user_id=mallory.id)
            await layer2.close()
            before = await _counts(dst2)
            with pytest.raises(ConflictError, match=f"thread {thread_id} exists in .* belongs "
                                                    f"to another user \\({mallory.id}, not "
                                                    f"{alice.id}\\)"):
                await copy(src, dst2, files=False, checkpoint=tmp_path / "2.json")
            counts = await _counts(dst2)
            assert counts == {**before, "users": before["users"] + 1}  # alice was written
            layer2 = SQLDataLayer(dst2)
            try:
                kept = await layer2.get_thread(thread_id)
                assert kept is not None and kept["name"] == "mine" and kept["steps"] == []
            finally:
                await layer2.close()
        await dst_layer.close()


@pytest.mark.parametrize("backend", ["postgres", "dynamodb"])
async def test_other_users_data_is_left_alone(tmp_path: Path, backend: str) -> None:
    target: Any = temp_postgres_db if backend == "postgres" else dynamo_table
    async with (temp_sqlite_url(tmp_path) as src, target() as dst,
                memory_storage("src") as src_storage, memory_storage("dst") as dst_storage):
        from chainlit_orm import migrate

        await migrate(dst)
        theirs = layer_for(dst, dst_storage)
        zoe = await theirs.create_user(User(identifier="zoe@example.com", metadata={"z": 1}))
        [zoe_thread] = await seed_many(theirs, [zoe], 1)
        before = await theirs.get_thread(zoe_thread)
        ours = SQLDataLayer(src, storage=src_storage, create_schema=True)
        alice = await ours.create_user(User(identifier="alice@example.com"))
        await seed_many(ours, [alice], 3)
        await ours.close()

        for run in (1, 2):  # a second full run rewrites the same rows: nothing doubles
            summary = await copy(src, dst, src_storage=src_storage, dst_storage=dst_storage,
                                 checkpoint=tmp_path / f"ck{run}.json")
            assert summary.rows["threads"] == 3 and summary.verified_threads == 3
        for value, wanted in ((0, 1), (1, 0)):  # thread 1 has feedback 0 (seed_many)
            page = await theirs.list_threads(Pagination(first=10),
                                             ThreadFilter(userId=alice.id, feedback=value))
            assert len(page.data) == wanted
        # the copied counts are exact: deleting the one feedback takes the thread off the filter
        [rated] = (await theirs.list_threads(Pagination(first=10), ThreadFilter(
            userId=alice.id, feedback=0))).data
        full = await theirs.get_thread(rated["id"])
        assert full is not None
        [feedback] = [s["feedback"] for s in full["steps"] if s.get("feedback")]
        assert await theirs.delete_feedback(feedback["id"]) is True
        page = await theirs.list_threads(Pagination(first=10),
                                         ThreadFilter(userId=alice.id, feedback=0))
        assert page.data == []
        after = await theirs.get_thread(zoe_thread)
        assert before is not None and after is not None
        for thread in (before, after):
            for element in thread["elements"] or []:
                element["url"] = None  # signed afresh on every read
        assert after == before
        assert (await theirs.get_user("zoe@example.com")).metadata == {"z": 1}  # type: ignore[union-attr]
        await theirs.close()
