"""Fixtures for the schema tests: real PostgreSQL, MariaDB, SQLite files and moto's DynamoDB.

Nothing is skipped: a service that is down fails the test (start them with
``bash scripts/services.sh``). Every database and table has a unique name and is dropped after.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from tests.aws import MOTO_ENDPOINT, REGION, aws_env, dynamodb

__all__ = ["MOTO_ENDPOINT", "REGION", "aws_env", "dynamodb"]


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
