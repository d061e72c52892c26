"""A model set that renames every index, every key attribute and every key template works end
to end on moto: the DynamoDB layer, ``migrate`` and ``erase_user`` find each index by its role
(``models.entities.INDEX_ROLES``), never by its name (``tests/test_architecture.py`` checks that
no name or template is written in the layer)."""

from __future__ import annotations

from typing import Any

import pytest
from chainlit.context import init_http_context
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import User

from chainlit_orm import migrate
from chainlit_orm.errors import SchemaError
from chainlit_orm.layers.dynamodb import DynamoDataLayer
from chainlit_orm.lifecycle import erase_user
from chainlit_orm.models import (
    DynamoEntityKeys,
    DynamoIndexKeys,
    ElementFields,
    FeedbackFields,
    ModelSet,
    StepFields,
    ThreadFields,
    UserFields,
)
from chainlit_orm.models.entities import FEEDBACK_ROLES, LIST_ROLE, LOOKUP_ROLE, OWNER_ROLE
from chainlit_orm.schema_gen.dynamo import dynamo_indexes, dynamo_table_spec
from tests.contract.conftest import message, new_id
from tests.dynamodb.conftest import MOTO_ENDPOINT, REGION, table_url


class RenamedUser(UserFields):
    __dynamo__ = DynamoEntityKeys(
        pk="U#{identifier}", sk="PROFILE",
        indexes=(DynamoIndexKeys("Lookup", "LookupPK", "LookupSK", "U#{id}", "PROFILE",
                                 LOOKUP_ROLE),))


class RenamedThread(ThreadFields):
    __dynamo__ = DynamoEntityKeys(
        pk="T#{id}", sk="T",
        indexes=(
            DynamoIndexKeys("Owners", "OwnerPK", "OwnerSK", "O#{userId}", "AT#{activityAt}",
                            OWNER_ROLE),
            DynamoIndexKeys("Sidebar", "SidebarPK", "SidebarSK", "O#{userId}",
                            "AT#{activityAt}#{id}", LIST_ROLE),
            DynamoIndexKeys("Disliked", "DislikedPK", "SidebarSK", "O#{userId}",
                            "AT#{activityAt}#{id}", FEEDBACK_ROLES[0]),
            DynamoIndexKeys("Liked", "LikedPK", "SidebarSK", "O#{userId}",
                            "AT#{activityAt}#{id}", FEEDBACK_ROLES[1]),
        ))


class RenamedStep(StepFields):
    __dynamo__ = DynamoEntityKeys(
        pk="T#{threadId}", sk="S#{id}",
        indexes=(DynamoIndexKeys("Lookup", "LookupPK", "LookupSK", "S#{id}", "S",
                                 LOOKUP_ROLE),))


class RenamedElement(ElementFields):
    __dynamo__ = DynamoEntityKeys(
        pk="T#{threadId}", sk="E#{id}",
        indexes=(DynamoIndexKeys("Lookup", "LookupPK", "LookupSK", "E#{id}", "E",
                                 LOOKUP_ROLE),))


class RenamedFeedback(FeedbackFields):
    __dynamo__ = DynamoEntityKeys(
        pk="T#{threadId}", sk="F#{forId}",
        indexes=(DynamoIndexKeys("Lookup", "LookupPK", "LookupSK", "F#{id}", "F",
                                 LOOKUP_ROLE),))


RENAMED = ModelSet.build(user=RenamedUser, thread=RenamedThread, step=RenamedStep,
                         element=RenamedElement, feedback=RenamedFeedback, prefix="renamed_")


def test_the_generated_table_keeps_each_roles_projection() -> None:
    """Projections follow the role, not the name: the owner index keeps Chainlit's ``INCLUDE
    [id, name]``, the lookup index is keys only, the list and feedback indexes project the list
    attributes."""
    spec = dynamo_table_spec(RENAMED, "renamed")
    view = {g["IndexName"]: (g["Projection"]["ProjectionType"],
                             g["Projection"].get("NonKeyAttributes", [])[:2])
            for g in spec["GlobalSecondaryIndexes"]}
    assert view == {
        "Owners": ("INCLUDE", ["id", "name"]),
        "Sidebar": ("INCLUDE", ["id", "createdAt"]),
        "Disliked": ("INCLUDE", ["id", "createdAt"]),
        "Liked": ("INCLUDE", ["id", "createdAt"]),
        "Lookup": ("KEYS_ONLY", []),
    }
    assert [(s.name, s.role) for s in dynamo_indexes(RENAMED)] == [
        ("Owners", "owner"), ("Sidebar", "list"), ("Disliked", "feedback0"),
        ("Liked", "feedback1"), ("Lookup", "lookup")]


def test_roles_are_checked() -> None:
    """An unknown role, or one role on two indexes, is refused when the schema is derived."""
    class Unknown(ThreadFields):
        __dynamo__ = DynamoEntityKeys(pk="THREAD#{id}", sk="THREAD", indexes=(
            DynamoIndexKeys("Extra", "XPK", "XSK", "USER#{userId}", "TS#{activityAt}", "sidebar"),))

    with pytest.raises(SchemaError) as info:
        dynamo_indexes(ModelSet.build(thread=Unknown))
    assert str(info.value) == (
        "index Extra: unknown role 'sidebar'; roles: feedback0, feedback1, list, lookup, owner "
        "(None for an index of the app's own)")

    class Twice(ThreadFields):
        __dynamo__ = DynamoEntityKeys(pk="THREAD#{id}", sk="THREAD", indexes=(
            *ThreadFields.__dynamo__.indexes,
            DynamoIndexKeys("Other", "OtherPK", "OtherSK", "USER#{userId}", "TS#{activityAt}",
                            LIST_ROLE),))

    with pytest.raises(SchemaError) as info:
        dynamo_indexes(ModelSet.build(thread=Twice))
    assert str(info.value) == "indexes UserActivity and Other both have the role 'list'"


async def test_a_renamed_model_set_works_end_to_end(dynamodb: Any, table_name: str) -> None:
    report = await migrate(table_url(table_name), models=RENAMED)
    assert report.changed
    described = dynamodb.describe_table(TableName=table_name)["Table"]
    assert sorted(g["IndexName"] for g in described["GlobalSecondaryIndexes"]) == [
        "Disliked", "Liked", "Lookup", "Owners", "Sidebar"]

    layer = DynamoDataLayer(table_name, region=REGION, endpoint_url=MOTO_ENDPOINT,
                            models=RENAMED)
    try:
        init_http_context(thread_id=new_id())
        identifier = f"renamed-{new_id()}"
        user = await layer.create_user(User(identifier=identifier, metadata={}))
        assert user is not None
        assert (await layer.get_user(identifier)).id == user.id  # type: ignore[union-attr]
        tid = new_id()
        # the owner's identifier comes from the user's id through the lookup index
        await layer.update_thread(tid, name="renamed", user_id=user.id)
        assert await layer.get_thread_author(tid) == identifier
        question = message(tid, "a question")
        answer = message(tid, "an answer", type_="assistant_message")
        await layer.create_step(question)
        await layer.create_step(answer)
        feedback_id = await layer.upsert_feedback(
            Feedback(forId=answer["id"], value=1, comment="good"))

        # the items carry the set's key attributes, and none of the default names
        thread_key = {"PK": {"S": f"T#{tid}"}, "SK": {"S": "T"}}
        item = dynamodb.get_item(TableName=table_name, Key=thread_key)["Item"]
        owner = {"S": f"O#{user.id}"}
        assert (item["OwnerPK"], item["SidebarPK"], item["LikedPK"]) == (owner, owner, owner)
        assert "DislikedPK" not in item
        assert item["SidebarSK"]["S"] == f"AT#{item['activityAt']['S']}#{tid}"
        assert sorted(a for a in item if a.startswith(("User", "ById", "TS"))) == []
        step_item = dynamodb.get_item(TableName=table_name, Key={
            "PK": {"S": f"T#{tid}"}, "SK": {"S": f"S#{answer['id']}"}})["Item"]
        assert (step_item["LookupPK"], step_item["LookupSK"]) == (
            {"S": f"S#{answer['id']}"}, {"S": "S"})

        # the list index, each feedback index, the partition read
        async def listed(**filters: Any) -> list[str]:
            page = await layer.list_threads(Pagination(first=10),
                                            ThreadFilter(userId=user.id, **filters))
            return [str(t["id"]) for t in page.data]

        assert await listed() == [tid]
        assert await listed(feedback=1) == [tid]
        assert await listed(feedback=0) == []
        assert await listed(search="RENAMED") == [tid]
        thread = await layer.get_thread(tid)
        assert thread is not None
        assert [s["id"] for s in thread["steps"]] == [question["id"], answer["id"]]
        assert thread["steps"][1]["feedback"] == {  # type: ignore[typeddict-item]
            "id": feedback_id, "forId": answer["id"], "value": 1, "comment": "good"}

        # feedback and step by their id alone: the lookup index
        assert await layer.delete_feedback(feedback_id) is True
        assert await listed(feedback=1) == []
        assert "LikedPK" not in dynamodb.get_item(TableName=table_name, Key=thread_key)["Item"]
        await layer.delete_step(answer["id"])
        thread = await layer.get_thread(tid)
        assert thread is not None
        assert [s["id"] for s in thread["steps"]] == [question["id"]]

        # the owner index: an erasure finds the user's threads there
        erased = await erase_user(layer, identifier)
        assert (erased.counts["user"], erased.counts["thread"], erased.counts["step"]) == (
            1, 1, 1)
        assert await layer.get_thread(tid) is None
        assert await layer.get_user(identifier) is None
        assert "Item" not in dynamodb.get_item(TableName=table_name, Key=thread_key)
    finally:
        await layer.close()
