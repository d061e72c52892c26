"""The one URL parser (:mod:`chainlit_orm.urls`): the same URL means the same thing everywhere.

One test per inconsistency issue 15 found between the five parsers it replaced, each through the
entry point that got it wrong, plus the parser's own values.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from chainlit_orm import from_env
from chainlit_orm.cli import main, url_backend
from chainlit_orm.errors import ConfigurationError
from chainlit_orm.layers.dynamodb import DynamoDataLayer
from chainlit_orm.layers.sql import SQLDataLayer
from chainlit_orm.urls import SQLURL, DynamoURL, parse_dynamodb_url, parse_sql_url, parse_url
from tests.fixtures.legacy import temp_postgres_db

ACCEPTED = "supported: region, endpoint_url, profile (credentials come from the AWS chain)"


def _env(url: str) -> dict[str, str]:
    return {"CHAINLIT_ORM_DATABASE_URL": url}


def test_from_env_honours_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: ``from_env()`` silently ignored ``profile=``. The profile's region is used and every
    botocore session the layer opens is on that profile."""
    config = tmp_path / "config"
    config.write_text("[profile chat]\nregion = ap-south-2\n", encoding="utf-8")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    layer = from_env(_env("dynamodb://chat?profile=chat&endpoint_url=http://127.0.0.1:1"))
    assert isinstance(layer, DynamoDataLayer)
    assert (layer.dynamo.table, layer.dynamo.region, layer.dynamo.profile) == (
        "chat", "ap-south-2", "chat")
    assert layer.dynamo.connection.session.profile == "chat"
    assert layer.dynamo.url == (
        "dynamodb://chat?region=ap-south-2&endpoint_url=http://127.0.0.1:1&profile=chat")


def test_from_env_refuses_a_misspelt_parameter() -> None:
    """Was: ``from_env()`` accepted ``regoin=`` (and ignored it) while ``migrate`` refused it."""
    with pytest.raises(ConfigurationError) as raised:
        from_env(_env("dynamodb://chat?regoin=eu-west-1"))
    assert str(raised.value) == (
        f"unknown parameter(s) regoin in dynamodb://chat?regoin=eu-west-1; {ACCEPTED}")
    assert raised.value.detail == "regoin"
    with pytest.raises(ConfigurationError) as again:
        url_backend("dynamodb://chat?regoin=eu-west-1")
    assert str(again.value) == str(raised.value)


def test_from_env_reads_the_table_of_a_triple_slash_url() -> None:
    """Was: ``from_env()`` gave table ``''`` for ``dynamodb:///t``."""
    layer = from_env(_env("dynamodb:///chat?region=eu-west-1"))
    assert isinstance(layer, DynamoDataLayer)
    assert (layer.dynamo.table, layer.dynamo.region) == ("chat", "eu-west-1")
    assert parse_url("dynamodb:///chat") == parse_url("dynamodb://chat") == DynamoURL("chat")


def test_from_env_reads_an_upper_case_scheme_as_dynamodb() -> None:
    """Was: ``from_env()`` treated ``DYNAMODB://`` as a SQL URL."""
    layer = from_env(_env("DYNAMODB://chat?region=eu-west-1"))
    assert isinstance(layer, DynamoDataLayer)
    assert (layer.dynamo.table, layer.dynamo.region) == ("chat", "eu-west-1")
    assert url_backend("DynamoDB://chat") == "dynamodb"


async def test_cli_migrates_a_postgres_url(capsys: Any) -> None:
    """Was: the CLI refused ``postgres://`` URLs that ``from_env()`` accepts."""
    async with temp_postgres_db() as url:
        plain = "postgres://" + url.split("://", 1)[1]
        assert url_backend(plain) == "postgresql"
        # main() runs its own event loop, so it is called from a worker thread here
        assert await asyncio.to_thread(main, ["migrate", plain]) == 0
        lines = capsys.readouterr().out.splitlines()
        # schema version 3 (lifecycle): two more indexes, ix_threads_activity and
        # ix_threads_deleted, than version 2's 18 statements; version 4: the tombstone table
        assert lines[-3] == "record schema version 4 in chainlit_orm_version"
        assert lines[-2].startswith("schema history entry #1: added tables users, ")
        assert lines[-1] == "done: schema version 4 recorded; 21 statements"
        layer = from_env(_env(plain))
        assert isinstance(layer, SQLDataLayer)
        try:
            assert await layer.get_user("nobody") is None
        finally:
            await layer.close()


def test_parse_url_values() -> None:
    assert parse_url("dynamodb://chat?region=eu-west-1&endpoint_url=http://h:1&profile=p") == (
        DynamoURL("chat", region="eu-west-1", endpoint_url="http://h:1", profile="p"))
    sql = parse_url("postgres://u:secret@db.example:5433/chat")
    assert isinstance(sql, SQLURL)
    assert (sql.dialect, sql.driver, sql.backend, sql.shown) == (
        "postgresql", "postgresql+asyncpg", "postgresql", "postgres://u:***@db.example:5433/chat")
    for text, dialect, backend in (
        ("postgresql://h/d", "postgresql", "postgresql"),
        ("postgresql+asyncpg://h/d", "postgresql", "postgresql"),
        ("POSTGRESQL://h/d", "postgresql", "postgresql"),
        ("sqlite:///chat.db", "sqlite", "sqlite"),
        ("sqlite+aiosqlite:///chat.db", "sqlite", "sqlite"),
        ("mysql://h/d", "mysql", "mysql"),
        ("mysql+asyncmy://h/d", "mysql", "mysql"),
        ("mariadb://h/d", "mariadb", "mysql"),
    ):
        parsed = parse_sql_url(text)
        assert (parsed.dialect, parsed.backend) == (dialect, backend), text
    assert str(parse_sql_url("postgres://u@h/d").async_url()) == "postgresql+asyncpg://u@h/d"


@pytest.mark.parametrize(("url", "message"), [
    ("oracle://scott:tiger@db/orcl",
     "unsupported database URL oracle://scott:***@db/orcl: supported schemes are postgresql://, "
     "sqlite://, mysql://, mariadb://, dynamodb:// (e.g. postgresql+asyncpg://, "
     "sqlite+aiosqlite:///file.db, mysql+asyncmy://, dynamodb://TABLE?region=...)"),
    ("postgresql+psycopg2://h/d",
     "unsupported driver 'postgresql+psycopg2' in postgresql+psycopg2://h/d; supported: "
     "sqlite+aiosqlite, postgresql+asyncpg, mysql+asyncmy, mariadb+asyncmy"),
    ("dynamodb://?region=eu-west-1",
     "no table name in dynamodb://?region=eu-west-1; use dynamodb://TABLE?region=REGION"),
    ("dynamodb://chat?aws_secret_access_key=abc",
     f"unknown parameter(s) aws_secret_access_key in dynamodb://chat?aws_secret_access_key=***; "
     f"{ACCEPTED}"),
])
def test_bad_urls_are_refused_alike(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_url(url)
    assert str(raised.value) == message
    with pytest.raises(ConfigurationError) as from_cli:
        url_backend(url)
    assert str(from_cli.value) == message
    with pytest.raises(ConfigurationError) as from_environment:
        from_env(_env(url))
    assert str(from_environment.value) == message


def test_parse_dynamodb_url_refuses_sql() -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_dynamodb_url("sqlite:///chat.db")
    assert str(raised.value) == "not a dynamodb:// URL: sqlite:///chat.db"


@pytest.mark.parametrize(("url", "pooler"), [
    ("postgresql://u@h/db?prepared_statement_cache_size=0", True),
    ("postgres://u@h/db?sslmode=require&prepared_statement_cache_size=0", True),
    ("postgresql+asyncpg://u@h/db?prepared_statement_cache_size=100", False),
    ("postgresql+asyncpg://u@h/db", False),
    ("mysql+asyncmy://u@h/db?prepared_statement_cache_size=0", False),
])
def test_transaction_pooler_flag(url: str, pooler: bool) -> None:
    assert parse_sql_url(url).transaction_pooler is pooler

