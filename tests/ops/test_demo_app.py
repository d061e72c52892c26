"""The demo app stops at start when misconfigured (issue 18 item 5): ``chainlit run
examples/app.py`` with a database whose schema is not migrated and a storage bucket that does
not exist exits non-zero before serving anyone, printing every problem with its fix, instead of
failing at the first login or message.

Chainlit 2.12 catches an ``Exception`` raised by ``@cl.on_app_startup`` and serves anyway; the
app raises ``SystemExit`` instead, which uvicorn reports as "Application startup failed.
Exiting." and answers with exit status 3 (its ``STARTUP_FAILURE``).
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.aws import MOTO_ENDPOINT

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VENV_BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.sqlite, pytest.mark.s3, pytest.mark.timeout(240)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_misconfigured_demo_exits_at_start_with_the_problems(tmp_path: Path) -> None:
    directory = tmp_path / "app"
    shutil.copytree(EXAMPLES, directory, ignore=shutil.ignore_patterns(
        ".data", ".files", "__pycache__", "translations"))
    database = tmp_path / "chat.db"
    with sqlite3.connect(database) as conn:  # a database made by hand, never migrated
        conn.execute('CREATE TABLE threads ("id" TEXT PRIMARY KEY)')
    url = f"sqlite+aiosqlite:///{database}"
    bucket = f"clorm-missing-{uuid.uuid4().hex[:12]}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CHAINLIT_", "AWS_", "DEMO_", "DATABASE_URL"))}
    env.update({
        "CHAINLIT_ORM_DATABASE_URL": url,
        "CHAINLIT_ORM_STORAGE_URL": f"s3://{bucket}/files",
        "AWS_ENDPOINT_URL_S3": MOTO_ENDPOINT,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "CHAINLIT_AUTH_SECRET": "check-" + uuid.uuid4().hex * 2,
        "PYTHONUNBUFFERED": "1",
    })
    port = _free_port()
    done = subprocess.run(
        [str(VENV_BIN / "chainlit"), "run", "app.py", "--headless", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=directory, env=env, capture_output=True, text=True, timeout=180, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "Application startup failed. Exiting." in output, output
    assert "SystemExit: chainlit-orm startup check failed (2 problems):\n" in output, output
    assert (f"  - database: {url} lacks the tables users, steps, elements, feedbacks; upgrade "
            f"it with: chainlit-orm migrate {url}\n") in output, output
    assert (f"  - storage s3://{bucket}/files: writing a probe object failed: could not "
            f"upload '.chainlit-orm-check/") in output, output
    # it never served: nothing listens on its port
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def _misconfigured_storage_secret(tmp_path: Path) -> dict[str, str]:
    return {"CHAINLIT_ORM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
            "CHAINLIT_ORM_STORAGE_URL": f"file://{tmp_path / 'files'}",
            "CHAINLIT_ORM_STORAGE_SECRET": "short"}


def _the_error(variables: dict[str, str]) -> str:
    """What building the demo's layer raises with ``variables``: the part that is misconfigured
    (the database, else the storage), built here as the demo builds it."""
    import chainlit_orm
    from chainlit_orm.errors import ConfigurationError

    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        build: Callable[[], object] = (
            (lambda: chainlit_orm.FsspecStorage(variables["CHAINLIT_ORM_STORAGE_URL"]))
            if "CHAINLIT_ORM_STORAGE_URL" in variables
            else (lambda: chainlit_orm.SQLDataLayer(variables["CHAINLIT_ORM_DATABASE_URL"])))
        with pytest.raises(ConfigurationError) as info:
            build()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return str(info.value)


@pytest.mark.parametrize("case", ["unsupported-scheme", "short-storage-secret"])
def test_a_demo_whose_layer_cannot_be_built_exits_at_start(tmp_path: Path, case: str) -> None:
    """outside attack #18 F3: the documented start-up pattern caught only ``CheckFailedError``,
    and ``get_data_layer()`` ran outside the ``try``: a ``ConfigurationError`` raised while the
    layer was built (``mongodb://`` as the database URL, a storage secret under 16 characters)
    reached Chainlit, which logged it and served. The demo now catches ``ChainlitORMError``
    around both, so each exits at start (status 3) with the message."""
    directory = tmp_path / "app"
    shutil.copytree(EXAMPLES, directory, ignore=shutil.ignore_patterns(
        ".data", ".files", "__pycache__", "translations"))
    variables = ({"CHAINLIT_ORM_DATABASE_URL": "mongodb://127.0.0.1/chat"}
                 if case == "unsupported-scheme" else _misconfigured_storage_secret(tmp_path))
    expected = _the_error(variables)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CHAINLIT_", "AWS_", "DEMO_", "DATABASE_URL"))}
    env.update(variables)
    env.update({"CHAINLIT_AUTH_SECRET": "check-" + uuid.uuid4().hex * 2,
                "PYTHONUNBUFFERED": "1"})
    port = _free_port()
    done = subprocess.run(
        [str(VENV_BIN / "chainlit"), "run", "app.py", "--headless", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=directory, env=env, capture_output=True, text=True, timeout=180, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "Application startup failed. Exiting." in output, output
    assert f"SystemExit: {expected}\n" in output, output
    assert "Your app is available" not in output, output
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
