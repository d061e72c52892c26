"""The outside attack's findings on the data lifecycle (issue #17), each kept as a test on the
backends it concerns: late writes racing an erasure, trashed threads' steps and elements, the
purge's age parsing and keep rules, and DynamoDB's expiry and purge claims. Deterministic: each
race is replayed in the order that used to lose, not left to timing."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import chainlit as cl
import pytest
from chainlit.types import Pagination, ThreadFilter

from chainlit_orm.errors import InvalidInputError, NotFoundError
from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.lifecycle import parse_age
from chainlit_orm.lifecycle.records import ExpiryRule
from chainlit_orm.models.types import format_timestamp, parse_timestamp, utc_now
from tests.contract.conftest import ContractBackend, message, new_id
from tests.lifecycle.conftest import MOTO, LayerFactory, new_user, scan_store

#: A test about DynamoDB alone is collected for DynamoDB alone (never collected and then skipped
#: on the SQL backends: nothing is skipped in CI). ``lstore`` is the lifecycle suite's
#: parametrized store fixture; parametrizing it indirectly narrows its backends for one test.
DYNAMODB_ONLY = pytest.mark.parametrize("lstore", ["dynamodb"], indirect=True)


def _ago(days: int) -> str:
    return format_timestamp(parse_timestamp(utc_now()) - timedelta(days=days))


def _file(thread_id: str, for_id: str, content: bytes) -> cl.File:
    file = cl.File(name="a.txt", content=content, for_id=for_id)
    file.thread_id = thread_id
    return file


# ------------------------------------------------------------------ D: parse_age


@pytest.mark.parametrize("text", ["²d", "999999999d", "99999999999d", "36526d", "5218w", "0d",
                                  "1.5d", "-5d", "d", "90"])
def test_parse_age_refuses_what_is_not_a_bounded_ascii_age(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_age(text)


def test_parse_age_accepts_up_to_a_hundred_years() -> None:
    assert parse_age("36525d") == timedelta(days=36525)
    assert parse_age("90D") == timedelta(days=90)
    assert parse_age("12h") == timedelta(hours=12)


@pytest.mark.parametrize("age", ["999999999d", "99999999999d", "²d"])
async def test_purge_cli_refuses_a_huge_or_non_ascii_age_with_exit_2(
        age: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from chainlit_orm.cli import main

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert await asyncio.to_thread(main, ["purge", url, "--older-than", age, "--dry-run"]) == 2
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------- E: keep-metadata


async def test_keep_metadata_keeps_only_json_true(
        make_fresh_layer: LayerFactory, chainlit_ctx: Any) -> None:
    layer = await make_fresh_layer()
    user = await new_user(layer)
    ids: dict[str, str] = {}
    for name, value in (("true", True), ("one", 1), ("text", "true"), ("false", False)):
        tid = ids[name] = new_id()
        await layer.update_thread(tid, name=name, user_id=user.id, metadata={"pinned": value})
        await layer.create_step(message(tid, name))
    now = format_timestamp(parse_timestamp(utc_now()) + timedelta(days=91))
    report = await layer.purge(older_than=timedelta(days=90), keep_metadata=["pinned"], now=now)
    assert sorted(report.thread_ids) == sorted([ids["one"], ids["text"], ids["false"]])
    assert await layer.get_thread(ids["true"]) is not None


# -------------------------------------------------------------------- G: trash


async def test_a_trashed_threads_steps_and_elements_are_hidden_until_restored(
        make_layer: LayerFactory, chainlit_ctx: Any) -> None:
    layer = await make_layer(soft_delete=timedelta(days=30))
    user = await new_user(layer)
    tid = new_id()
    await layer.update_thread(tid, name="x", user_id=user.id)
    step = message(tid, "secret")
    await layer.create_step(step)
    file = _file(tid, step["id"], b"secret")
    await layer.create_element(file)
    await layer.delete_thread(tid)
    assert await layer.get_step(step["id"]) is None
    assert await layer.get_element(tid, file.id) is None
    await layer.restore_thread(tid)
    got_step = await layer.get_step(step["id"])
    got_element = await layer.get_element(tid, file.id)
    assert got_step is not None and got_step["output"] == "secret"
    assert got_element is not None and got_element["id"] == file.id


# ----------------------------------------------------------- A, B: late writes


async def test_writes_after_an_erasure_cannot_bring_the_user_back(
        make_layer: LayerFactory, lstore: tuple[ContractBackend, Any], files_root: Path,
        chainlit_ctx: Any) -> None:
    """A session (``other``: another layer that already knows the user) and the erasing layer
    keep writing after ``erase_user`` returned: every write that would name the user, or store
    the erased thread's content again, is refused, and the scan finds nothing."""
    eraser = await make_layer()
    other = await make_layer()
    identifier = f"late-{uuid.uuid4().hex}"
    user = await new_user(eraser, identifier)
    tid = new_id()
    await other.update_thread(tid, name="n", user_id=user.id)  # ``other`` caches the user
    step = message(tid, identifier)
    await other.create_step(step)
    report = await eraser.erase_user(identifier)
    assert report.counts["thread"] == 1 and report.counts["user"] == 1

    with pytest.raises(NotFoundError):  # the owner check is in the write itself
        await other.update_thread(new_id(), name="late", user_id=user.id,
                                  metadata={"u": identifier})
    with pytest.raises(NotFoundError):  # the erased thread is not recreated as a stub
        await eraser.create_step(message(tid, identifier))
    with pytest.raises(NotFoundError):
        await eraser.create_element(_file(tid, step["id"], identifier.encode()))
    assert await scan_store(lstore, files_root, [identifier, user.id]) == {}


@DYNAMODB_ONLY  # SQL deletes the user row last, in one transaction
async def test_dynamodb_erase_rerun_finds_threads_when_the_user_item_is_gone(
        make_layer: LayerFactory, lstore: tuple[ContractBackend, Any], files_root: Path,
        chainlit_ctx: Any) -> None:
    """An erasure that stopped after deleting the user item (it goes first on DynamoDB): a
    second run finds the user's threads by their owner fields."""
    _, table = lstore
    layer = await make_layer()
    identifier = f"rerun-{uuid.uuid4().hex}"
    user = await new_user(layer, identifier)
    for _ in range(2):
        tid = new_id()
        await layer.update_thread(tid, name=identifier, user_id=user.id)
        await layer.create_step(message(tid, identifier))
    client = boto3.client("dynamodb", endpoint_url=MOTO, region_name="us-east-1")
    key = layer.backend.layout.key_of("user", identifier=identifier)  # type: ignore[attr-defined]
    await asyncio.to_thread(client.delete_item, TableName=table, Key=key)
    report = await layer.erase_user(identifier)
    assert (report.user_id, report.counts["user"], report.counts["thread"],
            report.counts["step"]) == (user.id, 0, 2, 2)
    assert await scan_store(lstore, files_root, [identifier, user.id]) == {}


# ------------------------------------------------------- H, F: DynamoDB expiry


@DYNAMODB_ONLY  # retention= is a DynamoDB option
async def test_dynamodb_reads_agree_when_the_retention_changes(
        make_layer: LayerFactory, lstore: tuple[ContractBackend, Any],
        chainlit_ctx: Any) -> None:
    """Written under a 30-day retention (its expiresAt passed), read under 90 days and then
    under 10 days: get, list and search agree each time, by the current retention."""
    short = await make_layer(retention=timedelta(days=30))
    user = await new_user(short)
    tid = new_id()
    await short.update_thread(tid, name="needle", user_id=user.id)
    stale = message(tid, "needle")
    stale["createdAt"] = stale["start"] = stale["end"] = _ago(40)
    await short.create_step(stale)

    async def seen(layer: ChainlitLayer) -> tuple[bool, bool, bool]:
        listed = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=user.id))
        found = await layer.list_threads(Pagination(first=10),
                                         ThreadFilter(userId=user.id, search="needle"))
        return (await layer.get_thread(tid) is not None, [t["id"] for t in listed.data] == [tid],
                [t["id"] for t in found.data] == [tid])

    assert await seen(short) == (False, False, False)
    assert await seen(await make_layer(retention=timedelta(days=90))) == (True, True, True)
    assert await seen(await make_layer(retention=timedelta(days=10))) == (False, False, False)
    assert await seen(await make_layer()) == (True, True, True)


@DYNAMODB_ONLY  # SQL locks the thread row: FOR UPDATE SKIP LOCKED
async def test_dynamodb_purge_spares_a_thread_active_since_its_claim(
        make_layer: LayerFactory, lstore: tuple[ContractBackend, Any],
        chainlit_ctx: Any) -> None:
    """A user message lands between the purge's claim and its delete: the conditional delete of
    the thread item sees the new activity, and the thread stays whole."""
    layer = await make_layer()
    backend: Any = layer.backend
    user = await new_user(layer)
    tid = new_id()
    await layer.update_thread(tid, name="old", user_id=user.id)
    old = message(tid, "old")
    old["createdAt"] = old["start"] = old["end"] = _ago(200)
    await layer.create_step(old)
    rule = ExpiryRule(active_before=_ago(90))
    token = await backend._claim(tid, rule)
    assert token is not None
    items = await backend._partition(tid)
    await layer.create_step(message(tid, "new"))  # the activity moves past the cutoff
    assert await backend._remove_claimed(tid, items, rule, token) is None
    thread = await layer.get_thread(tid)
    assert thread is not None
    assert [s["output"] for s in thread["steps"]] == ["old", "new"]
