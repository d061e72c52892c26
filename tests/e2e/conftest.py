"""End-to-end fixtures: the example app as a real ``chainlit run`` process, driven by Chromium.

Real services only, never skipped: a missing browser is installed by ``scripts/setup-e2e.sh``,
missing databases / moto are started by ``scripts/services.sh``, and anything that still fails is
a test failure. Each stack is a (database, storage) pair that the example app selects through the
environment variables it documents:

* ``sqlite-local``: a SQLite file (schema created by the layer on first use) + files on local disk,
  read back through the signed route FsspecStorage mounts on Chainlit's app;
* ``postgres-s3``: a fresh PostgreSQL database ``clorm_e2e_<hex>`` (created, migrated with
  ``chainlit_orm.migrate()`` and dropped here) + a fresh bucket on a moto S3 server started for this
  session (presigned URLs).

On failure a scenario step saves a screenshot of every open page, the pages' console logs and the
app's log under ``tests/e2e/artifacts/<timestamp>/<test>/`` and prints that directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
VENV_BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("CHAINLIT_ORM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PG_ADMIN = os.environ.get("CHAINLIT_ORM_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_URL_BASE = "postgresql+asyncpg://postgres@127.0.0.1:5432"
#: An S3 endpoint to use instead of a private moto server (e.g. the shared one on :5055).
MOTO_OVERRIDE = os.environ.get("CHAINLIT_ORM_E2E_MOTO")
ARTIFACTS_ROOT = Path(__file__).resolve().parent / "artifacts"
RUN_STAMP = time.strftime("%Y%m%d-%H%M%S")
META_DIR = ".chainlit-orm-meta"  # FsspecStorage's sidecar metadata folder on local disk

#: step results per test id, printed in the terminal summary: (step, "pass"/"FAIL", seconds)
STEP_RESULTS: dict[str, list[tuple[str, str, float]]] = {}


# --------------------------------------------------------------------------- pytest hooks


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not STEP_RESULTS:
        return
    terminalreporter.section("e2e scenario steps")
    for test_id, steps in STEP_RESULTS.items():
        terminalreporter.write_line(test_id)
        for name, status, seconds in steps:
            terminalreporter.write_line(f"  {status:4}  {seconds:5.1f}s  {name}")


# --------------------------------------------------------------------------- prerequisites


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        subprocess.run(["bash", str(REPO / "scripts" / "setup-e2e.sh")], check=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run `bash scripts/setup-e2e.sh` (as root)")
    return CHROMIUM


@pytest.fixture(scope="session")
def services() -> None:
    if not _port_open("127.0.0.1", 5432):
        subprocess.run(["bash", str(REPO / "scripts" / "services.sh")], check=False)
    if not _port_open("127.0.0.1", 5432):
        pytest.fail("PostgreSQL is not running on 127.0.0.1:5432: run `bash scripts/services.sh`")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server of our own, so the browser's presigned GETs never queue behind other
    suites' load on the shared one (set CHAINLIT_ORM_E2E_MOTO to use an existing endpoint)."""
    if MOTO_OVERRIDE:
        yield MOTO_OVERRIDE
        return
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while not _port_open("127.0.0.1", port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moto_server did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture(scope="session")
async def browser(chromium_executable: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        instance = await pw.chromium.launch(
            executable_path=chromium_executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield instance
        finally:
            await instance.close()


# --------------------------------------------------------------------------- stacks


@dataclass
class Stack:
    """A database + storage pair, the environment that selects it, and ways to inspect both."""

    name: str
    database_url: str
    storage_url: str
    env: dict[str, str]
    list_objects: Callable[[], list[str]]
    """All object keys in the storage (local: without the sidecar metadata records)."""
    list_meta: Callable[[], list[str]] = lambda: []
    """Local disk only: the sidecar metadata records FsspecStorage keeps next to objects."""
    engine: AsyncEngine | None = None
    passwords: dict[str, str] = field(default_factory=dict)
    url_prefix: str = ""
    """What the read URL of a stored object starts with (after the app's origin for local)."""

    def db(self) -> AsyncEngine:
        if self.engine is None:
            self.engine = create_async_engine(self.database_url, poolclass=NullPool)
        return self.engine


def _walk(root: Path) -> tuple[list[str], list[str]]:
    objects, meta = [], []
    if root.exists():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            (meta if rel.split("/", 1)[0] == META_DIR else objects).append(rel)
    return objects, meta


@contextlib.contextmanager
def sqlite_local_stack(tmp: Path) -> Iterator[Stack]:
    (tmp / "db").mkdir()
    files = tmp / "files"
    files.mkdir()
    yield Stack(
        name="sqlite-local",
        database_url=f"sqlite+aiosqlite:///{tmp / 'db' / 'chainlit.db'}",
        storage_url=str(files),
        env={},  # CHAINLIT_AUTH_SECRET unset on purpose: the app generates and keeps one
        list_objects=lambda: _walk(files)[0],
        list_meta=lambda: _walk(files)[1],
        passwords={"alice": "alice-pass", "bob": "bob-pass"},
        url_prefix="/chainlit-orm/files/",
    )


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def postgres_s3_stack(moto: str) -> AsyncIterator[Stack]:
    import boto3

    import chainlit_orm

    suffix = uuid.uuid4().hex[:12]
    dbname, bucket = f"clorm_e2e_{suffix}", f"clorm-e2e-{suffix}"
    url = f"{PG_URL_BASE}/{dbname}"
    from botocore.config import Config

    s3 = boto3.client(
        "s3", endpoint_url=moto, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 2}),
    )
    await _pg_admin(f'CREATE DATABASE "{dbname}"')
    s3.create_bucket(Bucket=bucket)
    stack = Stack(
        name="postgres-s3",
        database_url=url,
        storage_url=f"s3://{bucket}",
        env={
            "CHAINLIT_AUTH_SECRET": "e2e-" + uuid.uuid4().hex * 2,
            "AWS_ENDPOINT_URL_S3": moto,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "DEMO_BOB_PASSWORD": "bob-e2e-pass",  # the app's password override, exercised here
        },
        list_objects=lambda: sorted(
            o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        ),
        passwords={"alice": "alice-pass", "bob": "bob-e2e-pass"},
        url_prefix=f"{moto}/{bucket}/",
    )
    try:
        await chainlit_orm.migrate(url)
        yield stack
    finally:
        if stack.engine is not None:
            await stack.engine.dispose()
        for key in stack.list_objects():
            s3.delete_object(Bucket=bucket, Key=key)
        s3.delete_bucket(Bucket=bucket)
        await _pg_admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@pytest.fixture(params=["sqlite-local", "postgres-s3"])
async def stack(
    request: pytest.FixtureRequest, tmp_path: Path, services: None
) -> AsyncIterator[Stack]:
    if request.param == "sqlite-local":
        with sqlite_local_stack(tmp_path) as s:
            try:
                yield s
            finally:
                if s.engine is not None:
                    await s.engine.dispose()
    else:
        moto = request.getfixturevalue("moto_endpoint")
        async with postgres_s3_stack(moto) as s:
            yield s


# --------------------------------------------------------------------------- the app process


@dataclass
class App:
    url: str
    directory: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


_FORWARDED_PREFIXES = ("CHAINLIT_ORM_", "DEMO_", "AWS_")
_FORWARDED_NAMES = {"DATABASE_URL", "CHAINLIT_AUTH_SECRET", "CHAINLIT_APP_ROOT", "CHAINLIT_URL"}


def app_environment(stack: Stack) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(_FORWARDED_PREFIXES) and k not in _FORWARDED_NAMES
    }
    env.update(stack.env)
    env["CHAINLIT_ORM_DATABASE_URL"] = stack.database_url
    env["CHAINLIT_ORM_STORAGE_URL"] = stack.storage_url
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
async def app(stack: Stack, tmp_path: Path) -> AsyncIterator[App]:
    """``chainlit run app.py`` in a copy of examples/, on a free port, with the stack's env."""
    directory = tmp_path / "app"
    shutil.copytree(
        EXAMPLES, directory,
        ignore=shutil.ignore_patterns(".data", ".files", "__pycache__", "translations"),
    )
    port = _free_port()
    log_path = tmp_path / "app.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "chainlit"), "run", "app.py", "--headless",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=directory, env=app_environment(stack), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    running = App(url=url, directory=directory, log_path=log_path, process=process)
    print(f"\nexample app log: {log_path}", flush=True)
    try:
        deadline = time.monotonic() + 90
        async with httpx.AsyncClient() as client:
            while True:
                if process.poll() is not None:
                    pytest.fail(f"the example app exited with {process.returncode}:\n{running.log()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url + "/", timeout=2)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"the example app did not answer on {url}:\n{running.log()}")
                await asyncio.sleep(0.3)
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait, 10)


# --------------------------------------------------------------------------- failure artifacts


class Artifacts:
    """Tracks the open pages and their console output; saves everything when a step fails."""

    def __init__(self, test_id: str) -> None:
        self.test_id = test_id
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in test_id)
        self.directory = ARTIFACTS_ROOT / RUN_STAMP / safe
        self.pages: dict[str, Any] = {}
        self.console: list[str] = []
        self.app: App | None = None
        self.saved = False

    def watch(self, who: str, page: Any) -> Any:
        self.pages[who] = page

        def on_console(msg: Any) -> None:
            self.console.append(f"[{who}] {msg.type}: {msg.text}")

        def on_error(exc: Any) -> None:
            self.console.append(f"[{who}] pageerror: {exc}")

        page.on("console", on_console)
        page.on("pageerror", on_error)
        return page

    async def save(self, reason: str) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        for who, page in self.pages.items():
            if page.is_closed():
                continue
            with contextlib.suppress(Exception):
                await page.screenshot(path=str(self.directory / f"{who}.png"), full_page=True)
            with contextlib.suppress(Exception):
                (self.directory / f"{who}.url.txt").write_text(page.url + "\n")
        (self.directory / "console.log").write_text("\n".join(self.console) + "\n")
        (self.directory / "failure.txt").write_text(reason + "\n")
        if self.app is not None:
            shutil.copy(self.app.log_path, self.directory / "app.log")
        self.saved = True
        print(f"\ne2e artifacts for {self.test_id}: {self.directory}", flush=True)
        return self.directory


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Iterator[Artifacts]:
    keeper = Artifacts(request.node.nodeid.split("::", 1)[-1])
    yield keeper
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and not keeper.saved:
        # A failure outside any step (a fixture, a bug in the test): keep what there is.
        keeper.directory.mkdir(parents=True, exist_ok=True)
        (keeper.directory / "console.log").write_text("\n".join(keeper.console) + "\n")
        if keeper.app is not None:
            shutil.copy(keeper.app.log_path, keeper.directory / "app.log")
        print(f"\ne2e artifacts for {keeper.test_id}: {keeper.directory}", flush=True)


# --------------------------------------------------------------------------- database helpers


async def thread_rows(stack: Stack, thread_id: str) -> dict[str, int]:
    """Rows that belong to a thread, per table (the thread itself under ``threads``)."""
    from chainlit_orm import DEFAULT_MODELS as M

    threads, steps = M.table("thread"), M.table("step")
    elements, feedbacks = M.table("element"), M.table("feedback")
    counts: dict[str, int] = {}
    async with stack.db().connect() as conn:
        for name, table, column in (
            ("threads", threads, threads.c.id),
            ("steps", steps, steps.c.threadId),
            ("elements", elements, elements.c.threadId),
            ("feedbacks", feedbacks, feedbacks.c.threadId),
        ):
            query = sa.select(sa.func.count()).select_from(table).where(column == thread_id)
            counts[name] = int((await conn.execute(query)).scalar_one())
    return counts


async def thread_metadata(stack: Stack, thread_id: str) -> dict[str, Any] | None:
    import json

    from chainlit_orm import DEFAULT_MODELS as M

    threads = M.table("thread")
    async with stack.db().connect() as conn:
        row = (await conn.execute(
            sa.select(threads.c.metadata).where(threads.c.id == thread_id)
        )).first()
    if row is None:
        return None
    value = row[0]
    return json.loads(value) if isinstance(value, str) else dict(value or {})


async def element_keys(stack: Stack, thread_id: str) -> list[str]:
    from chainlit_orm import DEFAULT_MODELS as M

    elements = M.table("element")
    async with stack.db().connect() as conn:
        rows = await conn.execute(
            sa.select(elements.c.objectKey).where(elements.c.threadId == thread_id)
        )
        return sorted(k for (k,) in rows if k)
