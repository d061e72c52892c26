"""Fixtures for the schema tests: real PostgreSQL, MariaDB, SQLite files and moto's DynamoDB.

Nothing is skipped: a service that is down fails the test (start them with
``bash scripts/services.sh``). Every database and table has a unique name and is dropped after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

MOTO_ENDPOINT = os.environ.get("CHAINLIT_ORM_TEST_MOTO", "http://127.0.0.1:5055")
REGION = "us-east-1"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials for moto; never real ones."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture
def dynamodb(aws_env: None) -> Any:
    return boto3.client("dynamodb", endpoint_url=MOTO_ENDPOINT, region_name=REGION)


@pytest.fixture
def cloudformation_client(aws_env: None) -> Any:
    return boto3.client("cloudformation", endpoint_url=MOTO_ENDPOINT, region_name=REGION)


@pytest.fixture
def table_name(dynamodb: Any) -> Iterator[str]:
    """A unique table name; the table is deleted afterwards if a test created it."""
    name = f"clorm_{uuid.uuid4().hex}"
    yield name
    try:
        dynamodb.update_table(TableName=name, DeletionProtectionEnabled=False)
        dynamodb.delete_table(TableName=name)
    except dynamodb.exceptions.ResourceNotFoundException:
        pass
