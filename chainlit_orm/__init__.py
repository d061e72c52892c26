"""chainlit-orm: production persistence for Chainlit apps.

One set of declarative models; SQL DDL, DynamoDB keys and CloudFormation generated from them; one
Chainlit data layer over SQL (SQLite, PostgreSQL, MySQL/MariaDB) and DynamoDB; element storage
through fsspec. Plug it in with::

    import chainlit as cl
    import chainlit_orm

    @cl.data_layer
    def data_layer():
        return chainlit_orm.from_env()

Every public name is imported on first use: importing the package (as the ``chainlit-orm`` CLI
does) does not import Chainlit, SQLAlchemy's drivers or the optional extras.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chainlit_orm.config import from_env as from_env
    from chainlit_orm.layers.base import ChainlitLayer as ChainlitLayer
    from chainlit_orm.layers.dynamodb import DynamoDataLayer as DynamoDataLayer
    from chainlit_orm.layers.sql import SQLDataLayer as SQLDataLayer
    from chainlit_orm.migrations import migrate as migrate
    from chainlit_orm.models import DEFAULT_MODELS as DEFAULT_MODELS
    from chainlit_orm.models import ModelSet as ModelSet
    from chainlit_orm.storage import FsspecStorage as FsspecStorage

try:
    #: The installed distribution's version: one source of truth, ``version`` in pyproject.toml.
    __version__: str = version("chainlit-orm")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

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
    "ChainlitLayer": "chainlit_orm.layers.base",
    "DEFAULT_MODELS": "chainlit_orm.models",
    "DynamoDataLayer": "chainlit_orm.layers.dynamodb",
    "FsspecStorage": "chainlit_orm.storage",
    "ModelSet": "chainlit_orm.models",
    "SQLDataLayer": "chainlit_orm.layers.sql",
    "from_env": "chainlit_orm.config",
    "migrate": "chainlit_orm.migrations",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'chainlit_orm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
