"""A SQL purge sweeps the element files no row refers to (issue 14 item 11: an element write
whose outcome is unknown keeps its object by design), once older than the grace period.

On SQLite, PostgreSQL and MariaDB (DynamoDB's own sweep, of the files of threads whose thread
item is gone, is tested in ``test_dynamodb_ttl.py``), with the storage on a local directory whose
files' modification times the test sets, so the ages are exact.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import chainlit as cl
import pytest

from chainlit_orm import FsspecStorage
from chainlit_orm.cli import main
from chainlit_orm.errors import InvalidInputError
from chainlit_orm.models.types import format_timestamp, parse_timestamp, utc_now
from tests.contract.conftest import ContractBackend, message, new_id
from tests.lifecycle.conftest import LayerFactory, new_user, store_url

#: The sweep is SQL's: collected for the SQL backends only (nothing is skipped).
SQL_ONLY = pytest.mark.parametrize("fresh_store", ["sqlite", "postgres", "mariadb"],
                                   indirect=True)


def _stored(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and ".chainlit-orm-meta" not in p.parts)


def _age(root: Path, key: str, seconds: float) -> None:
    moment = time.time() - seconds
    os.utime(root / key, (moment, moment))


@SQL_ONLY
async def test_purge_sweeps_old_element_files_no_row_refers_to(
        make_fresh_layer: LayerFactory, fresh_store: tuple[ContractBackend, Any],
        files_root: Path, storage: FsspecStorage, capsys: pytest.CaptureFixture[str],
        chainlit_ctx: Any) -> None:
    layer = await make_fresh_layer()
    user = await new_user(layer)
    tid = new_id()
    await layer.update_thread(tid, name="t", user_id=user.id)
    question = message(tid, "question")
    await layer.create_step(question)
    file = cl.File(name="kept.txt", content=b"has its row", for_id=question["id"])
    file.thread_id = tid
    await layer.create_element(file)
    with_row = f"threads/{tid}/files/{file.id}"
    # uploads whose row write never happened (the write's outcome was unknown): in a live
    # thread, and in a thread that is gone
    old = f"threads/{tid}/files/{new_id()}"
    old_elsewhere = f"threads/{new_id()}/files/{new_id()}"
    fresh = f"threads/{tid}/files/{new_id()}"
    text = f"threads/{tid}/steps/{new_id()}/output"  # not an element file: never swept
    for key in (old, old_elsewhere, fresh, text):
        await storage.upload_file(key, b"left behind", "text/plain")
    for key in (with_row, old, old_elsewhere, text):
        _age(files_root, key, 2 * 3600)
    everything = sorted([with_row, old, old_elsewhere, fresh, text])
    assert _stored(files_root) == everything

    # off by default: a storage may be shared with another store whose files this database
    # does not know (the outside attack's copy --user onto the same storage lost a file)
    default = await layer.purge(older_than=timedelta(days=90))
    assert (default.counts["thread"], default.unreferenced_files) == (0, 0)
    assert not [line for line in default.lines() if "no row refers to" in line]
    assert _stored(files_root) == everything
    with pytest.raises(InvalidInputError, match="orphan_grace must be a positive timedelta"):
        await layer.purge(older_than=timedelta(days=90), orphan_grace=timedelta(0))

    hour = timedelta(hours=1)
    dry = await layer.purge(older_than=timedelta(days=90), dry_run=True, orphan_grace=hour)
    assert (dry.counts["thread"], dry.unreferenced_files) == (0, 2)
    assert dry.lines()[-2] == ("would remove 2 stored element file(s) no row refers to, older "
                               "than 1h")
    assert _stored(files_root) == everything

    # a reference time in the future (now=; 30 days on, so no thread expires) does not age
    # the files: the clock does
    later = format_timestamp(parse_timestamp(utc_now()) + timedelta(days=30))
    report = await layer.purge(older_than=timedelta(days=90), now=later, orphan_grace=hour)
    assert report.unreferenced_files == 2
    assert report.lines()[-1] == "removed 2 stored element file(s) no row refers to, older than 1h"
    assert _stored(files_root) == sorted([with_row, fresh, text])
    assert await layer.get_thread(tid) is not None

    # a longer grace keeps a file younger than it; the CLI's --orphan-grace
    _age(files_root, fresh, 2 * 3600)
    again = await layer.purge(older_than=timedelta(days=90), orphan_grace=timedelta(hours=3))
    assert again.unreferenced_files == 0
    url = store_url(*fresh_store)
    code = await asyncio.to_thread(main, ["purge", url, "--older-than", "90d", "--storage",
                                          f"file://{files_root}", "--orphan-grace", "90m",
                                          "--timeout", "60", "--on-delete-timeout", "5"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[-1] == "removed 1 stored element file(s) no row refers to, older than 90m"
    assert _stored(files_root) == sorted([with_row, text])
    thread = await layer.get_thread(tid)
    assert thread is not None and [e["id"] for e in thread["elements"] or []] == [file.id]
