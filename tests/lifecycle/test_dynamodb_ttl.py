"""DynamoDB's native TTL (issue #17, item 3), on moto: moto keeps TTL settings but never expires
items, so the tests check the attribute values, the reads that treat an expired thread as gone,
and what ``purge`` sweeps (the items and files TTL leaves behind)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import chainlit as cl
import pytest
from chainlit.context import init_http_context
from chainlit.types import Pagination, ThreadFilter

from chainlit_orm import DynamoDataLayer, FsspecStorage, migrate
from chainlit_orm.models.types import format_timestamp, parse_timestamp, utc_now
from chainlit_orm.schema_gen import cloudformation
from tests.contract.conftest import message, new_id
from tests.dynamodb.conftest import Recorder
from tests.lifecycle.conftest import MOTO, new_user

REPO = Path(__file__).resolve().parents[2]
RETENTION = timedelta(days=30)


@pytest.fixture
async def table(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, os.environ.get(key, value))
    name = f"clorm_ttl_{uuid.uuid4().hex[:12]}"
    await migrate(f"dynamodb://{name}?region=us-east-1&endpoint_url={MOTO}")
    yield name
    _client().delete_table(TableName=name)


def _client() -> Any:
    return boto3.client("dynamodb", region_name="us-east-1", endpoint_url=MOTO)


def _epoch(moment: str) -> int:
    return int((parse_timestamp(moment) + RETENTION).timestamp()) + (
        parse_timestamp(moment).microsecond > 0)


def _partition(table: str, thread_id: str) -> list[dict[str, Any]]:
    return _client().query(TableName=table, KeyConditionExpression="PK = :p",
                           ExpressionAttributeValues={":p": {"S": f"THREAD#{thread_id}"}},
                           ConsistentRead=True)["Items"]


async def test_migrate_enables_ttl_and_the_template_declares_it(table: str) -> None:
    described = _client().describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert described == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expiresAt"}
    again = await migrate(f"dynamodb://{table}?region=us-east-1&endpoint_url={MOTO}")
    assert not any("TTL" in line for line in again.lines)  # already on: nothing to do
    spec = cloudformation()["Resources"]["ChainlitTable"]["Properties"]
    assert spec["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}


def test_generated_template_passes_cfn_lint() -> None:
    cfn_lint = shutil.which("cfn-lint")
    assert cfn_lint is not None, "cfn-lint is a test dependency"
    template = REPO / "generated" / "dynamodb.cfn.json"
    assert json.loads(template.read_text())["Resources"]["ChainlitTable"]["Properties"][
        "TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    done = subprocess.run([cfn_lint, str(template)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout) == (0, "")


async def test_thread_item_carries_the_ttl_and_a_message_moves_it_in_the_same_write(
        table: str) -> None:
    init_http_context(thread_id=new_id())
    layer = DynamoDataLayer(table, region="us-east-1", endpoint_url=MOTO, retention=RETENTION)
    plain = DynamoDataLayer(table, region="us-east-1", endpoint_url=MOTO)
    try:
        user = await new_user(layer)
        tid = new_id()
        await layer.update_thread(tid, name="ttl", user_id=user.id)
        first = message(tid, "first")
        await layer.create_step(first)
        items = {i["SK"]["S"]: i for i in _partition(table, tid)}
        assert items["THREAD"]["expiresAt"] == {"N": str(_epoch(first["createdAt"]))}
        assert [sk for sk, i in items.items() if "expiresAt" in i] == ["THREAD"]
        # the next user message moves the TTL, in the one write that moves the activity
        recorder = Recorder().attach(layer.dynamo.client)
        second = message(tid, "second")
        await layer.create_step(second)
        assert recorder.operations == ["TransactWriteItems"]
        thread_item = next(i for i in _partition(table, tid) if i["SK"]["S"] == "THREAD")
        assert thread_item["expiresAt"] == {"N": str(_epoch(second["createdAt"]))}
        # the same call without retention costs the same
        other = new_id()
        await plain.update_thread(other, name="no ttl", user_id=user.id)
        await plain.create_step(message(other, "first"))
        counted = Recorder().attach(plain.dynamo.client)
        await plain.create_step(message(other, "second"))
        assert counted.operations == ["TransactWriteItems"]
        assert all("expiresAt" not in i for i in _partition(table, other))
    finally:
        await layer.close()
        await plain.close()


async def test_an_expired_thread_reads_as_gone_and_purge_sweeps_what_ttl_leaves(
        table: str, tmp_path: Path) -> None:
    init_http_context(thread_id=new_id())
    storage = FsspecStorage(f"file://{tmp_path}", mount=False)
    layer = DynamoDataLayer(table, storage=storage, region="us-east-1", endpoint_url=MOTO,
                            retention=RETENTION)
    try:
        user = await new_user(layer)
        old, live = new_id(), new_id()
        for tid in (old, live):
            await layer.update_thread(tid, name="t", user_id=user.id)
        long_ago = format_timestamp(parse_timestamp(utc_now()) - timedelta(days=40))
        stale = message(old, "from long ago")
        stale["createdAt"] = stale["start"] = stale["end"] = long_ago
        await layer.create_step(stale)  # the thread's activity: 40 days ago, past retention
        for tid in (old, live):
            file = cl.File(name="f.txt", content=b"bytes", for_id=stale["id"])
            file.thread_id = tid
            await layer.create_element(file)
        await layer.create_step(message(live, "now"))
        thread_item = next(i for i in _partition(table, old) if i["SK"]["S"] == "THREAD")
        assert thread_item["expiresAt"] == {"N": str(_epoch(long_ago))}

        assert await layer.get_thread(old) is None
        assert await layer.get_thread_author(old) == ""
        page = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=user.id))
        assert [t["id"] for t in page.data] == [live]

        # DynamoDB's TTL removes the thread item only; its step, element and file stay
        _client().delete_item(TableName=table, Key={"PK": {"S": f"THREAD#{old}"},
                                                   "SK": {"S": "THREAD"}})
        assert len(_partition(table, old)) == 2
        assert (tmp_path / "threads" / old).exists()
        dry = await layer.purge(older_than=None, dry_run=True)
        assert (dry.orphan_partitions, dry.orphan_files) == (1, 1)
        assert len(_partition(table, old)) == 2
        report = await layer.purge(older_than=None)
        assert (report.orphan_partitions, report.orphan_files) == (1, 1)
        assert report.lines()[-2:] == [
            "removed the items of 1 thread(s) whose thread item is gone (DynamoDB's TTL "
            "removed it)", "removed 1 stored file(s) whose thread no longer exists"]
        assert _partition(table, old) == []
        assert not any((tmp_path / "threads" / old).rglob("*.*"))
        assert await layer.get_thread(live) is not None
        assert await storage.list_keys("threads") == [
            f"threads/{live}/files/{k}" for k in sorted(
                p.name for p in (tmp_path / "threads" / live / "files").iterdir())]
    finally:
        await layer.close()
        await storage.close()


async def test_purge_api_calls_per_thread(table: str) -> None:
    """A purge page is one Scan; each expired thread costs a claim (UpdateItem), one Query of
    its partition, the conditional delete of its thread item (DeleteItem: it re-checks the
    activity) and one BatchWriteItem (up to 25 items); then one Scan sweeps orphans."""
    init_http_context(thread_id=new_id())
    layer = DynamoDataLayer(table, region="us-east-1", endpoint_url=MOTO)
    try:
        user = await new_user(layer)
        threads = []
        for _ in range(2):
            tid = new_id()
            await layer.update_thread(tid, name="t", user_id=user.id)
            await layer.create_step(message(tid, "q"))
            await layer.create_step(message(tid, "a", type_="assistant_message"))
            threads.append(tid)
        now = format_timestamp(parse_timestamp(utc_now()) + timedelta(days=91))
        recorder = Recorder().attach(layer.dynamo.client)
        dry = await layer.purge(older_than=timedelta(days=90), now=now, dry_run=True)
        assert sorted(dry.thread_ids) == sorted(threads)
        assert sorted(recorder.operations) == ["Query", "Query", "Scan", "Scan"]
        recorder.clear()
        report = await layer.purge(older_than=timedelta(days=90), now=now)
        assert report.counts == {"user": 0, "thread": 2, "step": 4, "element": 0,
                                 "feedback": 0, "file": 0}
        assert sorted(recorder.operations) == sorted(
            ["Scan", "Scan"] + ["UpdateItem", "Query", "DeleteItem", "BatchWriteItem"] * 2)
    finally:
        await layer.close()
