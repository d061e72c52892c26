"""Access probes against the signed local route and the storage API (local disk and memory).

The route runs in a real uvicorn (``tests.storage.conftest.serve_app``) with a catch-all standing
in for Chainlit's UI; requests come from httpx, or from a raw socket where httpx would normalise
the path. What must hold: a forged, expired or malformed signature is a 403, a key that could
climb out of the root is refused before any I/O, an object deleted while it is being fetched is
a 404 or its whole body, and nothing ever answers 500.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from chainlit_orm.errors import InvalidIdentifierError
from chainlit_orm.storage import FsspecStorage, _signing, mount_storage_route
from chainlit_orm.storage.route import ROUTE_PATH
from tests.storage.conftest import TEST_SECRET, serve_app

BIG = bytes(range(256)) * (4096 * 3 + 7)  # a little over 3 MiB: four 1 MiB chunks


@dataclass
class Served:
    """A storage whose read URLs a real server answers, and where its bytes live."""

    storage: FsspecStorage
    base_url: str
    outside: Path  # a file next to the root that must never be served


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = FastAPI()

    @app.get("/{full_path:path}")
    async def catch_all(full_path: str) -> dict[str, str]:
        return {"catch_all": full_path}

    mount_storage_route(app)
    with serve_app(app) as base_url:
        yield base_url


@pytest.fixture(params=["memory", "local"])
async def served(
    request: pytest.FixtureRequest, server: str, tmp_path: Path
) -> AsyncIterator[Served]:
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"outside the storage root")
    if request.param == "local":
        url = str(tmp_path / "root")
    else:
        url = f"memory://clorm-access-{tmp_path.name}"
    storage = FsspecStorage(url, secret=TEST_SECRET, public_base_url=server, mount=False)
    try:
        yield Served(storage, server, outside)
    finally:
        await storage.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def _parts(url: str) -> tuple[str, str, str]:
    """(path, expires, sig) of a signed read URL."""
    split = urlsplit(url)
    query = parse_qs(split.query)
    return split.path, query["expires"][0], query["sig"][0]


async def _raw_get(base_url: str, target: str) -> int:
    """GET ``target`` sent byte for byte (httpx would remove ``..`` segments); the status."""
    host, port = urlsplit(base_url).netloc.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


# -- signatures ---------------------------------------------------------------------------------


MALFORMED_EXPIRES = [
    "",
    "abc",
    "%C2%B2",  # "²": str.isdigit() says yes, int() says no (it answered 500)
    "%EF%BC%91%EF%BC%92%EF%BC%93",  # fullwidth "１２３"
    "%D9%A1%D9%A2",  # Arabic-Indic digits
    "-1",
    "+9999999999",
    "1e10",
    "0x10",
    "%20123",
    "9" * 13,
    "%00",
    "12.5",
]


async def test_forged_expired_and_malformed_signatures_are_403(
    served: Served, http: httpx.AsyncClient
) -> None:
    storage = served.storage
    await storage.upload_file("a/doc.txt", b"the document")
    await storage.upload_file("a/other.txt", b"another document")
    good = await storage.get_read_url("a/doc.txt")
    assert (await http.get(good)).content == b"the document"
    path, expires, sig = _parts(good)
    _, other_expires, other_sig = _parts(await storage.get_read_url("a/other.txt"))
    past = int(time.time()) - 10
    probes = {
        "forged": f"expires={expires}&sig={'A' * 43}",
        "empty signature": f"expires={expires}&sig=",
        "non-ASCII signature": f"expires={expires}&sig=%C3%A9{sig[1:]}",
        "very long signature": f"expires={expires}&sig={sig * 50}",
        "another key's signature": f"expires={other_expires}&sig={other_sig}",
        "expiry moved": f"expires={int(expires) + 1}&sig={sig}",
        "expired": f"expires={past}&sig="
        + _signing.sign(storage._signing_key, storage.name, "a/doc.txt", past),
        "no query": "",
        "no signature": f"expires={expires}",
        "no expiry": f"sig={sig}",
        **{f"expires={raw!r}": f"expires={raw}&sig={sig}" for raw in MALFORMED_EXPIRES},
    }
    for probe, query in probes.items():
        response = await http.get(f"{served.base_url}{path}?{query}")
        assert (response.status_code, response.text) == (403, "Forbidden"), probe
    # a signature made with another secret for the same name and key
    other_key = _signing.derive_signing_key(b"another-secret-0123456789")
    forged = _signing.sign(other_key, storage.name, "a/doc.txt", int(expires))
    response = await http.get(f"{served.base_url}{path}?expires={expires}&sig={forged}")
    assert response.status_code == 403


def test_signature_check_refuses_every_non_ascii_digit() -> None:
    key = _signing.derive_signing_key(TEST_SECRET.encode())
    for expires in ("²", "١٢", "１２３", "³" * 12, "", "1" * 13):
        assert _signing.verify(key, "n", "k", expires, "sig", time.time()) is False


async def test_unicode_digits_in_a_range_are_ignored(
    served: Served, http: httpx.AsyncClient
) -> None:
    await served.storage.upload_file("r.bin", b"0123456789")
    url = await served.storage.get_read_url("r.bin")
    for header in ("bytes=\u00b2-", "bytes=-\u0663", "bytes=\uff11-\uff12"):
        response = await http.get(url, headers={"Range": header.encode("utf-8")})
        assert (response.status_code, response.content) == (200, b"0123456789"), header


# -- traversal ----------------------------------------------------------------------------------


TRAVERSALS = [
    "../secret.txt",
    "../../secret.txt",
    "a/../../secret.txt",
    "%2e%2e/secret.txt",
    "a/%2e%2e/%2e%2e/secret.txt",
    "..%2fsecret.txt",
    "..%5csecret.txt",
    "a%5c..%5c..%5csecret.txt",
    "%2fetc%2fpasswd",
    "/etc/passwd",
    "x%00y",
    ".chainlit-orm-meta/doc.txt.json",
]


async def test_traversal_in_route_keys_never_reaches_a_file(served: Served) -> None:
    storage = served.storage
    await storage.upload_file("doc.txt", b"inside")
    prefix = f"{ROUTE_PATH}/{storage.name}/"
    for key in TRAVERSALS:
        expires = int(time.time()) + 60
        # signed as the route will see the key, so only the key check stands in the way
        decoded = key.replace("%2e", ".").replace("%2f", "/").replace("%5c", "\\")
        decoded = decoded.replace("%00", "\x00")
        sig = _signing.sign(storage._signing_key, storage.name, decoded, expires)
        status = await _raw_get(served.base_url, f"{prefix}{key}?expires={expires}&sig={sig}")
        assert status in (400, 404), (key, status)
    assert served.outside.read_bytes() == b"outside the storage root"


async def test_traversal_keys_are_refused_by_every_storage_call(served: Served) -> None:
    storage = served.storage
    for key in ("../secret.txt", "a/../../secret.txt", "/etc/passwd", "a\\..\\x", "a//b",
                ".chainlit-orm-meta/x.json", "nul\x00", ""):
        for call in (
            storage.upload_file(key, b"evil"),
            storage.read_file(key),
            storage.discard_file(key),
            storage.delete_file(key),
            storage.get_read_url(key),
        ):
            with pytest.raises(InvalidIdentifierError):
                await call
    assert served.outside.read_bytes() == b"outside the storage root"
    assert sorted(p.name for p in served.outside.parent.iterdir()) in (
        ["secret.txt"],
        ["root", "secret.txt"],
    )


# -- deletes racing reads -----------------------------------------------------------------------


async def test_an_object_deleted_after_signing_is_404(
    served: Served, http: httpx.AsyncClient
) -> None:
    await served.storage.upload_file("gone.bin", b"soon gone")
    url = await served.storage.get_read_url("gone.bin")
    assert await served.storage.delete_file("gone.bin") is True
    response = await http.get(url)
    assert (response.status_code, response.text) == (404, "Not Found")


async def test_an_object_deleted_once_opened_is_served_whole(
    served: Served, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete lands between the route's open and its first read: the whole object is still
    served from the open handle (it used to be a 500 with a traceback)."""
    storage = served.storage
    await storage.upload_file("race.bin", BIG)
    url = await storage.get_read_url("race.bin")
    real_open = FsspecStorage.open_object
    deleted: list[bool] = []

    async def open_then_delete(self: FsspecStorage, key: str) -> Any:
        opened = await real_open(self, key)
        deleted.append(await self.delete_file(key))
        return opened

    monkeypatch.setattr(FsspecStorage, "open_object", open_then_delete)
    response = await http.get(url)
    assert deleted == [True]
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(BIG))
    assert response.content == BIG
    monkeypatch.undo()
    assert (await http.get(url)).status_code == 404


async def test_deletes_racing_reads_answer_whole_bodies_or_404(
    served: Served, http: httpx.AsyncClient
) -> None:
    storage = served.storage
    statuses: set[int] = set()
    for round_ in range(15):
        key = f"race/{round_}.bin"
        await storage.upload_file(key, BIG)
        url = await storage.get_read_url(key)

        async def fetch(url: str = url) -> httpx.Response:
            return await http.get(url)

        results = await asyncio.gather(
            fetch(), fetch(), storage.delete_file(key), fetch(), http.head(url)
        )
        assert results[2] is True
        for response in (results[0], results[1], results[3]):
            assert isinstance(response, httpx.Response)
            statuses.add(response.status_code)
            assert response.status_code in (200, 404), response.status_code
            if response.status_code == 200:
                assert response.content == BIG
        assert results[4].status_code in (200, 404)
    assert statuses <= {200, 404}


async def test_a_storage_failure_in_the_route_is_503_not_500(
    served: Served, http: httpx.AsyncClient
) -> None:
    storage = served.storage
    await storage.upload_file("meta.bin", b"bytes")
    url = await storage.get_read_url("meta.bin")
    # a corrupt metadata record: the route cannot know the Content-Type it must send
    storage._sync_fs.pipe_file(f"{storage.root}/.chainlit-orm-meta/meta.bin.json", b"{not json")
    response = await http.get(url)
    assert (response.status_code, response.text) == (503, "Service Unavailable")



