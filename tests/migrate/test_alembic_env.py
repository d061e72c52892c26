"""Alembic autogenerate, run through the ``env.py`` the documentation gives
(``docs/alembic.md``), proposes nothing on a database made by ``migrate``.

Why: an app with its own Alembic environment in the same database must not be told to drop the
package's version table or search indexes. The test runs the real ``alembic`` command (``init``,
then ``revision --autogenerate``) so Alembic's own reflection and comparison are what is checked;
the control case shows the filters are what makes the difference.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chainlit_orm import migrate
from chainlit_orm.alembic import filters_for, include_name, include_object, owned_names
from chainlit_orm.models import DEFAULT_MODELS, ModelSet
from tests.fixtures.legacy import temp_postgres_db

ROOT = Path(__file__).resolve().parents[2]
ALEMBIC = str(Path(sys.executable).with_name("alembic"))


def _documented_env_py() -> str:
    """The ``env.py`` block of docs/alembic.md (the one marked ``docs-test: file .../env.py``)."""
    text = (ROOT / "docs" / "alembic.md").read_text()
    match = re.search(r"<!-- docs-test: file migrations/env.py -->\n```python\n(.*?)```", text,
                      flags=re.S)
    assert match, "docs/alembic.md lost its env.py block"
    return match.group(1)


def _autogenerate(tmp_path: Path, url: str, env_py: str) -> str:
    """``alembic init`` + the given env.py + ``revision --autogenerate``; the revision's text."""
    env = {**os.environ, "CHAINLIT_ORM_DATABASE_URL": url}
    subprocess.run([ALEMBIC, "init", "-t", "async", "migrations"], cwd=tmp_path, env=env,
                   check=True, capture_output=True, text=True)
    (tmp_path / "migrations" / "env.py").write_text(env_py)
    done = subprocess.run([ALEMBIC, "revision", "--autogenerate", "-m", "check"], cwd=tmp_path,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (revision,) = (tmp_path / "migrations" / "versions").glob("*_check.py")
    return revision.read_text()


def _body(revision: str, function: str) -> str:
    match = re.search(rf"def {function}\(\) -> None:\n(.*?)(?=\n\n\ndef |\Z)", revision, re.S)
    assert match, revision
    return "\n".join(line.strip() for line in match.group(1).splitlines()
                     if line.strip() and not line.strip().startswith(("#", '"""')))


UNFILTERED = "include_name=include_name,\n        include_object=include_object,\n"


@pytest.mark.sqlite
async def test_autogenerate_is_empty_on_a_sqlite_database_made_by_migrate(tmp_path: Path
                                                                          ) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/chat.db"
    await migrate(url)
    revision = _autogenerate(tmp_path, url, _documented_env_py())
    assert _body(revision, "upgrade") == "pass"
    assert _body(revision, "downgrade") == "pass"


@pytest.mark.sqlite
async def test_without_the_filters_sqlite_autogenerate_drops_the_package_objects(
        tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/chat.db"
    await migrate(url)
    env_py = _documented_env_py()
    assert UNFILTERED in env_py
    revision = _autogenerate(tmp_path, url, env_py.replace(UNFILTERED, ""))
    dropped = set(re.findall(r"op\.drop_table\('([^']+)'\)", _body(revision, "upgrade")))
    assert dropped == {
        "chainlit_orm_version", "chainlit_orm_erased",
        "threads_name_fts", "threads_name_fts_data", "threads_name_fts_idx",
        "threads_name_fts_docsize", "threads_name_fts_config", "threads_name_fts_pending",
        "steps_output_fts", "steps_output_fts_data", "steps_output_fts_idx",
        "steps_output_fts_docsize", "steps_output_fts_config", "steps_output_fts_pending",
    }


@pytest.mark.postgres
async def test_autogenerate_is_empty_on_a_postgresql_database_made_by_migrate(
        tmp_path: Path) -> None:
    async with temp_postgres_db() as url:
        await migrate(url)
        (tmp_path / "filtered").mkdir()
        (tmp_path / "control").mkdir()
        revision = _autogenerate(tmp_path / "filtered", url, _documented_env_py())
        unfiltered = _autogenerate(tmp_path / "control", url,
                                   _documented_env_py().replace(UNFILTERED, ""))
    assert _body(revision, "upgrade") == "pass"
    assert _body(revision, "downgrade") == "pass"
    control = _body(unfiltered, "upgrade")
    assert "op.drop_table('chainlit_orm_version')" in control
    assert set(re.findall(r"op\.drop_index\((?:op\.f\()?'([^']+)'", control)) == {
        "ix_threads_name_trgm", "ix_steps_output_trgm"}


def test_owned_names_are_the_objects_migrate_creates_outside_the_models() -> None:
    owned = owned_names(DEFAULT_MODELS)
    assert owned["index"] == {"ix_threads_name_trgm", "ix_steps_output_trgm"}
    assert "chainlit_orm_version" in owned["table"]
    assert {"threads_name_fts", "steps_output_fts_config"} <= owned["table"]
    assert not owned["table"] & {t.name for t in DEFAULT_MODELS.metadata.sorted_tables}
    assert include_object(None, "threads", "table", True, None)
    assert not include_object(None, "ix_steps_output_trgm", "index", True, None)
    assert not include_name("chainlit_orm_version", "table", {"schema_name": None})
    assert include_name(None, "schema", {})


def test_filters_for_a_prefixed_model_set_know_its_names() -> None:
    models = ModelSet.build(prefix="acme_")
    name_filter, object_filter = filters_for(models)
    assert not name_filter("acme_chainlit_orm_version", "table", {})
    assert not object_filter(None, "ix_acme_threads_name_trgm", "index", True, None)
    assert name_filter("chainlit_orm_version", "table", {})  # another prefix's: not this set's


@pytest.mark.sqlite
async def test_the_documented_env_py_takes_the_bare_url_forms(tmp_path: Path) -> None:
    """outside attack #20 F7(a): the page's env.py handed CHAINLIT_ORM_DATABASE_URL straight to
    create_async_engine, so the bare ``sqlite:///`` form the other pages use for that variable
    failed (pysqlite is not async). It now goes through ``async_database_url``."""
    url = f"sqlite:///{tmp_path}/chat.db"
    await migrate(url)
    revision = _autogenerate(tmp_path, url, _documented_env_py())
    assert _body(revision, "upgrade") == "pass"
    assert _body(revision, "downgrade") == "pass"


@pytest.mark.postgres
async def test_the_documented_env_py_with_a_schema_set_on_postgresql(tmp_path: Path) -> None:
    """outside attack #20 F7(b): with ``ModelSet.build(schema="chat")`` and ``filters_for``, the
    page's env.py (no ``include_schemas``) proposed ``create_table`` for all five tables. The
    page now sets ``include_schemas=True`` and the filters keep only the default schema and the
    sets' schemas. The URL is the bare ``postgresql://`` form."""
    (tmp_path / "atk20_schema_models.py").write_text(
        "from chainlit_orm.models import ModelSet\n"
        "MODELS = ModelSet.build(schema='chat', origin='atk20_schema_models:MODELS')\n")
    env_py = _documented_env_py().replace(
        "from chainlit_orm.alembic import include_name, include_object, target_metadata\n",
        "from atk20_schema_models import MODELS\n"
        "from chainlit_orm.alembic import filters_for\n"
        "include_name, include_object = filters_for(MODELS)\n"
        "target_metadata = MODELS.metadata\n")
    assert "filters_for(MODELS)" in env_py
    async with temp_postgres_db() as url:
        import asyncpg

        from chainlit_orm.urls import parse_sql_url

        bare = url.replace("postgresql+asyncpg://", "postgresql://")
        dsn = parse_sql_url(url).url.set(drivername="postgresql").render_as_string(False)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE SCHEMA chat; CREATE SCHEMA other; "
                               "CREATE TABLE other.unrelated (id int)")
        finally:
            await conn.close()
        sys.path.insert(0, str(tmp_path))
        try:
            from atk20_schema_models import MODELS  # type: ignore[import-not-found]

            await migrate(bare, models=MODELS)
        finally:
            sys.path.remove(str(tmp_path))
        env_dir = tmp_path / "env"
        env_dir.mkdir()
        revision = _autogenerate_with_path(env_dir, bare, env_py, tmp_path)
    assert _body(revision, "upgrade") == "pass"
    assert _body(revision, "downgrade") == "pass"


def _autogenerate_with_path(directory: Path, url: str, env_py: str, path: Path) -> str:
    """:func:`_autogenerate` with ``path`` on PYTHONPATH (the app's model module)."""
    env = {**os.environ, "CHAINLIT_ORM_DATABASE_URL": url, "PYTHONPATH": str(path)}
    subprocess.run([ALEMBIC, "init", "-t", "async", "migrations"], cwd=directory, env=env,
                   check=True, capture_output=True, text=True)
    (directory / "migrations" / "env.py").write_text(env_py)
    done = subprocess.run([ALEMBIC, "revision", "--autogenerate", "-m", "check"], cwd=directory,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (revision,) = (directory / "migrations" / "versions").glob("*_check.py")
    return revision.read_text()


def test_the_schema_filter_keeps_the_default_and_the_sets_schemas() -> None:
    """outside attack #20 F7(b): with include_schemas=True Alembic would compare every schema
    the role sees (on MySQL every database); the name filter keeps the default one (None) and
    the model sets' schemas."""
    name_filter, _ = filters_for(ModelSet.build(schema="chat"))
    assert [name_filter(s, "schema", {}) for s in (None, "chat", "public", "other")] == [
        True, True, False, False]
    assert [include_name(s, "schema", {}) for s in (None, "chat")] == [True, False]
