"""Erase a user (issue #17, item 1) on every backend: everything naming the user is removed,
reported per entity, and a scan of every table, index and stored object finds neither the
user's id nor their identifier afterwards. Identifiers are random, so no other text holds them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import chainlit as cl
import pytest
from chainlit.types import Feedback

from chainlit_orm.errors import OnDeleteError
from chainlit_orm.layers.base import ChainlitLayer
from tests.contract.conftest import ContractBackend, message, new_id
from tests.lifecycle.conftest import MOTO, LayerFactory, new_user
from tests.lifecycle.scan import scan_dynamodb, scan_files, scan_sql


async def _conversation(layer: ChainlitLayer, user_id: str, identifier: str) -> dict[str, Any]:
    """A thread full of the user's id and identifier: name, metadata, a message authored by the
    identifier, an element whose name and bytes hold both, a favorited step, feedback."""
    tid = new_id()
    await layer.update_thread(tid, name=f"chat of {identifier}", user_id=user_id,
                              metadata={"owner": identifier, "uid": user_id}, tags=[identifier])
    question = message(tid, f"hello, I am {identifier} ({user_id})", author=identifier)
    await layer.create_step(question)
    answer = message(tid, f"hi {identifier}", type_="assistant_message")
    answer["metadata"] = {"favorite": True}
    await layer.create_step(answer)
    file = cl.File(name=f"{identifier}.txt", content=f"{identifier} {user_id}".encode(),
                   for_id=question["id"])
    file.thread_id = tid
    await layer.create_element(file)
    await layer.upsert_feedback(Feedback(forId=answer["id"], threadId=tid, value=1,
                                         comment=f"from {identifier}"))
    return {"thread": tid, "steps": 2, "elements": 1, "feedback": 1}


async def _scan(lstore: tuple[ContractBackend, Any], files_root: Path, needles: list[str]
                ) -> dict[str, int]:
    entry, handle = lstore
    if entry.sql:
        found = await scan_sql(handle, needles)
    else:
        found = scan_dynamodb(handle, MOTO, needles)
    found.update(scan_files(files_root, needles))
    return found


async def test_erase_user_leaves_nothing_naming_them(
        make_layer: LayerFactory, lstore: tuple[ContractBackend, Any], files_root: Path,
        chainlit_ctx: Any, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[str, str | None]] = []

    async def hook(thread_id: str, user_id: str | None) -> None:
        calls.append((thread_id, user_id))

    layer = await make_layer(on_delete=hook, soft_delete=None)
    identifier = f"erase-{uuid.uuid4().hex}@example.com"
    user = await new_user(layer, identifier)
    other = await new_user(layer)
    threads = [await _conversation(layer, user.id, identifier) for _ in range(3)]
    kept = await _conversation(layer, other.id, other.identifier)
    needles = [identifier, user.id]
    before = await _scan(lstore, files_root, needles)
    assert sum(v for k, v in before.items() if not k.startswith("<")) > 0  # the scan sees them

    dry = await layer.erase_user(identifier, dry_run=True)
    assert dry.counts == {"user": 1, "thread": 3, "step": 6, "element": 3, "feedback": 3,
                          "file": 3}
    assert calls == []
    report = await layer.erase_user(identifier)
    assert report.counts == {"user": 1, "thread": 3, "step": 6, "element": 3, "feedback": 3,
                             "file": 3}
    assert report.user_id == user.id
    assert sorted(calls) == sorted((t["thread"], user.id) for t in threads)

    after = await _scan(lstore, files_root, needles)
    remaining = {k: v for k, v in after.items() if not k.startswith("<")}
    print(f"{lstore[0].name}: scanned {after}")
    assert remaining == {}
    assert after.get("<files>", 0) > 0  # the other user's file is still there to be scanned
    # the other user and their thread are untouched
    assert await layer.get_user(other.identifier) is not None
    thread = await layer.get_thread(kept["thread"])
    assert thread is not None and len(thread["steps"]) == 2 and len(thread["elements"]) == 1
    # the erased user is gone for the layer too, and a second erasure finds nothing
    assert await layer.get_user(identifier) is None
    again = await layer.erase_user(identifier)
    assert again.counts == {"user": 0, "thread": 0, "step": 0, "element": 0, "feedback": 0,
                            "file": 0}


async def test_erase_user_hook_failure_is_raised_after_everything_is_removed(
        make_layer: LayerFactory, chainlit_ctx: Any) -> None:
    failing: list[str] = []

    async def hook(thread_id: str, user_id: str | None) -> None:
        failing.append(thread_id)
        raise RuntimeError(f"vector store down for {thread_id}")

    layer = await make_layer(on_delete=hook)
    identifier = f"erase-{uuid.uuid4().hex}@example.com"
    user = await new_user(layer, identifier)
    threads = [(await _conversation(layer, user.id, identifier))["thread"] for _ in range(2)]
    with pytest.raises(OnDeleteError) as caught:
        await layer.erase_user(identifier)
    assert sorted(caught.value.detail) == sorted(threads)  # type: ignore[arg-type]
    assert sorted(failing) == sorted(threads)
    assert isinstance(caught.value.__cause__, RuntimeError)
    for tid in threads:
        assert await layer.get_thread(tid) is None
    assert await layer.get_user(identifier) is None


async def test_erase_user_cli_with_an_on_delete_hook(
        make_layer: LayerFactory, lstore: tuple[ContractBackend, Any], files_root: Path,
        tmp_path: Path, chainlit_ctx: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from chainlit_orm.cli import main
    from tests.lifecycle.conftest import store_url

    layer = await make_layer()
    identifier = f"erase-{uuid.uuid4().hex}@example.com"
    user = await new_user(layer, identifier)
    tid = (await _conversation(layer, user.id, identifier))["thread"]
    hooked = tmp_path / "hooked.txt"
    monkeypatch.setenv("CLORM_TEST_HOOK_FILE", str(hooked))
    monkeypatch.setenv("CHAINLIT_ORM_STORAGE_URL", f"file://{files_root}")  # no --storage
    url = store_url(*lstore)
    args = ["erase-user", url, identifier, "--on-delete", "tests.lifecycle.hookmod:record"]
    assert await asyncio.to_thread(main, [*args, "--dry-run"]) == 0
    assert capsys.readouterr().out == (
        f"erase-user user {identifier!r} (id {user.id}): would remove user 1, thread 1, step 2, "
        "element 1, feedback 1, file 1 (dry run: nothing changed)\n")
    assert not hooked.exists()
    assert await asyncio.to_thread(main, args) == 0
    assert capsys.readouterr().out == (
        f"erase-user user {identifier!r} (id {user.id}): removed user 1, thread 1, step 2, "
        "element 1, feedback 1, file 1\n")
    assert hooked.read_text() == f"{tid} {user.id}\n"
    assert [p for p in files_root.rglob("*") if p.is_file() and tid in str(p)] == []
    assert await asyncio.to_thread(main, ["erase-user", url, identifier, "--on-delete",
                                          "tests.lifecycle.hookmod:missing"]) == 2
