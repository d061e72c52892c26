"""Fixtures of the transfer tests: real databases, a moto DynamoDB table and S3 bucket, and
memory storages, each unique to the test and removed afterwards. A service that is down fails."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chainlit_orm import FsspecStorage
from tests.aws import MOTO_ENDPOINT, REGION, aws_env

__all__ = ["MOTO_ENDPOINT", "REGION", "aws_env", "dynamo_table", "memory_storage", "s3_storage"]


def dynamo_url(name: str) -> str:
    return f"dynamodb://{name}?region={REGION}&endpoint_url={MOTO_ENDPOINT}"


@contextlib.asynccontextmanager
async def dynamo_table() -> AsyncIterator[str]:
    """A unique table name (``copy`` creates the table through ``migrate``); deleted after."""
    import boto3

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", REGION)):
        os.environ.setdefault(name, value)
    name = f"clorm_tr_{uuid.uuid4().hex[:12]}"
    try:
        yield dynamo_url(name)
    finally:
        client = boto3.client("dynamodb", region_name=REGION, endpoint_url=MOTO_ENDPOINT)
        with contextlib.suppress(client.exceptions.ResourceNotFoundException):
            client.delete_table(TableName=name)


@contextlib.asynccontextmanager
async def memory_storage(label: str) -> AsyncIterator[FsspecStorage]:
    storage = FsspecStorage(f"memory://clorm-tr-{label}-{uuid.uuid4().hex[:10]}", mount=False)
    try:
        yield storage
    finally:
        await storage.close()


@contextlib.asynccontextmanager
async def s3_storage() -> AsyncIterator[FsspecStorage]:
    """A fresh bucket on moto's S3, emptied and removed afterwards."""
    import s3fs

    options: dict[str, Any] = {"endpoint_url": MOTO_ENDPOINT, "key": "testing",
                               "secret": "testing"}
    admin = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True, **options)
    await admin.set_session()
    bucket = f"clorm-tr-{uuid.uuid4().hex[:12]}"
    await admin._mkdir(bucket)
    storage = FsspecStorage(f"s3://{bucket}/root", mount=False, **options)
    try:
        yield storage
    finally:
        await storage.close()
        await admin._rm(bucket, recursive=True)
        await admin._s3creator.__aexit__(None, None, None)


@pytest.fixture(autouse=True)
def _no_storage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The transfer falls back to CHAINLIT_ORM_STORAGE_URL: tests say what they use."""
    monkeypatch.delenv("CHAINLIT_ORM_STORAGE_URL", raising=False)
