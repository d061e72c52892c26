"""Shared AWS test plumbing: moto's endpoint, dummy credentials, a DynamoDB client.

Conftests that need them import the fixtures from here, so there is one definition.
"""

from __future__ import annotations

import os
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


def docs_table(dynamodb: Any, name: str) -> None:
    """A table exactly as Chainlit's docs CloudFormation makes it (contract §3.3)."""
    dynamodb.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"}
                              for a in ("PK", "SK", "UserThreadPK", "UserThreadSK")],
        KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"},
                   {"AttributeName": "SK", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[{
            "IndexName": "UserThread",
            "KeySchema": [{"AttributeName": "UserThreadPK", "KeyType": "HASH"},
                          {"AttributeName": "UserThreadSK", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["id", "name"]},
        }],
        BillingMode="PAY_PER_REQUEST",
    )
