"""chainlit-orm: production persistence for Chainlit apps.

One set of declarative models; SQL DDL, DynamoDB keys and CloudFormation generated from them; one
Chainlit data layer over SQL (SQLite, PostgreSQL, MySQL/MariaDB) and DynamoDB; element storage
through fsspec. Plug it in with::

    import chainlit as cl
    import chainlit_orm

    @cl.data_layer
    def data_layer():
        return chainlit_orm.from_env()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chainlit_orm.config import from_env as from_env
from chainlit_orm.layers.base import ChainlitLayer as ChainlitLayer
from chainlit_orm.layers.sql import SQLDataLayer as SQLDataLayer

# Bound after the submodule of the same name is imported, so ``chainlit_orm.migrate`` is the
# function (``chainlit_orm.migrate.migrate`` stays importable through ``sys.modules``).
from chainlit_orm.migrate import migrate as migrate  # noqa: I001
from chainlit_orm.models import DEFAULT_MODELS as DEFAULT_MODELS
from chainlit_orm.models import ModelSet as ModelSet

if TYPE_CHECKING:
    from chainlit_orm.layers.dynamodb import DynamoDataLayer as DynamoDataLayer
    from chainlit_orm.storage import FsspecStorage as FsspecStorage

__all__ = [
    "DEFAULT_MODELS",
    "ChainlitLayer",
    "DynamoDataLayer",
    "FsspecStorage",
    "ModelSet",
    "SQLDataLayer",
    "from_env",
    "migrate",
]

_LAZY = {
    # imported on first use so that optional extras (pynamodb, s3fs, adlfs) stay optional
    "DynamoDataLayer": "chainlit_orm.layers.dynamodb",
    "FsspecStorage": "chainlit_orm.storage",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'chainlit_orm' has no attribute {name!r}")
