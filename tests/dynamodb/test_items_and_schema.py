"""Item size (offload or refuse), the first-use table check, a resumable backfill, configuration."""

from __future__ import annotations

from typing import Any

import pytest
from chainlit.context import init_http_context
from chainlit.user import User

from chainlit_orm import FsspecStorage, from_env, migrate
from chainlit_orm.errors import (
    ConfigurationError,
    PayloadTooLargeError,
    SchemaOutdatedError,
)
from chainlit_orm.layers.dynamodb import DynamoDataLayer
from tests.contract.conftest import message, new_id
from tests.dynamodb.conftest import MOTO_ENDPOINT, REGION, table_url
from tests.dynamodb.test_differential import docs_table

BIG = ("Ünïcødé ✓ 漢字 " * 80_000)[: 1024 * 1024]


async def test_a_1_mb_output_is_offloaded_to_storage_and_read_back(
    layer: DynamoDataLayer, dynamodb: Any, table: str, storage: FsspecStorage
) -> None:
    init_http_context(thread_id=new_id())
    user = await layer.create_user(User(identifier=f"big-{new_id()}", metadata={}))
    assert user is not None
    tid = new_id()
    await layer.update_thread(tid, name="big", user_id=user.id)
    sent = message(tid, BIG, type_="assistant_message")
    await layer.create_step(sent)
    raw = dynamodb.get_item(TableName=table, Key={"PK": {"S": f"THREAD#{tid}"},
                                                  "SK": {"S": f"STEP#{sent['id']}"}})["Item"]
    key = f"threads/{tid}/steps/{sent['id']}/output.initial"
    assert raw["outputRef"] == {"S": key} and "output" not in raw
    stored = await layer.get_step(sent["id"])
    assert stored is not None and stored["output"] == BIG
    thread = await layer.get_thread(tid)
    assert thread is not None and thread["steps"][0]["output"] == BIG
    # an update with a small text puts it back inline and drops the reference
    await layer.update_step({**sent, "output": "short"})
    raw = dynamodb.get_item(TableName=table, Key={"PK": {"S": f"THREAD#{tid}"},
                                                  "SK": {"S": f"STEP#{sent['id']}"}})["Item"]
    assert raw["output"] == {"S": "short"} and "outputRef" not in raw
    # a big update is offloaded under the update's key, and deleted with the thread
    await layer.update_step({**sent, "output": BIG + "!"})
    update_key = f"threads/{tid}/steps/{sent['id']}/output"
    assert (await layer.get_step(sent["id"]) or {})["output"] == BIG + "!"
    await layer.delete_thread(tid)
    assert await storage.delete_file(update_key) is False  # deleted with its thread


async def test_without_storage_a_too_large_step_is_refused_before_any_write(
    table: str,
) -> None:
    init_http_context(thread_id=new_id())
    bare = DynamoDataLayer(table, region=REGION, endpoint_url=MOTO_ENDPOINT)
    try:
        tid = new_id()
        sent = message(tid, BIG, type_="assistant_message")
        with pytest.raises(PayloadTooLargeError, match="400 KB limit"):
            await bare.create_step(sent)
        assert await bare.get_step(sent["id"]) is None
        fits = message(tid, "x" * 300_000, type_="assistant_message")  # inline, below 400 KB
        await bare.create_step(fits)
        assert (await bare.get_step(fits["id"]) or {})["output"] == "x" * 300_000
    finally:
        await bare.close()


async def test_a_chainlit_docs_table_is_refused_until_migrated(
    dynamodb: Any, table_name: str
) -> None:
    docs_table(dynamodb, table_name)
    layer = DynamoDataLayer(table_name, region=REGION, endpoint_url=MOTO_ENDPOINT)
    try:
        # missing indexes are what migrate adds: SchemaOutdatedError, as documented
        with pytest.raises(SchemaOutdatedError) as info:
            await layer.get_user("someone")
        message_text = str(info.value)
        assert "index UserActivity is missing" in message_text
        assert f"chainlit-orm migrate '{table_url(table_name)}'" in message_text
        await migrate(table_url(table_name))
        assert await layer.get_user("someone") is None  # checked again, now fine
    finally:
        await layer.close()


async def test_a_missing_table_names_the_command(table_name: str) -> None:
    """outside attack #20 F8(a): a table that does not exist raised the parent SchemaError,
    where docs/troubleshooting.md says SchemaOutdatedError ("has none of the tables")."""
    layer = DynamoDataLayer(table_name, region=REGION, endpoint_url=MOTO_ENDPOINT)
    try:
        for call in (lambda: layer.get_thread_author(new_id()),
                     lambda: layer.create_user(User(identifier="alice"))):
            with pytest.raises(SchemaOutdatedError) as outdated:
                await call()
            assert str(outdated.value) == (
                f"DynamoDB table {table_name} does not exist; create it with: "
                f"chainlit-orm migrate '{table_url(table_name)}'")
    finally:
        await layer.close()


async def test_an_interrupted_backfill_blocks_the_layer_and_resumes(
    dynamodb: Any, table_name: str
) -> None:
    docs_table(dynamodb, table_name)
    tid = new_id()
    dynamodb.put_item(TableName=table_name, Item={
        "PK": {"S": f"THREAD#{tid}"}, "SK": {"S": "THREAD"}, "id": {"S": tid},
        "name": {"S": "legacy"}, "userId": {"S": "bob"}, "userIdentifier": {"S": "bob"},
        "createdAt": {"S": "2025-01-02T03:04:05.123456"}, "UserThreadPK": {"S": "USER#bob"},
        "UserThreadSK": {"S": "TS#2025-01-02T03:04:05.123456"}})

    async def interrupted(request: Any) -> list[str]:
        raise KeyboardInterrupt

    from chainlit_orm.migrations.dynamo import migrate_dynamodb

    with pytest.raises(KeyboardInterrupt):
        await migrate_dynamodb(table_url(table_name), backfill=interrupted, poll_interval=0.1)
    layer = DynamoDataLayer(table_name, region=REGION, endpoint_url=MOTO_ENDPOINT)
    try:
        with pytest.raises(SchemaOutdatedError, match="unfinished backfill"):
            await layer.get_user("bob")
        report = await migrate(table_url(table_name))
        # the version item, the thread and the migration's lock item
        assert report.lines[-1].startswith("backfill: scanned 3 items; 0 users and 1 threads")
        from chainlit.types import Pagination, ThreadFilter

        page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId="bob"))
        assert [(t["id"], t["name"], t["createdAt"]) for t in page.data] == [
            (tid, "legacy", "2025-01-02T03:04:05.123456Z")]
    finally:
        await layer.close()


def test_configuration_from_the_environment() -> None:
    layer = from_env({"CHAINLIT_ORM_DATABASE_URL":
                      f"dynamodb://chat?region=eu-west-3&endpoint_url={MOTO_ENDPOINT}"})
    assert isinstance(layer, DynamoDataLayer)
    assert (layer.dynamo.table, layer.dynamo.region, layer.dynamo.endpoint_url) == (
        "chat", "eu-west-3", MOTO_ENDPOINT)
    assert layer.dynamo.client.meta.config.retries["mode"] == "standard"
    with pytest.raises(ConfigurationError):
        DynamoDataLayer("x", region=REGION)  # not a valid table name
    with pytest.raises(ConfigurationError):
        DynamoDataLayer("chat", region=REGION, thread_order="created")
