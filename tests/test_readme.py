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
import tomllib
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
    previous_startup = config.code.on_app_startup
    try:
        exec(compile(source, f"README.md python block {index}", "exec"), namespace)
        assert config.code.data_layer is not previous  # @cl.data_layer registered it
        layer = namespace["data_layer"]()
        if "on_app_startup" in source:  # the startup check: registered, and it passes here
            assert config.code.on_app_startup is not previous_startup
    finally:
        config.code.data_layer = previous
        config.code.on_app_startup = previous_startup
    assert isinstance(layer, cl.data.base.BaseDataLayer)
    try:
        if "on_app_startup" in source:
            await layer.check()
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


def _cli_commands() -> list[str]:
    top = subprocess.run([CLI, "--help"], capture_output=True, text=True, check=True).stdout
    return re.findall(r"^ {2,4}([a-z][a-z0-9-]*)(?: {2,}|$)", top, flags=re.M)


def test_cli_commands_listed_in_the_readme_run() -> None:
    listing = next(b for b in _blocks("text") if "chainlit-orm generate" in b)
    names = [line.split()[1] for line in listing.strip().splitlines()]
    assert names == _cli_commands()  # every command, in the CLI's order
    check = subprocess.run([CLI, "generate", "--check"], capture_output=True, text=True, cwd=ROOT)
    assert check.returncode == 0, check.stdout + check.stderr
    ddl = subprocess.run([CLI, "ddl", "sqlite"], capture_output=True, text=True, cwd=ROOT)
    assert ddl.returncode == 0 and "CREATE TABLE threads" in ddl.stdout
    for name in names:
        helped = subprocess.run([CLI, name, "--help"], capture_output=True, text=True, cwd=ROOT)
        assert helped.returncode == 0 and f"chainlit-orm {name}" in helped.stdout


# ------------------------------------------------------------------ every claim the README names

_CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_LINK = re.compile(r"\]\(([^)]+)\)")
_PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _prose() -> str:
    """The README without its fenced blocks (those are run by the tests above)."""
    return re.sub(r"```\w*\n.*?```", "", README, flags=re.S)


def _source_strings() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "chainlit_orm").rglob("*.py")) + "\n".join(
        p.read_text() for p in (ROOT / "examples").glob("*.py"))


def _check_span(span: str, cli_commands: list[str]) -> str:
    """Check one code span of the README against the repository; return what kind it was."""
    import importlib

    if "://" in span:
        return "url"
    words = span.split()
    if words[0] == "chainlit-orm":
        assert words[1] in cli_commands, span
        helped = subprocess.run([CLI, words[1], "--help"], capture_output=True, text=True)
        assert helped.returncode == 0, span
        for option in (w for w in words[2:] if w.startswith("--")):
            assert option in helped.stdout, f"{span}: no option {option}"
        return "command"
    if words[0] == "bash":
        assert (ROOT / words[1]).is_file(), span
        return "command"
    if words[:2] == ["pip", "install"]:
        extras = re.search(r"\[([\w,]+)\]", span)
        if extras:
            assert set(extras.group(1).split(",")) <= _PYPROJECT["project"][
                "optional-dependencies"].keys(), span
        for group in re.findall(r"--group (\w+)", span):
            assert group in _PYPROJECT["dependency-groups"], span
        return "command"
    if re.fullmatch(r"chainlit_orm(\.\w+)*", span):
        module, _, attribute = span.rpartition(".")
        try:
            importlib.import_module(span)
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module), attribute), span
        return "module"
    if words[0].endswith(("/", ".sh", ".sql", ".json", ".md", ".toml", ".txt", ".yml", ".py")) \
            or "/" in words[0]:
        path = words[0]
        assert (ROOT / path).exists() or (ROOT / "generated" / path).exists(), span
        if len(words) > 1:  # a command run from a path (.venv/bin/mkdocs build --strict)
            done = subprocess.run([str(ROOT / path), *(w for w in words[1:] if w != "--strict"),
                                   "--help"], capture_output=True, text=True, cwd=ROOT)
            assert done.returncode == 0, span
        return "path"
    if len(words) == 1 and (ROOT / span).is_file():  # LICENSE
        return "path"
    if span in _PYPROJECT["project"]["optional-dependencies"] or span in _PYPROJECT[
            "dependency-groups"]:
        return "extra or group"
    if span.startswith(">="):
        assert span == _PYPROJECT["project"]["requires-python"], span
        return "requires-python"
    if re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+", span):
        assert f'"{span}"' in _source_strings(), f"no code reads {span}"
        return "variable"
    name = re.fullmatch(r"([A-Z]\w+)(\(.*\))?", span)
    if name:
        import chainlit.data.sql_alchemy

        import chainlit_orm
        import chainlit_orm.errors
        import chainlit_orm.models

        holders = (chainlit_orm, chainlit_orm.errors, chainlit_orm.models,
                   chainlit.data.sql_alchemy)
        assert any(hasattr(h, name.group(1)) for h in holders), span
        return "name"
    return "other"


def test_every_file_module_name_and_command_the_readme_mentions_exists() -> None:
    commands = _cli_commands()
    kinds: dict[str, int] = {}
    for span in _CODE_SPAN.findall(_prose()):
        kind = _check_span(span, commands)
        kinds[kind] = kinds.get(kind, 0) + 1
    for target in _LINK.findall(_prose()):
        if "://" not in target:
            assert (ROOT / target.split("#")[0]).exists(), target
            kinds["link"] = kinds.get("link", 0) + 1
    print(f"\nREADME claims checked: {kinds}")
    assert kinds["command"] >= 3 and kinds["path"] >= 8 and kinds["module"] >= 4
