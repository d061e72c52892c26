"""Scan a whole store (every table, every index of DynamoDB, every stored object) for strings:
the proof that an erasure left nothing naming the user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm.urls import parse_sql_url


async def scan_sql(url: str, needles: list[str]) -> dict[str, int]:
    """Rows holding any needle, per table, over every table of every schema the URL's database
    has (on MySQL/MariaDB, where a schema is a database: the URL's database), version table,
    search tables and their shadow tables included. Also returns the number of tables and rows
    read under the keys ``"<tables>"`` and ``"<rows>"``."""
    engine = create_async_engine(parse_sql_url(url).async_url())
    found: dict[str, int] = {}
    tables = rows_read = 0
    try:
        async with engine.connect() as conn:
            names: list[tuple[str | None, str]] = await conn.run_sync(_all_tables)
            for schema, name in names:
                table = sa.table(name, schema=schema)
                result = await conn.execute(sa.select(sa.literal_column("*")).select_from(table))
                tables += 1
                for row in result:
                    rows_read += 1
                    text = " ".join(_text(v) for v in row)
                    if any(n in text for n in needles):
                        found[name] = found.get(name, 0) + 1
    finally:
        await engine.dispose()
    found["<tables>"] = tables
    found["<rows>"] = rows_read
    return found


def _all_tables(sync_conn: Any) -> list[tuple[str | None, str]]:
    inspector = sa.inspect(sync_conn)
    dialect = sync_conn.dialect.name
    if dialect == "sqlite":
        rows = sync_conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return [(None, r[0]) for r in rows]
    if dialect in ("mysql", "mariadb"):
        # MySQL's schemas are the server's databases: the store is the URL's one. Listing all
        # of them read other tests' (other sessions') databases while they were being dropped,
        # a race that failed the scan with "table doesn't exist".
        current = sync_conn.exec_driver_sql("SELECT DATABASE()").scalar_one()
        return [(current, name) for name in inspector.get_table_names(current)]
    schemas = [s for s in inspector.get_schema_names()
               if s not in ("information_schema", "pg_catalog", "pg_toast")]
    return [(schema, name) for schema in schemas for name in inspector.get_table_names(schema)]


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def scan_dynamodb(table: str, endpoint: str, needles: list[str]) -> dict[str, int]:
    """Items holding any needle: the table, then each of its GSIs (``"<items>"``: items read)."""
    import boto3

    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint)
    indexes = [g["IndexName"] for g in client.describe_table(TableName=table)["Table"].get(
        "GlobalSecondaryIndexes", [])]
    found: dict[str, int] = {}
    read = 0
    for index in [None, *indexes]:
        kwargs: dict[str, Any] = {"TableName": table}
        if index:
            kwargs["IndexName"] = index
        while True:
            page = client.scan(**kwargs)
            for item in page.get("Items", []):
                read += 1
                if any(n in repr(item) for n in needles):
                    key = index or table
                    found[key] = found.get(key, 0) + 1
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    found["<items>"] = read
    return found


def scan_files(root: Path, needles: list[str]) -> dict[str, int]:
    """Stored objects (and sidecar records) whose path or bytes hold any needle."""
    found: dict[str, int] = {}
    read = 0
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        read += 1
        data = path.read_bytes()
        text = str(path.relative_to(root)) + data.decode("utf-8", "replace")
        if any(n in text for n in needles):
            found[str(path.relative_to(root))] = 1
    found["<files>"] = read
    return found
