"""A trashed thread copied to DynamoDB stays in the trash there (issue #17, item 5, with the
transfer): ``chainlit-orm copy`` copies ``deletedAt``, and it must also write the list-index keys
``trash_thread`` leaves, or the copy is listed and searched although ``get_thread`` hides it."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
from chainlit.types import Feedback, Pagination, ThreadFilter

from chainlit_orm import DynamoDataLayer, SQLDataLayer
from chainlit_orm.layers.dynamodb.lifecycle import TRASHED
from chainlit_orm.models.entities import FEEDBACK_ROLES
from chainlit_orm.transfer import copy
from tests.contract.conftest import CONTRACT_BACKENDS, message, new_id
from tests.lifecycle.conftest import MOTO, new_user, store_url

TRASH = timedelta(days=30)


async def _listed(layer: Any, user_id: str, **filters: Any) -> list[str]:
    page = await layer.list_threads(Pagination(first=20), ThreadFilter(userId=user_id, **filters))
    return [t["id"] for t in page.data]


async def test_a_trashed_thread_copied_to_dynamodb_is_listed_nowhere(
        tmp_path: Path, chainlit_ctx: Any) -> None:
    sqlite, dynamo = CONTRACT_BACKENDS["sqlite"], CONTRACT_BACKENDS["dynamodb"]
    async with sqlite.open(tmp_path) as src_url, dynamo.open(tmp_path) as table:
        src = SQLDataLayer(src_url, create_schema=True, soft_delete=TRASH)
        try:
            user = await new_user(src, f"u-{uuid.uuid4().hex}@example.com")
            kept, trashed = new_id(), new_id()
            for tid, name in ((kept, "kept thread"), (trashed, "trashed thread")):
                await src.update_thread(tid, name=name, user_id=user.id)
                await src.create_step(message(tid, f"about {name}"))
                answer = message(tid, "answer", type_="assistant_message")
                await src.create_step(answer)
                # positive feedback puts the thread in the sparse UserFeedback1 index
                await src.upsert_feedback(Feedback(forId=answer["id"], threadId=tid, value=1))
            await src.delete_thread(trashed)  # soft_delete: into the trash
            assert await _listed(src, user.id) == [kept]
        finally:
            await src.close()

        await copy(str(src_url), store_url(dynamo, table), files=False)

        dst = DynamoDataLayer(table, region="us-east-1", endpoint_url=MOTO, soft_delete=TRASH)
        try:
            assert await _listed(dst, user.id) == [kept]
            assert await _listed(dst, user.id, search="thread") == [kept]
            assert await _listed(dst, user.id, feedback=1) == [kept]
            assert await dst.get_thread(trashed) is None
            assert await dst.get_thread_author(trashed) == ""  # the contract's "no such thread"

            backend = dst.dynamo
            item = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=MOTO).get_item(
                TableName=table, Key=backend.layout.key_of("thread", id=trashed),
                ConsistentRead=True)["Item"]
            assert item[backend.layout.list_index.pk_attribute] == {"S": TRASHED}
            assert [backend.layout.index(role).pk_attribute in item
                    for role in FEEDBACK_ROLES.values()] == [False, False]
            assert "deletedAt" in item

            # the copy is a real trashed thread: restored, it is listed again
            await dst.restore_thread(trashed)
            assert sorted(await _listed(dst, user.id)) == sorted([kept, trashed])
            assert await _listed(dst, user.id, feedback=1) in ([kept, trashed], [trashed, kept])
        finally:
            await dst.close()
