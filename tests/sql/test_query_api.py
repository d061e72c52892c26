"""Your own queries on the layer's database (outside attack #20 F9), what a custom column
refuses (F8(b): a column migrate has not added yet; a value that is not text), on every SQL
backend.

Why: the custom-models page (step 5) queried through ``layer.sql.engine``, an internal attribute
it disclaimed itself; ``SQLDataLayer.engine`` and ``SQLDataLayer.table()`` are the documented
members now.
"""

from __future__ import annotations

import chainlit as cl
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from chainlit_orm import SQLDataLayer, migrate
from chainlit_orm.errors import InvalidInputError, SchemaError, SchemaOutdatedError, mask_url
from chainlit_orm.urls import parse_sql_url
from tests.backends import TenantThreadFields

pytestmark = pytest.mark.usefixtures("sql_url")

THREADS = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(3)]


def _models(origin: str) -> object:
    from chainlit_orm.models import ModelSet

    return ModelSet.build(thread=TenantThreadFields, origin=origin)


async def test_engine_and_table_query_a_custom_column(sql_url: str) -> None:
    """outside attack #20 F9: ``layer.table("thread")`` is the set's Table (the custom column
    included) and ``layer.engine`` the layer's AsyncEngine; a query over them sees what the
    layer wrote."""
    models = _models("tests.sql.test_query_api:engine")
    await migrate(sql_url, models=models)  # type: ignore[arg-type]
    layer = SQLDataLayer(sql_url, models=models)  # type: ignore[arg-type]
    try:
        assert isinstance(layer.engine, AsyncEngine)
        assert layer.engine is layer.sql.engine  # the internal name keeps working
        threads = layer.table("thread")
        assert threads is models.table("thread")  # type: ignore[attr-defined]
        assert threads.name == "threads" and "tenant" in threads.c
        alice = await layer.create_user(cl.User(identifier="alice"))
        assert alice is not None
        for thread_id, tenant in zip(THREADS, ["acme", "acme", "globex"], strict=True):
            await layer.update_thread(thread_id, name=f"chat {thread_id[-1]}", user_id=alice.id,
                                      metadata={"tenant": tenant})
        query = (sa.select(threads.c.name).where(threads.c.tenant == "acme")
                 .order_by(threads.c.name))
        async with layer.engine.connect() as conn:
            assert (await conn.execute(query)).scalars().all() == ["chat 0", "chat 1"]
        with pytest.raises(InvalidInputError) as refused:
            layer.table("threads")
        assert str(refused.value) == (
            "no table for 'threads': the entities are user, thread, step, element, feedback")
    finally:
        await layer.close()


async def test_a_custom_column_not_migrated_yet_is_schema_outdated(sql_url: str) -> None:
    """outside attack #20 F8(b): the first thread write that needs a column migrate has not
    added raised the parent SchemaError; the docs say SchemaOutdatedError (a subclass, so
    ``except SchemaError`` still catches it)."""
    assert issubclass(SchemaOutdatedError, SchemaError)
    await migrate(sql_url)  # the default set only: no tenant column
    models = _models("tests.sql.test_query_api:outdated")
    layer = SQLDataLayer(sql_url, models=models)  # type: ignore[arg-type]
    try:
        alice = await layer.create_user(cl.User(identifier="alice"))
        assert alice is not None
        with pytest.raises(SchemaOutdatedError) as outdated:
            await layer.update_thread(THREADS[0], name="t", user_id=alice.id,
                                      metadata={"tenant": "acme"})
        shown = mask_url(parse_sql_url(sql_url).async_url().render_as_string(True))
        assert str(outdated.value).startswith("database schema does not match the models (")
        assert str(outdated.value).endswith(
            f"run: chainlit-orm migrate {shown} --models tests.sql.test_query_api:outdated")
    finally:
        await layer.close()


@pytest.mark.parametrize(("value", "kind"), [({"a": 1}, "dict"), (True, "bool"),
                                             (["acme"], "list")])
async def test_a_metadata_column_refuses_what_text_cannot_hold(sql_url: str, value: object,
                                                               kind: str) -> None:
    """outside attack #20 (noted): ``metadata["tenant"] = {"a": 1}`` was stored as the Python
    repr ``"{'a': 1}"`` (a bool as ``"True"``); now refused before anything is written."""
    models = _models("tests.sql.test_query_api:text")
    await migrate(sql_url, models=models)  # type: ignore[arg-type]
    layer = SQLDataLayer(sql_url, models=models)  # type: ignore[arg-type]
    try:
        alice = await layer.create_user(cl.User(identifier="alice"))
        assert alice is not None
        with pytest.raises(InvalidInputError) as refused:
            await layer.update_thread(THREADS[0], name="t", user_id=alice.id,
                                      metadata={"tenant": value})
        assert str(refused.value) == (
            f"metadata['tenant'] fills a custom text column: it must be a string, a number or "
            f"None, got {kind}")
        assert await layer.get_thread(THREADS[0]) is None
    finally:
        await layer.close()


async def test_a_metadata_column_stores_a_number_as_its_json_text(sql_url: str) -> None:
    """outside attack #20 (noted): a number is stored as the metadata's JSON says it
    (``42`` -> ``"42"``, ``1.5`` -> ``"1.5"``), a string as it is."""
    models = _models("tests.sql.test_query_api:numbers")
    await migrate(sql_url, models=models)  # type: ignore[arg-type]
    layer = SQLDataLayer(sql_url, models=models)  # type: ignore[arg-type]
    try:
        alice = await layer.create_user(cl.User(identifier="alice"))
        assert alice is not None
        for thread_id, tenant in zip(THREADS, [42, 1.5, "acme"], strict=True):
            await layer.update_thread(thread_id, name="t", user_id=alice.id,
                                      metadata={"tenant": tenant})
        threads = layer.table("thread")
        async with layer.engine.connect() as conn:
            rows = dict((await conn.execute(sa.select(threads.c.id, threads.c.tenant))).all())
        assert {str(k): v for k, v in rows.items()} == dict(zip(THREADS, ["42", "1.5", "acme"],
                                                                strict=True))
    finally:
        await layer.close()
