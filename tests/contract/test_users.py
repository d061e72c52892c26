"""Users: get/create semantics (contract §1.2)."""

from __future__ import annotations

import json
import re

from chainlit.user import User

from chainlit_orm.layers.base import ChainlitLayer

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


async def test_create_then_get_user(layer: ChainlitLayer) -> None:
    created = await layer.create_user(
        User(identifier="ünïcode-user@example.com", display_name="Ünï", metadata={"n": 1, "b": True})
    )
    assert created is not None
    fetched = await layer.get_user("ünïcode-user@example.com")
    assert fetched is not None
    assert fetched.id == created.id
    assert fetched.identifier == "ünïcode-user@example.com"
    assert fetched.display_name == "Ünï"
    assert fetched.metadata == {"n": 1, "b": True}
    assert type(fetched.metadata["n"]) is int
    assert ISO_Z.match(fetched.createdAt)
    json.dumps(fetched.to_dict())  # JSON-serializable, no UUID/datetime objects


async def test_create_user_is_an_upsert_that_refreshes_metadata(layer: ChainlitLayer) -> None:
    first = await layer.create_user(User(identifier="repeat@example.com", metadata={"v": 1}))
    second = await layer.create_user(User(identifier="repeat@example.com", metadata={"v": 2}))
    assert first is not None and second is not None
    assert second.id == first.id  # stable: thread.userId and favorites refer to it
    assert second.createdAt == first.createdAt
    assert second.metadata == {"v": 2}
    fetched = await layer.get_user("repeat@example.com")
    assert fetched is not None and fetched.metadata == {"v": 2}


async def test_get_missing_user_is_none(layer: ChainlitLayer) -> None:
    assert await layer.get_user("nobody-here@example.com") is None
