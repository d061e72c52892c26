"""A backup restored, or an older copy copied, after an erasure: the threads the destination has
a tombstone for stay erased (issue #17, outside attack F1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from chainlit.user import User

from chainlit_orm import FsspecStorage
from chainlit_orm.models.modelset import DEFAULT_MODELS
from chainlit_orm.transfer import copy, export, import_bundle
from chainlit_orm.transfer._layer import migrate
from chainlit_orm.transfer.copy import ERASED_REASON
from tests.fixtures.legacy import temp_sqlite_url
from tests.transfer.conftest import dynamo_table
from tests.transfer.seed import seed_many
from tests.transfer.test_round_trip import layer_for


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and ".chainlit-orm-meta" not in p.parts)


@pytest.mark.parametrize("backend", ["sqlite", "dynamodb"])
async def test_import_and_copy_leave_out_tombstoned_threads(tmp_path: Path,
                                                            backend: str) -> None:
    root, old_root = tmp_path / "files", tmp_path / "old-files"
    files, old_files = f"file://{root}", f"file://{old_root}"
    async with (temp_sqlite_url(tmp_path) as sqlite_dst, dynamo_table() as table,
                temp_sqlite_url(tmp_path) as old):
        dst = sqlite_dst if backend == "sqlite" else table
        await migrate(dst, DEFAULT_MODELS)
        storage = FsspecStorage(files, mount=False)
        layer = layer_for(dst, storage)
        alice = await layer.create_user(User(identifier="alice@example.com"))
        bob = await layer.create_user(User(identifier="bob@example.com"))
        assert alice is not None and bob is not None
        # threads 0 and 2 are alice's, 1 is bob's; each with 3 steps and one file
        ids = await seed_many(layer, [alice, bob, alice], 3)
        erased, kept = [ids[0], ids[2]], ids[1]
        await export(dst, tmp_path / "bundle", src_storage=files)  # a backup
        await copy(dst, old, src_storage=files, dst_storage=old_files,  # an older store
                   checkpoint=tmp_path / "ck0.json")
        assert len(_files(root)) == 3

        removed = await layer.erase_user("alice@example.com")
        assert removed.counts["thread"] == 2 and removed.counts["file"] == 2
        assert len(_files(root)) == 1

        for how in ("import", "copy"):
            if how == "import":
                summary = await import_bundle(tmp_path / "bundle", dst, dst_storage=files,
                                              checkpoint=tmp_path / "ck1.json")
            else:
                summary = await copy(old, dst, src_storage=old_files, dst_storage=files,
                                     checkpoint=tmp_path / "ck2.json")
            assert summary.skipped == {ERASED_REASON: 2}, how
            assert summary.rows["threads"] == 1 and summary.rows["steps"] == 3, how
            assert summary.rows["elements"] == 1 and summary.files == 1, how
            assert summary.verified_threads == 1, how
            assert ("  left out: 2 thread erased in the destination (tombstone)"
                    in summary.lines()), how
            for thread_id in erased:
                assert await layer.get_thread(thread_id) is None, how
            assert await layer.get_thread(kept) is not None, how
            assert len(_files(root)) == 1, how  # the erased threads' files stay gone
        # the user row comes back (the destination keeps no trace of an erased identifier):
        # the operator runs erase-user again after a restore (docs/lifecycle.md)
        assert await layer.get_user("alice@example.com") is not None
        again = await layer.erase_user("alice@example.com")
        assert again.counts["user"] == 1 and again.counts["thread"] == 0
        await layer.close()
