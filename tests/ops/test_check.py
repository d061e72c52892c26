"""Issue 18 item 5 and issue 20 item 4's hints: ``await layer.check()`` on every backend, and
the one exact ``chainlit-orm migrate`` command every hint names.

Real services: SQLite files, moto's DynamoDB and S3 on :5055, memory and local-disk storage.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest

import chainlit_orm
from chainlit_orm import FsspecStorage
from chainlit_orm.errors import (
    BackendUnavailableError,
    ChainlitORMError,
    CheckFailedError,
    ConfigurationError,
    SchemaError,
    SchemaOutdatedError,
    StorageError,
    migrate_command,
)
from chainlit_orm.layers.base import CHECK_PREFIX
from chainlit_orm.layers.dynamodb import DynamoDataLayer
from chainlit_orm.models import DEFAULT_MODELS, ModelSet
from chainlit_orm.models.modelset import UNKNOWN_ORIGIN
from tests.aws import MOTO_ENDPOINT, REGION, aws_env, dynamodb
from tests.ops import models
from tests.schema import custom_models
from tests.schema.custom_models import TenantThread

__all__ = ["aws_env", "dynamodb"]


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def memory_storage() -> AsyncIterator[FsspecStorage]:
    storage = FsspecStorage(f"memory://clorm-check-{uuid.uuid4().hex}", mount=False,
                            secret="s" * 32)
    yield storage
    await storage.close()


# ------------------------------------------------------------------------- the command itself


def test_migrate_command_masks_quotes_and_names_the_model_set() -> None:
    assert migrate_command("sqlite+aiosqlite:////srv/chat.db") == (
        "chainlit-orm migrate sqlite+aiosqlite:////srv/chat.db")
    assert migrate_command("postgresql+asyncpg://app:hunter2@db:5432/chat", DEFAULT_MODELS) == (
        "chainlit-orm migrate 'postgresql+asyncpg://app:***@db:5432/chat'")
    assert migrate_command("dynamodb://chat?region=eu-west-1&profile=prod", models.TENANT) == (
        "chainlit-orm migrate 'dynamodb://chat?region=eu-west-1&profile=prod' "
        "--models tests.ops.models:TENANT")


def test_a_model_set_knows_where_it_is_defined() -> None:
    assert DEFAULT_MODELS.cli_spec() is None
    assert models.TENANT.cli_spec() == "tests.ops.models:TENANT"
    assert models.STATED.cli_spec() == "myapp.models:CHAT"  # origin= wins
    assert custom_models.MODELS.cli_spec() == "tests.schema.custom_models:MODELS"
    assert ModelSet.build(thread=TenantThread).cli_spec() == UNKNOWN_ORIGIN  # bound to no name
    with pytest.raises(ConfigurationError, match=r"origin must be 'package\.module:attribute'"):
        ModelSet.build(origin="myapp/models.py")


def test_a_set_in_an_app_file_chainlit_loaded_is_named_by_its_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``chainlit run app.py`` loads the file as the module ``app.py`` (its path): the hint
    says ``--models app:MODELS``, which is how the CLI imports it from that directory."""
    (tmp_path / "app.py").write_text(
        "from chainlit_orm.models import ModelSet\n"
        "from tests.schema.custom_models import TenantThread\n"
        "MODELS = ModelSet.build(thread=TenantThread)\n")
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("app.py", tmp_path / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "app.py", module)
    assert module.MODELS.cli_spec() == "app:MODELS"


# ------------------------------------------------------------------------------------ SQLite


@pytest.mark.sqlite
async def test_check_passes_and_leaves_no_probe(tmp_path: Path,
                                                memory_storage: FsspecStorage) -> None:
    layer = chainlit_orm.SQLDataLayer(sqlite_url(tmp_path / "chat.db"), storage=memory_storage)
    try:
        await layer.check()  # an empty SQLite file: the schema is created, as first use would
        await layer.check()
        assert await layer.get_user("nobody") is None
    finally:
        await layer.close()
    assert await memory_storage.list_keys(CHECK_PREFIX) == []


@pytest.mark.sqlite
async def test_check_lists_every_problem_at_once(tmp_path: Path) -> None:
    """A database lacking tables and a storage that cannot be written: two problems, one
    error, each problem with its fix."""
    path = tmp_path / "partial.db"
    with sqlite3.connect(path) as conn:
        conn.execute('CREATE TABLE threads ("id" TEXT PRIMARY KEY)')
    url = sqlite_url(path)
    layer = chainlit_orm.SQLDataLayer(url, models=models.TENANT,
                                      storage=FsspecStorage("file:///proc/clorm-check",
                                                            mount=False, secret="s" * 32))
    try:
        with pytest.raises(CheckFailedError) as info:
            await layer.check()
    finally:
        await layer.close()
    error = info.value
    assert isinstance(error, ChainlitORMError)
    assert error.problems == [
        f"database: {url} lacks the tables users, steps, elements, feedbacks; upgrade it with: "
        f"chainlit-orm migrate {url} --models tests.ops.models:TENANT",
        error.problems[1],
    ]
    assert error.problems[1].startswith(
        "storage file:///proc/clorm-check: writing a probe object failed: could not upload "
        f"'{CHECK_PREFIX}/")
    assert str(error) == (f"chainlit-orm startup check failed (2 problems):\n"
                          f"  - {error.problems[0]}\n  - {error.problems[1]}")
    assert [type(e) for e in error.errors] == [SchemaOutdatedError, StorageError]
    assert error.__cause__ is error.errors[0]
    assert error.detail == error.problems


@pytest.mark.sqlite
async def test_a_missing_custom_column_names_migrate_with_models(tmp_path: Path) -> None:
    """The schema version does not move with custom columns, so the first-use check passes a
    database migrated with the default set; ``check()`` reads the columns and says so, with
    the command that adds them, which then makes the check pass."""
    url = sqlite_url(tmp_path / "chat.db")
    await chainlit_orm.migrate(url)
    layer = chainlit_orm.SQLDataLayer(url, models=models.TENANT)
    try:
        with pytest.raises(CheckFailedError) as info:
            await layer.check()
        command = f"chainlit-orm migrate {url} --models tests.ops.models:TENANT"
        assert info.value.problems == [
            f"table threads lacks the column(s) tenant of the model set; add them with: "
            f"{command}"]
        assert info.value.errors == []
        await chainlit_orm.migrate(url, models=models.TENANT)  # what the command does
        await layer.check()
    finally:
        await layer.close()


@pytest.mark.sqlite
async def test_an_unreachable_database_is_a_problem(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "no-such-dir" / "chat.db")
    layer = chainlit_orm.SQLDataLayer(url)
    try:
        with pytest.raises(CheckFailedError) as info:
            await layer.check(timeout=20)
    finally:
        await layer.close()
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"database: cannot connect to {url}: ")
    assert isinstance(info.value.errors[0], BackendUnavailableError)


@pytest.mark.sqlite
async def test_the_first_call_hint_of_a_custom_column_names_models(tmp_path: Path) -> None:
    """Without ``check()``: a write that needs the missing column fails with the same exact
    command (issue 20: the hint used to omit ``--models``)."""
    url = sqlite_url(tmp_path / "chat.db")
    await chainlit_orm.migrate(url)
    layer = chainlit_orm.SQLDataLayer(url, models=models.TENANT)
    try:
        with pytest.raises(SchemaError) as info:
            await layer.update_thread(str(uuid.uuid4()), name="x", metadata={"tenant": "acme"})
    finally:
        await layer.close()
    assert str(info.value).endswith(
        f"; run: chainlit-orm migrate {url} --models tests.ops.models:TENANT")


# ---------------------------------------------------------------------------------- DynamoDB


@pytest.mark.dynamodb
async def test_dynamodb_check_names_the_table_command_with_models(dynamodb: Any) -> None:
    name = f"clorm_check_{uuid.uuid4().hex[:12]}"
    url = f"dynamodb://{name}?region={REGION}&endpoint_url={MOTO_ENDPOINT}"
    layer = DynamoDataLayer(name, region=REGION, endpoint_url=MOTO_ENDPOINT,
                            models=custom_models.MODELS)
    try:
        with pytest.raises(CheckFailedError) as info:
            await layer.check()
        assert info.value.problems == [
            f"database: DynamoDB table {name} does not exist; create it with: chainlit-orm "
            f"migrate '{url}' --models tests.schema.custom_models:MODELS"]
        await chainlit_orm.migrate(url)  # the default set: the tenant index is still missing
        with pytest.raises(CheckFailedError) as info:
            await layer.check()
        assert info.value.problems == [
            f"database: DynamoDB table {name} cannot be used by chainlit-orm: index "
            f"TenantActivity is missing. Run: chainlit-orm migrate '{url}' "
            "--models tests.schema.custom_models:MODELS"]
        await chainlit_orm.migrate(url, models=custom_models.MODELS)
        await layer.check()
    finally:
        await layer.close()
        dynamodb.delete_table(TableName=name)


@pytest.mark.dynamodb
@pytest.mark.s3
async def test_a_missing_bucket_is_a_problem(dynamodb: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage half on S3 (moto): a bucket that does not exist, then one that does."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", MOTO_ENDPOINT)
    bucket = f"clorm-check-{uuid.uuid4().hex[:12]}"
    storage = FsspecStorage(f"s3://{bucket}/files")
    layer = chainlit_orm.SQLDataLayer(sqlite_url(tmp_path / "chat.db"), storage=storage)
    s3 = boto3.client("s3", endpoint_url=MOTO_ENDPOINT, region_name=REGION)
    try:
        with pytest.raises(CheckFailedError) as info:
            await layer.check()
        (problem,) = info.value.problems
        assert problem.startswith(
            f"storage s3://{bucket}/files: writing a probe object failed: could not upload "
            f"'{CHECK_PREFIX}/")
        assert isinstance(info.value.errors[0], StorageError)
        s3.create_bucket(Bucket=bucket)
        await layer.check()
        assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # the probe is gone
    finally:
        await layer.close()
        with contextlib.suppress(s3.exceptions.NoSuchBucket):
            s3.delete_bucket(Bucket=bucket)


# -------------------------------------------------------------------------- PostgreSQL, MariaDB


@pytest.mark.postgres
async def test_postgresql_custom_set_in_its_own_schema() -> None:
    """A database migrated with the default set; the app's set has a prefix, a PostgreSQL
    schema and a tenant column: the check names ``migrate --models``, and once that ran, passes
    (columns read in the set's schema). The password is masked in the command."""
    from tests.fixtures.legacy import temp_postgres_db

    async with temp_postgres_db() as url:
        await chainlit_orm.migrate(url)
        secret_url = url.replace("postgres@", "postgres:hunter2@")  # trust auth ignores it
        layer = chainlit_orm.SQLDataLayer(secret_url, models=custom_models.MODELS)
        try:
            with pytest.raises(CheckFailedError) as info:
                await layer.check()
            shown = url.replace("postgres@", "postgres:***@")
            assert info.value.problems == [
                f"database: {shown} has none of the chainlit-orm tables; create them with: "
                f"chainlit-orm migrate '{shown}' --models tests.schema.custom_models:MODELS"]
            assert "hunter2" not in str(info.value)
            await chainlit_orm.migrate(url, models=custom_models.MODELS)
            await layer.check()
        finally:
            await layer.close()


@pytest.mark.mariadb
async def test_mariadb_missing_custom_column() -> None:
    from tests.fixtures.legacy import temp_mariadb_db

    async with temp_mariadb_db() as url:
        await chainlit_orm.migrate(url)
        layer = chainlit_orm.SQLDataLayer(url, models=models.TENANT)
        try:
            with pytest.raises(CheckFailedError) as info:
                await layer.check()
            shown = layer.sql.url_text
            assert info.value.problems == [
                "table threads lacks the column(s) tenant of the model set; add them with: "
                f"chainlit-orm migrate {shown} --models tests.ops.models:TENANT"]
            await chainlit_orm.migrate(url, models=models.TENANT)
            await layer.check()
        finally:
            await layer.close()
