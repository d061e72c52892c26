"""Engine options reach ``create_async_engine``, except ``isolation_level``, which is refused
(it used to be dropped silently: an app asking for SERIALIZABLE ran at the server's default)."""

from __future__ import annotations

from pathlib import Path

import pytest

import chainlit_orm
from chainlit_orm import SQLDataLayer
from chainlit_orm.errors import ConfigurationError

REFUSAL = (
    "the engine option isolation_level is not supported: the layer's connections are "
    "AUTOCOMMIT by design (each write is one idempotent statement) and its multi-statement "
    "writes use the server's default isolation; set that default on the server or the role "
    "instead (PostgreSQL: default_transaction_isolation, MySQL/MariaDB: transaction_isolation)"
)


@pytest.mark.parametrize("url", ["sqlite+aiosqlite:///{tmp}/iso.db",
                                 "postgresql://postgres@127.0.0.1:5432/postgres",
                                 "mariadb+asyncmy://root@127.0.0.1:3306/mysql"])
@pytest.mark.parametrize("options", [{"isolation_level": "SERIALIZABLE"},
                                     {"execution_options": {"isolation_level": "READ COMMITTED"}}])
def test_isolation_level_is_refused_with_the_reason(
        url: str, options: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as refused:
        SQLDataLayer(url.format(tmp=tmp_path), **options)  # type: ignore[arg-type]
    assert (str(refused.value), refused.value.detail) == (REFUSAL, "isolation_level")


def test_from_env_refuses_it_too(tmp_path: Path) -> None:
    env = {"CHAINLIT_ORM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/env.db"}
    with pytest.raises(ConfigurationError) as refused:
        chainlit_orm.from_env(env, isolation_level="SERIALIZABLE")
    assert str(refused.value) == REFUSAL


async def test_other_engine_options_reach_both_engines(tmp_path: Path) -> None:
    layer = SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'o.db'}", create_schema=True,
                         pool_recycle=77, connect_args={"timeout": 9})
    try:
        assert layer.sql.engine.sync_engine.pool._recycle == 77  # type: ignore[attr-defined]
        assert layer.sql.auto.sync_engine.pool._recycle == 77  # type: ignore[attr-defined]
        assert await layer.get_user("nobody") is None  # and the layer works with them
    finally:
        await layer.close()
