"""Two gaps of the transfer closed (issues 14 and 16): its statements run under a client-side
deadline (a black-holed source database ends a copy in a typed timeout error), and a copy or an
import into a DynamoDB table used with ``retention=`` writes the TTL attribute the layer writes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from chainlit.user import User
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm import SQLDataLayer
from chainlit_orm.cli import main
from chainlit_orm.errors import ConfigurationError, TimeoutExceededError
from chainlit_orm.models.types import parse_timestamp
from chainlit_orm.transfer import copy, export
from chainlit_orm.transfer.progress import NoProgress
from tests.backends import SQL_BACKENDS
from tests.fixtures.legacy import temp_sqlite_url
from tests.reliability.faultproxy import FaultProxy, fault_proxy
from tests.transfer.conftest import MOTO_ENDPOINT, REGION, dynamo_table
from tests.transfer.seed import seed_many

#: A short limit, so a black-holed statement is over quickly (and long enough for a loaded
#: machine). Not shorter: a cancelled asyncpg statement's connection gets SQLAlchemy's graceful
#: close (``close(timeout=2)``) before it is terminated, a fixed 2 s on top of the limit.
TIMEOUT = 4.0
SERVERS = {"postgres": ("127.0.0.1", 5432), "mariadb": ("127.0.0.1", 3306)}


class BlackHoleOnCopy(NoProgress):
    """Black-holes the source's network when the copy phase starts (the source has been
    opened and counted, the destination migrated): every later statement hangs."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.at: float | None = None

    def start(self, phase: str, totals: Mapping[str, int | None]) -> None:
        if phase == "copy" and self.at is None:
            self.proxy.set_mode("blackhole")
            self.at = asyncio.get_running_loop().time()


async def _seed(url: str, threads: int) -> list[str]:
    layer = SQLDataLayer(url, create_schema=True)
    try:
        users = [await layer.create_user(User(identifier=f"u{i}@example.com")) for i in (1, 2)]
        return await seed_many(layer, users, threads, files=False)
    finally:
        await layer.close()


@pytest.mark.parametrize("backend", ["postgres", "mariadb"])
async def test_a_black_holed_source_database_ends_a_copy_in_a_typed_timeout(
        backend: str, tmp_path: Path) -> None:
    async with SQL_BACKENDS[backend].database(tmp_path) as src:
        await _seed(src, 3)
        with fault_proxy(*SERVERS[backend]) as proxy:
            proxied = make_url(src).set(port=proxy.port).render_as_string(hide_password=False)
            async with temp_sqlite_url(tmp_path) as dst:
                progress = BlackHoleOnCopy(proxy)
                try:
                    with pytest.raises(TimeoutExceededError) as caught:
                        await copy(proxied, dst, files=False, timeout=TIMEOUT, progress=progress,
                                   checkpoint=str(tmp_path / "ck.json"))
                    assert progress.at is not None
                    took = asyncio.get_running_loop().time() - progress.at
                    assert took < 2 * TIMEOUT  # the one timed assertion allowed
                    assert type(caught.value) is TimeoutExceededError
                    assert str(caught.value) == (
                        "transfer statement did not finish within the transfer statement "
                        f"timeout of {TIMEOUT:g} s")
                finally:
                    proxy.set_mode("pass")
                # the network back, the same copy resumes and completes
                summary = await copy(proxied, dst, files=False, timeout=TIMEOUT,
                                     checkpoint=str(tmp_path / "ck.json"))
                assert summary.verified_threads == 3


async def test_a_black_holed_source_refuses_export_and_the_cli_exits_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The first statement of an export (and of the CLI's copy) already meets the black hole:
    the limit bounds connecting too (the engine's connect_timeout is 10 s)."""
    async with SQL_BACKENDS["postgres"].database(tmp_path) as src:
        await _seed(src, 1)
        with fault_proxy(*SERVERS["postgres"]) as proxy:
            proxied = make_url(src).set(port=proxy.port).render_as_string(hide_password=False)
            proxy.set_mode("blackhole")
            try:
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(TimeoutExceededError):
                    await export(proxied, tmp_path / "bundle", files=False, timeout=TIMEOUT)
                assert loop.time() - started < 2 * TIMEOUT  # the one timed assertion allowed
                async with temp_sqlite_url(tmp_path) as dst:
                    code = await asyncio.to_thread(main, [
                        "copy", proxied, dst, "--no-files", "--timeout", str(TIMEOUT),
                        "--checkpoint", str(tmp_path / "ck.json")])
                assert code == 1  # the command ran and failed (2: a command line that cannot run)
                assert capsys.readouterr().err.splitlines()[-1] == (
                    "chainlit-orm: error: transfer statement did not finish within the "
                    f"transfer statement timeout of {TIMEOUT:g} s")
            finally:
                proxy.set_mode("pass")


def _thread_items(url: str) -> dict[str, dict[str, Any]]:
    """Thread id -> its thread item, read from the table directly."""
    table = url.split("//", 1)[1].split("?", 1)[0]
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=MOTO_ENDPOINT)
    items: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in page["Items"]:
            if item["PK"]["S"].startswith("THREAD#") and item["SK"]["S"] == "THREAD":
                items[item["PK"]["S"].removeprefix("THREAD#")] = item
    return items


def _expected_epoch(activity: str, retention: timedelta) -> str:
    moment = parse_timestamp(activity) + retention
    return str(int(moment.timestamp()) + (moment.microsecond > 0))


async def test_copy_and_import_into_dynamodb_write_the_ttl_of_the_retention(
        tmp_path: Path) -> None:
    retention = timedelta(days=90)
    async with temp_sqlite_url(tmp_path) as src:
        threads = await _seed(src, 4)
        async with dynamo_table() as with_ttl, dynamo_table() as without, \
                dynamo_table() as imported:
            await copy(src, with_ttl, files=False, retention=retention,
                       checkpoint=str(tmp_path / "ck1.json"))
            items = _thread_items(with_ttl)
            assert sorted(items) == sorted(threads)
            for item in items.values():
                # the activity the layer keeps, plus the retention, rounded up to a second
                activity = item["activityAt"]["S"]
                assert item["expiresAt"] == {"N": _expected_epoch(activity, retention)}
            # the activity is the source's, read there directly
            engine = create_async_engine(src)
            async with engine.connect() as conn:
                source = dict((await conn.execute(sa.text(
                    'SELECT id, "activityAt" FROM threads'))).all())
            await engine.dispose()
            assert {t: i["activityAt"]["S"] for t, i in items.items()} == source
            first = source[threads[0]]
            assert items[threads[0]]["expiresAt"] == {"N": str(math.ceil(
                (parse_timestamp(first) + retention).timestamp()))}

            await copy(src, without, files=False, checkpoint=str(tmp_path / "ck2.json"))
            assert [i for i in _thread_items(without).values() if "expiresAt" in i] == []

            # export, then the CLI's import with --retention: the same attribute values
            await export(src, tmp_path / "bundle", files=False)
            code = await asyncio.to_thread(main, [
                "import", str(tmp_path / "bundle"), imported, "--no-files", "--retention", "90d",
                "--checkpoint", str(tmp_path / "ck3.json")])
            assert code == 0
            assert {t: i["expiresAt"] for t, i in _thread_items(imported).items()} == {
                t: i["expiresAt"] for t, i in items.items()}


async def test_retention_is_refused_for_a_sql_destination(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with temp_sqlite_url(tmp_path) as src, temp_sqlite_url(tmp_path) as dst:
        await _seed(src, 1)
        with pytest.raises(ConfigurationError) as caught:
            await copy(src, dst, files=False, retention=timedelta(days=90))
        assert caught.value.detail == "retention"
        await export(src, tmp_path / "bundle", files=False)
        code = await asyncio.to_thread(main, ["import", str(tmp_path / "bundle"), dst,
                                              "--no-files", "--retention", "90d"])
        assert code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            "chainlit-orm: error: --retention is DynamoDB's TTL (the layer's retention=); a SQL "
            "destination has none: its threads expire by purge")
