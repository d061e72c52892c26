"""Every snippet in README.md is executed here, so the README cannot rot.

* ``python`` blocks are executed as written (in a temporary directory), then the data layer they
  define is built and, where it needs no cloud, used for one real call.
* ``bash`` blocks: the demo command is started and answered over HTTP; the test command is what
  CI runs (running it from inside the suite would recurse), so it is checked to be exactly what
  ``.ci/run`` calls; ``chainlit-orm migrate`` lines run against a fresh PostgreSQL database.
* ``text`` blocks listing CLI commands are run with their documented arguments.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.legacy import temp_postgres_db

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
CLI = str(Path(sys.executable).with_name("chainlit-orm"))


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCKS if kind == lang]


def test_readme_starts_with_exactly_the_two_commands() -> None:
    first = BLOCKS[0]
    assert first[0] == "bash"
    lines = [line.split("#")[0].strip() for line in first[1].strip().splitlines()]
    assert lines == ["bash examples/run.sh", "bash scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec bash scripts/test.sh" in ci


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
async def test_python_snippet_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                   ) -> None:
    import chainlit as cl
    from chainlit.config import config

    source = _blocks("python")[index]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHAINLIT_ORM_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/env.db")
    monkeypatch.setenv("CHAINLIT_ORM_STORAGE_URL", f"file://{tmp_path}/files")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    source = source.replace("file:///var/lib/chat-files", f"file://{tmp_path}/chat-files")
    namespace: dict[str, Any] = {}
    previous = config.code.data_layer
    try:
        exec(compile(source, f"README.md python block {index}", "exec"), namespace)
        assert config.code.data_layer is not previous  # @cl.data_layer registered it
        layer = namespace["data_layer"]()
    finally:
        config.code.data_layer = previous
    assert isinstance(layer, cl.data.base.BaseDataLayer)
    try:
        if "DynamoDataLayer" not in source:
            assert await layer.get_user("nobody") is None  # a real call on the embedded default
    finally:
        await layer.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_command_starts_the_app_and_prints_url_and_logins(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PORT": str(port),
           "CHAINLIT_ORM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/demo.db",
           "CHAINLIT_ORM_STORAGE_URL": f"file://{tmp_path}/files"}
    proc = subprocess.Popen(["bash", "examples/run.sh"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline and status != 200:
            time.sleep(0.5)
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code
            except httpx.HTTPError:
                continue
        assert status == 200
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}" in output
    assert "alice / alice-pass" in output and "bob / bob-pass" in output


def _commands(body: str) -> list[list[str]]:
    return [shlex.split(line.split("  #")[0]) for line in body.strip().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


async def test_migrate_commands_run_against_a_chainlit_database() -> None:
    migrate_blocks = [b for b in _blocks("bash") if "chainlit-orm migrate" in b]
    assert migrate_blocks
    async with temp_postgres_db() as url:
        plain = url.replace("+asyncpg", "")
        for body in migrate_blocks:
            for argv in _commands(body):
                argv = [CLI if a == "chainlit-orm" else a for a in argv]
                argv = [plain if a.startswith("postgresql://") else a for a in argv]
                result = await asyncio.to_thread(subprocess.run, argv, capture_output=True,
                                                 text=True, cwd=ROOT)
                assert result.returncode == 0, result.stderr
        second = await asyncio.to_thread(subprocess.run, [CLI, "migrate", plain],
                                         capture_output=True, text=True, cwd=ROOT)
    assert "nothing to do" in second.stdout


def test_cli_commands_listed_in_the_readme_run() -> None:
    listing = next(b for b in _blocks("text") if "chainlit-orm generate" in b)
    names = [line.split()[1] for line in listing.strip().splitlines()]
    assert names == ["generate", "migrate", "ddl"]
    check = subprocess.run([CLI, "generate", "--check"], capture_output=True, text=True, cwd=ROOT)
    assert check.returncode == 0, check.stdout + check.stderr
    ddl = subprocess.run([CLI, "ddl", "sqlite"], capture_output=True, text=True, cwd=ROOT)
    assert ddl.returncode == 0 and "CREATE TABLE threads" in ddl.stdout
    for name in names:
        helped = subprocess.run([CLI, name, "--help"], capture_output=True, text=True, cwd=ROOT)
        assert helped.returncode == 0 and f"chainlit-orm {name}" in helped.stdout
