"""Fixtures for the storage tests: real services only, one case object per backend.

moto's S3 server (127.0.0.1:5055) and Azurite (127.0.0.1:10000) are started by
``scripts/services.sh``. A service that is down fails the test with that hint: it is never skipped.
Every test gets its own bucket/container/directory/memory root, deleted afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from chainlit_orm.storage import FsspecStorage, mount_storage_route

MOTO_ENDPOINT = os.environ.get("CHAINLIT_ORM_TEST_MOTO", "http://127.0.0.1:5055")
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURITE_BLOB = os.environ.get("CHAINLIT_ORM_TEST_AZURITE", "http://127.0.0.1:10000")
AZURITE_CONN = (
    f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
    f"BlobEndpoint={AZURITE_BLOB}/{AZURITE_ACCOUNT};"
)
S3_OPTIONS: dict[str, Any] = {"endpoint_url": MOTO_ENDPOINT, "key": "testing", "secret": "testing"}
TEST_SECRET = "test-secret-0123456789abcdef"

BACKENDS = ["memory", "local", "s3", "azure"]

#: worst event-loop lag (seconds) per backend, filled by test_event_loop.py, printed at the end.
LAG_REPORT: dict[str, dict[str, float]] = {}


def require_service(url: str, name: str) -> None:
    """Fail (never skip) when a service is not listening."""
    host, port = url.split("//", 1)[1].split(":")
    try:
        socket.create_connection((host, int(port.split("/")[0])), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"{name} is not running on {url}: run `bash scripts/services.sh` ({exc})")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- the route server ---------------------------------------------------------------------------


@dataclass
class RouteServer:
    """A real uvicorn serving a tiny FastAPI app with the storage route mounted."""

    base_url: str
    app: FastAPI


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread on a free port; yield its base URL."""
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def route_server() -> Iterator[RouteServer]:
    app = FastAPI()

    @app.get("/{full_path:path}")
    async def catch_all(full_path: str) -> dict[str, str]:
        # Stands in for Chainlit's catch-all: the storage route must be inserted before it.
        return {"catch_all": full_path}

    mount_storage_route(app)
    with serve_app(app) as base_url:
        yield RouteServer(base_url=base_url, app=app)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as client:
        yield client


# -- one case per backend -----------------------------------------------------------------------


@dataclass
class BackendCase:
    """A backend under test: how to build storages on it and how to look at it directly."""

    kind: str
    url: str
    options: dict[str, Any]
    #: every object path that exists outside the storage root (must stay empty)
    outside_root: Callable[[], Any]
    #: raw existence check of an object key under the root, bypassing FsspecStorage
    raw_exists: Callable[[str], Any]
    storages: list[FsspecStorage] = field(default_factory=list)

    def make(self, **overrides: Any) -> FsspecStorage:
        options = {**self.options, **overrides}
        storage = FsspecStorage(self.url, **options)
        self.storages.append(storage)
        return storage

    @property
    def served_by_route(self) -> bool:
        return self.kind in ("memory", "local")


async def _s3_admin() -> Any:
    import s3fs

    fs = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True, **S3_OPTIONS)
    await fs.set_session()
    return fs


def _azure_admin() -> Any:
    import adlfs

    return adlfs.AzureBlobFileSystem(
        connection_string=AZURITE_CONN, asynchronous=True, skip_instance_cache=True
    )


async def close_azure_admin(admin: Any) -> None:
    """Close a test-owned adlfs instance and drop adlfs's exit hook for it (see client.py)."""
    from chainlit_orm.storage.client import _detach_finalizers

    client = admin.service_client
    await client.close()
    _detach_finalizers(lambda obj: obj is admin)


@contextlib.asynccontextmanager
async def backend_case(
    kind: str, tmp_path: Path, route_server: RouteServer
) -> AsyncIterator[BackendCase]:
    """Build the case for ``kind`` on a fresh bucket/container/directory, and clean it up."""
    route_opts = {
        "secret": TEST_SECRET,
        "public_base_url": route_server.base_url,
        "mount": False,
    }
    if kind == "memory":
        from fsspec.implementations.memory import MemoryFileSystem

        top = "/" + unique("mem")
        root = f"{top}/root"

        def mem_outside() -> list[str]:
            return sorted(
                p
                for p in MemoryFileSystem.store
                if p.startswith(top + "/") and not p.startswith(root + "/")
            )

        def mem_exists(key: str) -> bool:
            return f"{root}/{key}" in MemoryFileSystem.store

        case = BackendCase(kind, f"memory:/{root}", route_opts, mem_outside, mem_exists)
        try:
            yield case
        finally:
            await _close_all(case)
            for p in [p for p in MemoryFileSystem.store if p.startswith(top + "/")]:
                MemoryFileSystem.store.pop(p, None)
            for p in [p for p in MemoryFileSystem.pseudo_dirs if p.startswith(top)]:
                MemoryFileSystem.pseudo_dirs.remove(p)
    elif kind == "local":
        top = tmp_path / unique("disk")
        root = top / "root"
        root.mkdir(parents=True)

        def disk_outside() -> list[str]:
            return sorted(str(p) for p in top.rglob("*") if p != root and root not in p.parents)

        def disk_exists(key: str) -> bool:
            return (root / key).is_file()

        case = BackendCase(kind, f"file://{root}", route_opts, disk_outside, disk_exists)
        try:
            yield case
        finally:
            await _close_all(case)
            shutil.rmtree(top, ignore_errors=True)
    elif kind == "s3":
        require_service(MOTO_ENDPOINT, "moto's S3 server")
        admin = await _s3_admin()
        bucket = unique("cl-orm")
        await admin._mkdir(bucket)

        async def s3_outside() -> list[str]:
            found = await admin._find(bucket, refresh=True)
            return sorted(p for p in found if not p.startswith(f"{bucket}/root/"))

        async def s3_exists(key: str) -> bool:
            try:
                info = await admin._info(f"{bucket}/root/{key}", refresh=True)
            except FileNotFoundError:
                return False
            return bool(info["type"] == "file")

        case = BackendCase(kind, f"s3://{bucket}/root", dict(S3_OPTIONS), s3_outside, s3_exists)
        try:
            yield case
        finally:
            await _close_all(case)
            await admin._rm(bucket, recursive=True)
            await admin._s3creator.__aexit__(None, None, None)
    elif kind == "azure":
        require_service(AZURITE_BLOB, "Azurite")
        admin = _azure_admin()
        container = unique("cl-orm")
        await admin._mkdir(container)

        async def az_outside() -> list[str]:
            found = await admin._find(container)
            return sorted(p for p in found if not p.startswith(f"{container}/root/"))

        async def az_exists(key: str) -> bool:
            return bool(await admin._isfile(f"{container}/root/{key}"))

        options = {"connection_string": AZURITE_CONN}
        case = BackendCase(kind, f"az://{container}/root", options, az_outside, az_exists)
        try:
            yield case
        finally:
            await _close_all(case)
            await admin._rm(container, recursive=True)
            await close_azure_admin(admin)
    else:  # pragma: no cover
        raise AssertionError(kind)


async def _close_all(case: BackendCase) -> None:
    for storage in case.storages:
        await storage.close()


@pytest.fixture(
    params=[
        pytest.param("memory"),
        pytest.param("local"),
        pytest.param("s3", marks=pytest.mark.s3),
        pytest.param("azure", marks=pytest.mark.azure),
    ]
)
async def case(
    request: pytest.FixtureRequest, tmp_path: Path, route_server: RouteServer
) -> AsyncIterator[BackendCase]:
    async with backend_case(request.param, tmp_path, route_server) as built:
        yield built


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not LAG_REPORT:
        return
    terminalreporter.section("storage: worst event-loop lag during 50 concurrent 1 MB uploads")
    for kind, numbers in sorted(LAG_REPORT.items()):
        terminalreporter.write_line(
            f"{kind:>7}: worst heartbeat overshoot {numbers['lag'] * 1000:7.2f} ms "
            f"(upload wall time {numbers['wall']:.2f} s, {int(numbers['calls'])} fs calls, "
            f"{int(numbers['off_loop'])} in worker threads)"
        )
