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
from chainlit_orm.urls import (
    SQLURL,
    DynamoURL,
    async_database_url,
    parse_dynamodb_url,
    parse_sql_url,
    parse_url,
    sql_query_parameters,
)
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
        # ix_threads_deleted, than version 2's 18 statements; version 4: the tombstone table;
        # version 5 changes SQLite only
        assert lines[-3] == "record schema version 5 in chainlit_orm_version"
        assert lines[-2].startswith("schema history entry #1: added tables users, ")
        assert lines[-1] == "done: schema version 5 recorded; 21 statements"
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
    ("postgres://u@h/db?ssl=require&prepared_statement_cache_size=0", True),
    ("postgresql+asyncpg://u@h/db?prepared_statement_cache_size=100", False),
    ("postgresql+asyncpg://u@h/db", False),
    ("mysql+asyncmy://u@h/db?charset=utf8mb4", False),
])
def test_transaction_pooler_flag(url: str, pooler: bool) -> None:
    assert parse_sql_url(url).transaction_pooler is pooler



# ------------------------------------------------- outside attack #20 F2: SQL URL parameters

#: What each async driver takes in a URL's query, read from its ``connect()`` signature (the
#: pinned asyncpg and asyncmy) plus what SQLAlchemy's dialect consumes itself.
ASYNCPG_PARAMETERS = (
    "command_timeout", "direct_tls", "gsslib", "host", "krbsrvname",
    "max_cacheable_statement_size", "max_cached_statement_lifetime", "passfile",
    "prepared_statement_cache_size", "prepared_statement_name_func", "service", "servicefile",
    "ssl", "statement_cache_size", "target_session_attrs", "timeout")
ASYNCMY_PARAMETERS = (
    "autocommit", "binary_prefix", "charset", "client_flag", "connect_timeout", "echo", "host",
    "init_command", "local_infile", "max_allowed_packet", "program_name", "read_default_file",
    "read_default_group", "read_timeout", "server_public_key", "sql_mode", "ssl", "ssl_ca",
    "ssl_capath", "ssl_cert", "ssl_check_hostname", "ssl_cipher", "ssl_key", "stmt_cache_size",
    "unix_socket", "use_unicode")
SQLITE_PARAMETERS = ("cached_statements", "check_same_thread", "detect_types", "timeout", "uri")

ISOLATION = (
    "the URL parameter isolation_level is not supported: the layer's connections are AUTOCOMMIT "
    "by design (each write is one idempotent statement) and its multi-statement writes use the "
    "server's default isolation; set that default on the server or the role instead "
    "(PostgreSQL: default_transaction_isolation, MySQL/MariaDB: transaction_isolation)")

#: (URL, the parameter the error names in ``detail``, the message): outside attack #20 F1/F2.
REFUSED_SQL_URLS = [
    ("postgresql://postgres:S3cretPW@127.0.0.1:5432/test?bogus=1", "bogus",
     "unknown parameter(s) bogus in postgresql://postgres:***@127.0.0.1:5432/test?bogus=1; "
     f"postgresql+asyncpg accepts: {', '.join(ASYNCPG_PARAMETERS)}"),
    ("postgresql://postgres:S3cretPW@127.0.0.1:5432/test?isolation_level=SERIALIZABLE",
     "isolation_level",
     f"{ISOLATION} (in postgresql://postgres:***@127.0.0.1:5432/test"
     "?isolation_level=SERIALIZABLE)"),
    ("mysql://root:S3cretPW@127.0.0.1:3306/test?bogus=1", "bogus",
     "unknown parameter(s) bogus in mysql://root:***@127.0.0.1:3306/test?bogus=1; "
     f"mysql+asyncmy accepts: {', '.join(ASYNCMY_PARAMETERS)}"),
    ("postgresql://postgres:S3cretPW@127.0.0.1:notaport/test", "port",
     "invalid port 'notaport' in database URL postgresql://postgres:***@127.0.0.1:notaport/test: "
     "the port must be a number in 0..65535"),
    ("postgresql://postgres:S3cretPW@[::1/test", "host",
     "cannot parse database URL postgresql://postgres:***@[::1/test: Invalid IPv6 URL"),
    ("postgresql://u:pw@h:70000/db", "port",
     "invalid port 70000 in database URL postgresql://u:***@h:70000/db: the port must be a "
     "number in 0..65535"),
    ("postgres://u@h/db?sslmode=sometimes", "sslmode",
     "sslmode='sometimes' in postgres://u@h/db?sslmode=sometimes is not one of disable, allow, "
     "prefer, require, verify-ca, verify-full"),
    ("postgres://u@h/db?sslmode=require&ssl=disable", "sslmode",
     "both sslmode= and ssl= in postgres://u@h/db?sslmode=require&ssl=disable; give one "
     "(asyncpg takes ssl=)"),
    ("sqlite:///chat.db?mode=ro", "mode",
     "unknown parameter(s) mode in sqlite:///chat.db?mode=ro; sqlite+aiosqlite accepts: "
     f"{', '.join(SQLITE_PARAMETERS)}"),
    ("sqlite:///chat.db?isolation_level=IMMEDIATE", "isolation_level",
     f"{ISOLATION} (in sqlite:///chat.db?isolation_level=IMMEDIATE)"),
    ("postgresql://u@h/db?command_timeout=abc", "command_timeout",
     "the URL parameter command_timeout='abc' in postgresql://u@h/db?command_timeout=abc must "
     "be a number of seconds >= 0"),
    ("postgresql://u@h/db?statement_cache_size=-1", "statement_cache_size",
     "the URL parameter statement_cache_size='-1' in postgresql://u@h/db?statement_cache_size=-1 "
     "must be a whole number >= 0"),
    ("postgresql://u@h/db?direct_tls=maybe", "direct_tls",
     "the URL parameter direct_tls='maybe' in postgresql://u@h/db?direct_tls=maybe must be true "
     "or false"),
]


def test_the_drivers_parameters_are_read_from_the_drivers() -> None:
    """outside attack #20 F2: the accepted set per driver, as the messages list it."""
    assert sql_query_parameters("postgresql+asyncpg") == ASYNCPG_PARAMETERS
    assert sql_query_parameters("mysql+asyncmy") == ASYNCMY_PARAMETERS
    assert sql_query_parameters("mariadb+asyncmy") == ASYNCMY_PARAMETERS
    assert sql_query_parameters("sqlite+aiosqlite") == SQLITE_PARAMETERS


@pytest.mark.parametrize(("url", "parameter", "message"), REFUSED_SQL_URLS)
def test_a_sql_url_the_driver_would_reject_is_refused_at_construction(
        url: str, parameter: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """outside attack #20 F2: such a URL used to build a layer fine, then every call raised a
    bare TypeError (a bad port: a bare ValueError). Now ``parse_url``, ``SQLDataLayer()`` and
    ``from_env()`` raise ConfigurationError at construction, naming the parameter."""
    for build in (lambda: parse_url(url), lambda: SQLDataLayer(url), lambda: from_env(_env(url))):
        with pytest.raises(ConfigurationError) as refused:
            build()
        assert (str(refused.value), refused.value.detail) == (message, parameter)
        assert "S3cretPW" not in str(refused.value)


@pytest.mark.parametrize(("url", "parameter", "message"), REFUSED_SQL_URLS)
def test_cli_refuses_a_sql_url_it_cannot_use_in_one_line(
        url: str, parameter: str, message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """outside attack #20 F1: ``migrate URL --dry-run`` printed a 40-98-line traceback (exit 1);
    now one line on stderr, the password masked, exit 2 (the command line cannot run as
    written)."""
    monkeypatch.chdir(tmp_path)
    assert main(["migrate", url, "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"chainlit-orm: error: {message}\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("url", "query"), [
    ("postgresql://u@h/db?ssl=require&prepared_statement_cache_size=0&target_session_attrs=any",
     {"ssl": "require", "prepared_statement_cache_size": "0", "target_session_attrs": "any"}),
    ("postgresql://u@h/db?host=/var/run/postgresql", {"host": "/var/run/postgresql"}),
    ("mysql://u@h/db?charset=utf8mb4&ssl_ca=/etc/ca.pem&ssl_check_hostname=false",
     {"charset": "utf8mb4", "ssl_ca": "/etc/ca.pem", "ssl_check_hostname": "false"}),
    ("mariadb://u@h:3307/db?init_command=SET%20NAMES%20utf8mb4",
     {"init_command": "SET NAMES utf8mb4"}),
    ("sqlite:///chat.db?timeout=5&cached_statements=50",
     {"timeout": "5", "cached_statements": "50"}),
    ("sqlite:///file:chat.db?mode=ro&uri=true", {"mode": "ro", "uri": "true"}),
])
def test_the_drivers_own_parameters_pass(url: str, query: dict[str, str]) -> None:
    """outside attack #20 F2: what the driver takes is kept as written."""
    assert dict(parse_sql_url(url).url.query) == query


async def test_an_accepted_parameter_reaches_the_driver() -> None:
    """outside attack #20 F2: a parameter the check accepts works end to end (``ssl=disable``
    on the local PostgreSQL, ``charset`` on MariaDB)."""
    async with temp_postgres_db() as url:
        from chainlit_orm import migrate

        await migrate(url + "?ssl=disable")
        layer = SQLDataLayer(url + "?ssl=disable&statement_cache_size=0&command_timeout=30")
        try:
            assert await layer.get_user("nobody") is None
        finally:
            await layer.close()


def test_asyncpgs_numbers_and_flags_are_converted() -> None:
    """outside attack #20 F2: asyncpg wants numbers where a URL has text (SQLAlchemy converts
    only the port and prepared_statement_cache_size): ``connect_args`` carries them converted."""
    parsed = parse_sql_url("postgresql://u@h/db?command_timeout=30&statement_cache_size=0"
                           "&timeout=7.5&direct_tls=false&ssl=require")
    assert parsed.connect_args == {"command_timeout": 30.0, "statement_cache_size": 0,
                                   "timeout": 7.5, "direct_tls": False}
    assert parse_sql_url("mysql://u@h/db?connect_timeout=5").connect_args == {}


def test_async_database_url_takes_every_form_the_app_takes() -> None:
    """outside attack #20 F7(a): the public normalizer an Alembic env.py uses."""
    assert str(async_database_url("sqlite:///chat.db")) == "sqlite+aiosqlite:///chat.db"
    assert (async_database_url("postgres://u:pw@h/db").render_as_string(hide_password=False)
            == "postgresql+asyncpg://u:pw@h/db")
    assert str(async_database_url("mysql://u@h/db")) == "mysql+asyncmy://u@h/db"
    with pytest.raises(ConfigurationError) as refused:
        async_database_url("postgresql://u@h/db?bogus=1")
    assert refused.value.detail == "bogus"


def test_libpqs_sslmode_is_asyncpgs_ssl() -> None:
    """A URL copied from a hosted PostgreSQL console carries libpq's ``?sslmode=require``:
    it is taken as asyncpg's ``ssl=require`` (same values), not refused (before the #20 fixes it
    was a bare ``TypeError`` at the first call)."""
    parsed = parse_sql_url("postgres://u:pw@h/db?sslmode=Require")
    assert dict(parsed.url.query) == {"ssl": "require"}
    assert parsed.async_url().render_as_string(hide_password=False) == (
        "postgresql+asyncpg://u:pw@h/db?ssl=require")


async def test_sslmode_disable_connects_to_the_real_server() -> None:
    """``?sslmode=disable`` reaches asyncpg as ``ssl=disable`` and the layer works; ``require``
    reaches it too: the local server has no TLS, so the call fails as unavailable (a typed
    error, not the bare ``TypeError`` of an unknown keyword)."""
    from chainlit_orm import migrate
    from chainlit_orm.errors import BackendUnavailableError

    async with temp_postgres_db() as url:
        await migrate(url + "?sslmode=disable")
        layer = SQLDataLayer(url + "?sslmode=disable")
        try:
            assert await layer.get_user("nobody") is None
        finally:
            await layer.close()
        layer = SQLDataLayer(url + "?sslmode=require", timeout=10)
        try:
            with pytest.raises(BackendUnavailableError):
                await layer.get_user("nobody")
        finally:
            await layer.close()
