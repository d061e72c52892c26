"""The signed read route of the local and memory backends, under a real uvicorn."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest
from fastapi import FastAPI

from chainlit_orm.errors import ConfigurationError
from chainlit_orm.storage import ROUTE_PATH, FsspecStorage, mount_storage_route
from chainlit_orm.storage import client as client_module
from tests.storage.conftest import TEST_SECRET, RouteServer, backend_case, serve_app


@pytest.fixture(params=["memory", "local"])
async def routed(
    request: pytest.FixtureRequest, tmp_path: Path, route_server: RouteServer
) -> AsyncIterator[FsspecStorage]:
    async with backend_case(request.param, tmp_path, route_server) as case:
        yield case.make()


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())))


async def test_url_shape(routed: FsspecStorage, route_server: RouteServer) -> None:
    url = await routed.get_read_url("u/e/a b?.txt")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == route_server.base_url
    assert parts.path == f"{ROUTE_PATH}/{routed.name}/u/e/a%20b%3F.txt"
    query = parse_qs(parts.query)
    assert sorted(query) == ["expires", "sig"]
    assert abs(int(query["expires"][0]) - (int(time.time()) + 3600)) <= 2


async def test_tampered_signature_key_and_expiry_are_403(
    routed: FsspecStorage, http: httpx.AsyncClient
) -> None:
    await routed.upload_file("s/one.txt", b"one")
    await routed.upload_file("s/two.txt", b"two")
    url = await routed.get_read_url("s/one.txt")
    assert (await http.get(url)).content == b"one"
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    forged = [
        with_query(url, sig=sig[:-2] + ("AA" if not sig.endswith("AA") else "BB")),
        with_query(url, sig=""),
        with_query(url, expires=str(int(time.time()) + 10_000)),
        with_query(url, expires="abc"),
        url.replace("s/one.txt", "s/two.txt"),
        url.split("?")[0],
    ]
    for bad in forged:
        response = await http.get(bad)
        assert (response.status_code, response.content) == (403, b"Forbidden"), bad


async def test_expired_url_is_403(
    route_server: RouteServer, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expiry is checked against the clock the route reads; moving that clock past ``expires``
    (rather than sleeping through a 1 s lifetime) keeps the test independent of machine load."""
    storage = FsspecStorage(
        "memory://route-expiry/root",
        secret=TEST_SECRET,
        public_base_url=route_server.base_url,
        mount=False,
        expires=60,
    )
    await storage.upload_file("k", b"short-lived")
    url = await storage.get_read_url("k")
    assert (await http.get(url)).content == b"short-lived"
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])

    class _Clock:
        now = float(expires)

        @classmethod
        def time(cls) -> float:
            return cls.now

    monkeypatch.setattr(client_module, "time", _Clock)
    assert (await http.get(url)).status_code == 200  # the last second is still valid
    _Clock.now = expires + 0.001
    response = await http.get(url)
    assert (response.status_code, response.content) == (403, b"Forbidden")
    monkeypatch.undo()
    assert await storage.delete_file("k") is True


async def test_url_lives_at_least_expires_seconds(route_server: RouteServer) -> None:
    """``expires_at`` is rounded up: signed at x.99 s with expires=1, the URL must not die at
    x+1.0 s (it did: ``int(now) + expires``)."""
    storage = FsspecStorage(
        "memory://route-expiry-floor/root",
        secret=TEST_SECRET,
        public_base_url=route_server.base_url,
        mount=False,
        expires=1,
    )
    for _ in range(20):
        before = time.time()
        url = await storage.get_read_url("k")
        assert int(parse_qs(urlsplit(url).query)["expires"][0]) >= before + 1


async def test_other_secret_is_403(route_server: RouteServer, http: httpx.AsyncClient) -> None:
    signer = FsspecStorage(
        "memory://route-secret/root",
        name="route-secret-b",
        secret="another-secret-0123456789",
        public_base_url=route_server.base_url,
        mount=False,
    )
    server_side = FsspecStorage(
        "memory://route-secret/root",
        name="route-secret-a",
        secret=TEST_SECRET,
        public_base_url=route_server.base_url,
        mount=False,
    )
    await server_side.upload_file("k", b"x")
    url = (await signer.get_read_url("k")).replace("route-secret-b", "route-secret-a")
    assert (await http.get(url)).status_code == 403
    assert (await http.get(await server_side.get_read_url("k"))).content == b"x"
    await server_side.delete_file("k")


async def test_unknown_storage_and_bad_key_in_route(
    routed: FsspecStorage, route_server: RouteServer, http: httpx.AsyncClient
) -> None:
    base = f"{route_server.base_url}{ROUTE_PATH}"
    assert (await http.get(f"{base}/no-such-storage/k?expires=1&sig=x")).status_code == 404
    for raw in ("a%5Cb", "a/%2E%2E/b", "%2E%2E", "a%00b", "a//b", ".chainlit-orm-meta/x.json"):
        response = await http.get(f"{base}/{routed.name}/{raw}?expires=1&sig=x")
        assert response.status_code == 400, raw


async def test_no_directory_listing(routed: FsspecStorage, http: httpx.AsyncClient) -> None:
    await routed.upload_file("dir/inner.txt", b"x")
    response = await http.get(await routed.get_read_url("dir"))
    assert (response.status_code, response.content) == (404, b"Not Found")


async def test_metadata_sidecar_is_invisible(
    routed: FsspecStorage, http: httpx.AsyncClient
) -> None:
    await routed.upload_file("m/k.txt", b"x", mime="text/plain")
    assert await routed.delete_file("m/k.txt") is True
    # the sidecar went with the object: re-uploading without metadata serves the default type
    await routed.upload_file("m/k.txt", b"y")
    response = await http.get(await routed.get_read_url("m/k.txt"))
    assert response.headers["content-type"] == "application/octet-stream"


async def test_range_requests(routed: FsspecStorage, http: httpx.AsyncClient) -> None:
    data = bytes(range(256)) * 8
    await routed.upload_file("r/bin", data, mime="application/octet-stream")
    url = await routed.get_read_url("r/bin")
    cases = {
        "bytes=0-9": (206, data[0:10], "bytes 0-9/2048"),
        "bytes=100-": (206, data[100:], "bytes 100-2047/2048"),
        "bytes=-16": (206, data[-16:], "bytes 2032-2047/2048"),
        "bytes=2000-9999": (206, data[2000:], "bytes 2000-2047/2048"),
    }
    for header, (status, body, content_range) in cases.items():
        response = await http.get(url, headers={"Range": header})
        assert response.status_code == status, header
        assert response.content == body, header
        assert response.headers["content-range"] == content_range
        assert response.headers["content-length"] == str(len(body))
    response = await http.get(url, headers={"Range": "bytes=4096-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */2048"
    response = await http.get(url, headers={"Range": "bytes=0-1,5-6"})
    assert (response.status_code, response.content) == (200, data)


async def test_head_and_security_headers(routed: FsspecStorage, http: httpx.AsyncClient) -> None:
    await routed.upload_file(
        "h/page.html",
        b"<script>alert(1)</script>",
        mime="text/html",
        content_disposition='inline; filename="page.html"',
    )
    url = await routed.get_read_url("h/page.html")
    head = await http.head(url)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == "25"
    get = await http.get(url)
    assert get.headers["content-type"] == "text/html"
    assert get.headers["content-disposition"] == 'inline; filename="page.html"'
    assert get.headers["x-content-type-options"] == "nosniff"
    assert get.headers["content-security-policy"] == "sandbox"
    assert get.headers["accept-ranges"] == "bytes"
    assert get.headers["cache-control"].startswith("private, max-age=")


async def test_empty_object(routed: FsspecStorage, http: httpx.AsyncClient) -> None:
    result = await routed.upload_file("e/empty", b"")
    response = await http.get(result["url"])
    assert (response.status_code, response.content) == (200, b"")
    assert response.headers["content-length"] == "0"


async def test_storages_coexist(
    tmp_path: Path, route_server: RouteServer, http: httpx.AsyncClient
) -> None:
    options = {"secret": TEST_SECRET, "public_base_url": route_server.base_url, "mount": False}
    disk = FsspecStorage(str(tmp_path / "a"), **options)
    memory = FsspecStorage("memory://coexist/root", **options)
    named = FsspecStorage(str(tmp_path / "b"), name="second-disk", **options)
    assert len({disk.name, memory.name, named.name}) == 3
    for storage, body in ((disk, b"disk"), (memory, b"memory"), (named, b"named")):
        await storage.upload_file("same/key", body)
    for storage, body in ((disk, b"disk"), (memory, b"memory"), (named, b"named")):
        assert (await http.get(await storage.get_read_url("same/key"))).content == body
    with pytest.raises(ConfigurationError):
        FsspecStorage(str(tmp_path / "c"), name="second-disk", **options)
    await memory.delete_file("same/key")


async def test_relative_urls_honour_root_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    monkeypatch.setenv("CHAINLIT_ROOT_PATH", "/chat/")
    monkeypatch.delenv("CHAINLIT_ORM_STORAGE_PUBLIC_BASE_URL", raising=False)
    storage = FsspecStorage(str(tmp_path / "files"), secret=TEST_SECRET, mount=False)
    url = (await storage.upload_file("k.txt", b"rooted", mime="text/plain"))["url"]
    assert url.startswith(f"/chat{ROUTE_PATH}/{storage.name}/k.txt?expires=")
    app = FastAPI()
    mount_storage_route(app, storage, path_prefix="/chat")
    mount_storage_route(app, storage, path_prefix="/chat")  # idempotent
    assert sum(getattr(r, "name", "") == "chainlit_orm_files" for r in app.router.routes) == 1
    with serve_app(app) as base:
        response = await http.get(base + url)
    assert (response.status_code, response.content) == (200, b"rooted")


async def test_route_goes_before_chainlit_catch_all(
    route_server: RouteServer, http: httpx.AsyncClient
) -> None:
    paths = [getattr(r, "path", "") for r in route_server.app.router.routes]
    assert paths.index(f"{ROUTE_PATH}/{{name}}/{{key:path}}") < paths.index("/{full_path:path}")
    response = await http.get(f"{route_server.base_url}/anything/else")
    assert response.json() == {"catch_all": "anything/else"}
