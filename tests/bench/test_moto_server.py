"""The bench's moto server (``bench/moto_server.py``) replaces moto's whole-table backup of a
transaction with a backup of the items it names: a cancelled transaction must still leave every
item as it was, and a committed one must write all of them."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "bench.moto_server", "-H", "127.0.0.1",
                             "-p", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.05)
        c = boto3.client("dynamodb", endpoint_url=f"http://127.0.0.1:{port}",
                         region_name="us-east-1", aws_access_key_id="t",
                         aws_secret_access_key="t")
        c.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                       AttributeDefinitions=[{"AttributeName": "PK", "AttributeType": "S"}],
                       KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}])
        yield c
    finally:
        proc.terminate()
        proc.wait(10)


def _items(c: Any) -> dict[str, str]:
    return {i["PK"]["S"]: i["v"]["S"] for i in c.scan(TableName="t")["Items"]}


def test_a_cancelled_transaction_leaves_every_item_as_it_was(client: Any) -> None:
    for key in _items(client):
        client.delete_item(TableName="t", Key={"PK": {"S": key}})
    client.put_item(TableName="t", Item={"PK": {"S": "a"}, "v": {"S": "old"}})
    with pytest.raises(ClientError) as failed:
        client.transact_write_items(TransactItems=[
            {"Update": {"TableName": "t", "Key": {"PK": {"S": "a"}},
                        "UpdateExpression": "SET v = :v",
                        "ExpressionAttributeValues": {":v": {"S": "new"}}}},
            {"Put": {"TableName": "t", "Item": {"PK": {"S": "b"}, "v": {"S": "new"}}}},
            {"Put": {"TableName": "t", "Item": {"PK": {"S": "a2"}, "v": {"S": "x"}},
                     "ConditionExpression": "attribute_exists(PK)"}},
        ])
    assert failed.value.response["Error"]["Code"] == "TransactionCanceledException"
    reasons = [r["Code"] for r in failed.value.response["CancellationReasons"]]
    assert reasons == ["None", "None", "ConditionalCheckFailed"]
    assert _items(client) == {"a": "old"}


def test_a_committed_transaction_writes_every_item(client: Any) -> None:
    for key in _items(client):
        client.delete_item(TableName="t", Key={"PK": {"S": key}})
    client.put_item(TableName="t", Item={"PK": {"S": "a"}, "v": {"S": "old"}})
    client.transact_write_items(TransactItems=[
        {"Put": {"TableName": "t", "Item": {"PK": {"S": "c"}, "v": {"S": "1"}},
                 "ConditionExpression": "attribute_not_exists(PK)"}},
        {"Update": {"TableName": "t", "Key": {"PK": {"S": "a"}},
                    "UpdateExpression": "SET v = :v",
                    "ExpressionAttributeValues": {":v": {"S": "2"}}}},
    ])
    assert _items(client) == {"a": "2", "c": "1"}
