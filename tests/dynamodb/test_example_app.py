"""``examples/app_dynamodb.py`` runs the demo's handlers on a DynamoDataLayer from its URL."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

import pytest
from chainlit.config import config
from chainlit.user import User

from chainlit_orm import DynamoDataLayer
from tests.dynamodb.conftest import table_url

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def test_example_app_uses_the_dynamodb_layer(
    table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAINLIT_ORM_DATABASE_URL", table_url(table))
    monkeypatch.setenv("CHAINLIT_ORM_STORAGE_URL", "memory://clorm-example-dynamodb")
    monkeypatch.setenv("CHAINLIT_AUTH_SECRET", "x" * 48)
    monkeypatch.setenv("CHAINLIT_ORM_DEMO_LAUNCHER", "1")
    saved: dict[str, Any] = {
        name: getattr(config.code, name, None)
        for name in ("data_layer", "password_auth_callback", "on_message", "on_chat_start",
                     "on_chat_resume", "on_chat_end", "on_shared_thread_view", "on_app_startup")
    }
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        module = runpy.run_path(str(EXAMPLES / "app_dynamodb.py"))
        assert config.code.on_message is not None  # the demo's handlers, imported from app.py
        assert config.code.password_auth_callback is not None
        layer = module["data_layer"]()
        assert isinstance(layer, DynamoDataLayer) and layer.dynamo.table == table
        assert config.code.on_app_startup is not None  # app.py's startup check
        try:
            await layer.check()  # what it runs: the migrated table and the storage pass
            user = await layer.create_user(User(identifier="alice", metadata={}))
            assert user is not None
            assert (await layer.get_user("alice")) is not None
        finally:
            await layer.close()
    finally:
        for name, value in saved.items():
            setattr(config.code, name, value)
        sys.modules.pop("app", None)
