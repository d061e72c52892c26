"""Configuration from the environment, read in one function at the edge (never at import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from chainlit.data.storage_clients.base import BaseStorageClient

from chainlit_orm.errors import ConfigurationError
from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.urls import STORAGE_URL_VARIABLE, DynamoURL, database_url_from_env, parse_url

__all__ = ["from_env"]


def _storage_from_env(env: Mapping[str, str]) -> BaseStorageClient | None:
    url = env.get(STORAGE_URL_VARIABLE)
    if not url:
        return None
    from chainlit_orm.storage import FsspecStorage

    return FsspecStorage(url)


def from_env(env: Mapping[str, str] | None = None, **options: Any) -> ChainlitLayer:
    """Build the data layer the environment describes, so an app needs one line.

    Variables:
        ``CHAINLIT_ORM_DATABASE_URL`` (falling back to ``DATABASE_URL``): a SQL URL, or
        ``dynamodb://TABLE?region=...&endpoint_url=...&profile=...`` for DynamoDB (parsed by
        :func:`chainlit_orm.urls.parse_url`, as every other entry point does).
        ``CHAINLIT_ORM_STORAGE_URL``: element storage (``s3://bucket/prefix``,
        ``az://container/prefix``, ``file:///path``, ``memory://name``); unset keeps element
        records without bytes.

    ``options`` go to the layer's constructor.

    Raises:
        ConfigurationError: no database URL is set, or it is not a supported one (an unknown
            ``dynamodb://`` parameter is refused with the accepted ones).
    """
    env = os.environ if env is None else env
    url = database_url_from_env(env)  # the same function the CLI reads its URL default with
    if not url:
        raise ConfigurationError(
            "no database configured: set CHAINLIT_ORM_DATABASE_URL (or DATABASE_URL), e.g. "
            "sqlite+aiosqlite:///chainlit.db"
        )
    storage = options.pop("storage", None) or _storage_from_env(env)
    parsed = parse_url(url)
    if isinstance(parsed, DynamoURL):
        from chainlit_orm.layers.dynamodb import DynamoDataLayer

        return DynamoDataLayer(
            parsed.table,
            storage=storage,
            region=parsed.region,
            endpoint_url=parsed.endpoint_url,
            profile=parsed.profile,
            **options,
        )
    from chainlit_orm.layers.sql import SQLDataLayer

    return SQLDataLayer(url, storage=storage, **options)
