"""Issue 18 item 7: module loggers, and an app start that prints no INFO line from Alembic or
from chainlit-orm unless asked."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import chainlit_orm
from chainlit_orm.logs import quiet_alembic

PACKAGE = Path(chainlit_orm.__file__).resolve().parent


def test_every_module_logs_to_its_own_logger() -> None:
    """``logging.getLogger(__name__)`` only: no logger by a fixed name, no root-logger call
    (``logs.py`` puts a filter on Alembic's loggers by their names: the one exception)."""
    offenders = []
    for path in sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "logs.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "logging":
                if node.func.attr == "getLogger" and not (
                        len(node.args) == 1 and isinstance(node.args[0], ast.Name)
                        and node.args[0].id == "__name__"):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} getLogger")
                if node.func.attr in ("debug", "info", "warning", "error", "exception",
                                      "critical", "basicConfig"):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} "
                                     f"logging.{node.func.attr}")
    assert offenders == []


@pytest.mark.sqlite
async def test_an_app_start_logs_nothing_at_info(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Layer construction, the startup check, the first call (which creates the SQLite schema
    through Alembic's operations) and ``migrate`` of a second database: every record at INFO
    and above is captured, and none comes from ``alembic`` or ``chainlit_orm``."""
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    with caplog.at_level(logging.INFO):
        layer = chainlit_orm.SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
        try:
            await layer.check()
            assert await layer.get_user("nobody") is None
        finally:
            await layer.close()
        report = await chainlit_orm.migrate(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
        assert report.changed is True
    ours = [(r.name, r.levelname, r.getMessage()) for r in caplog.records
            if r.name.split(".")[0] in ("alembic", "chainlit_orm") and r.levelno >= logging.INFO]
    assert ours == []
    # Alembic's own logging configuration (an alembic.ini's fileConfig) was not loaded: it
    # would replace the root handlers and disable the loggers that existed before
    assert root.handlers == handlers_before
    assert not logging.getLogger("chainlit_orm.layers.sql").disabled
    assert not logging.getLogger("alembic").disabled


async def test_alembic_logs_as_usual_outside_the_package(
        caplog: pytest.LogCaptureFixture) -> None:
    """The filter is scoped to chainlit-orm's own calls: an app's Alembic still logs at INFO."""
    quiet = logging.getLogger("alembic.runtime.migration")
    with caplog.at_level(logging.INFO):
        with quiet_alembic():
            quiet.info("inside")
            quiet.warning("a warning inside")
        quiet.info("outside")
    assert [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "alembic.runtime.migration"] == [
        ("WARNING", "a warning inside"), ("INFO", "outside")]
