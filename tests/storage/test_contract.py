"""The storage contract, written once and run on every backend (memory, local, S3, Azure).

Every read URL is opened with a plain HTTP client and the bytes compared exactly: against moto's S3
server, Azurite, and the package's route under a real uvicorn.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any

import httpx
import pytest

from chainlit_orm.errors import (
    ConflictError,
    InvalidIdentifierError,
    InvalidInputError,
    NotFoundError,
)
from chainlit_orm.storage import DiscardableStorage, ReadableStorage
from tests.storage.conftest import BackendCase

BIG_ISH = bytes(range(256)) * 5000  # 1.2 MiB: more than one read chunk

TRAVERSAL_KEYS = [
    "../escape.txt",
    "../../escape.txt",
    "a/../../escape.txt",
    "a/../escape.txt",
    "./escape.txt",
    "a/./b.txt",
    "/etc/escape.txt",
    "/escape.txt",
    "..",
    ".",
    "a/..",
    "..\\escape.txt",
    "a\\..\\..\\escape.txt",
    "C:\\escape.txt",
    "a//b.txt",
    "a/b/",
    "esc\x00ape.txt",
    "esc\nape.txt",
    "esc\rape.txt",
    "esc\tape.txt",
    "esc\x7fape.txt",
    "",
    ".chainlit-orm-meta/secret.json",
    "x" * 1025,
]


async def resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def fetch(http: httpx.AsyncClient, url: str) -> httpx.Response:
    return await http.get(url)


@pytest.mark.timeout(120)
class TestStorageContract:
    async def test_bytes_upload_roundtrip(self, case: BackendCase, http: httpx.AsyncClient) -> None:
        storage = case.make()
        result = await storage.upload_file(
            "u1/e1/report.bin", b"\x00\x01binary\xff", mime="image/png"
        )
        assert set(result) == {"object_key", "url"}
        assert result["object_key"] == "u1/e1/report.bin"
        response = await fetch(http, result["url"])
        assert response.status_code == 200
        assert response.content == b"\x00\x01binary\xff"
        assert response.headers["content-type"] == "image/png"
        assert "content-disposition" not in response.headers
        assert await resolve(case.raw_exists("u1/e1/report.bin")) is True

    async def test_str_upload_is_utf8(self, case: BackendCase, http: httpx.AsyncClient) -> None:
        storage = case.make()
        result = await storage.upload_file("t/notes.txt", "héllo wörld ✓", mime="text/plain")
        response = await fetch(http, result["url"])
        assert response.content == "héllo wörld ✓".encode()
        assert response.headers["content-type"] == "text/plain"

    async def test_default_mime(self, case: BackendCase, http: httpx.AsyncClient) -> None:
        storage = case.make()
        result = await storage.upload_file("t/blob", b"abc")
        response = await fetch(http, result["url"])
        assert response.headers["content-type"] == "application/octet-stream"

    async def test_overwrite_true_replaces(
        self, case: BackendCase, http: httpx.AsyncClient
    ) -> None:
        storage = case.make()
        await storage.upload_file("o/k", b"first", mime="text/plain")
        result = await storage.upload_file("o/k", b"second", mime="application/json")
        response = await fetch(http, await storage.get_read_url("o/k"))
        assert response.content == b"second"
        assert response.headers["content-type"] == "application/json"
        assert result["object_key"] == "o/k"

    async def test_overwrite_false_refuses_without_writing(
        self, case: BackendCase, http: httpx.AsyncClient
    ) -> None:
        storage = case.make()
        await storage.upload_file(
            "o/k", b"original", mime="text/plain", content_disposition='inline; filename="a.txt"'
        )
        with pytest.raises(ConflictError) as caught:
            await storage.upload_file(
                "o/k",
                b"intruder",
                mime="text/html",
                overwrite=False,
                content_disposition='attachment; filename="b.html"',
            )
        assert caught.value.detail == "o/k"
        assert isinstance(caught.value.__cause__, FileExistsError)
        response = await fetch(http, await storage.get_read_url("o/k"))
        assert response.content == b"original"
        assert response.headers["content-type"] == "text/plain"
        assert response.headers["content-disposition"] == 'inline; filename="a.txt"'

    async def test_overwrite_false_on_new_key_writes(
        self, case: BackendCase, http: httpx.AsyncClient
    ) -> None:
        storage = case.make()
        result = await storage.upload_file("o/new", b"fresh", overwrite=False)
        assert (await fetch(http, result["url"])).content == b"fresh"

    async def test_content_disposition_ascii_kept(
        self, case: BackendCase, http: httpx.AsyncClient
    ) -> None:
        storage = case.make()
        header = 'attachment; filename="report 2024.pdf"'
        result = await storage.upload_file(
            "d/r.pdf", b"%PDF", mime="application/pdf", content_disposition=header
        )
        response = await fetch(http, result["url"])
        assert response.headers["content-disposition"] == header
        assert response.headers["content-type"] == "application/pdf"

    async def test_non_ascii_file_name(self, case: BackendCase, http: httpx.AsyncClient) -> None:
        storage = case.make()
        key = "u/e/résumé 東京.pdf"
        result = await storage.upload_file(
            key,
            b"%PDF-1.7",
            mime="application/pdf",
            content_disposition='attachment; filename="résumé 東京.pdf"',
        )
        assert result["object_key"] == key
        response = await fetch(http, result["url"])
        assert response.content == b"%PDF-1.7"
        assert response.headers["content-disposition"] == (
            'attachment; filename="resume __.pdf"; '
            "filename*=UTF-8''r%C3%A9sum%C3%A9%20%E6%9D%B1%E4%BA%AC.pdf"
        )
        assert await resolve(case.raw_exists(key)) is True

    @pytest.mark.parametrize(
        "header",
        ['attachment; filename="a.txt"\r\nSet-Cookie: x=1', "inline\n", "attachment;\rfilename=x"],
    )
    async def test_crlf_in_content_disposition_refused(
        self, case: BackendCase, header: str
    ) -> None:
        storage = case.make()
        with pytest.raises(InvalidInputError):
            await storage.upload_file("h/k", b"x", content_disposition=header)
        assert await resolve(case.raw_exists("h/k")) is False

    async def test_crlf_in_mime_refused(self, case: BackendCase) -> None:
        storage = case.make()
        with pytest.raises(InvalidInputError):
            await storage.upload_file("h/k", b"x", mime="text/plain\r\nX-Evil: 1")
        assert await resolve(case.raw_exists("h/k")) is False

    async def test_delete(self, case: BackendCase, http: httpx.AsyncClient) -> None:
        storage = case.make()
        await storage.upload_file("del/me.txt", b"bye")
        url = await storage.get_read_url("del/me.txt")
        assert await storage.delete_file("del/me.txt") is True
        assert await resolve(case.raw_exists("del/me.txt")) is False
        assert await storage.delete_file("del/me.txt") is False
        response = await fetch(http, url)
        assert response.status_code == 404

    async def test_missing_key(self, case: BackendCase, http: httpx.AsyncClient) -> None:
        storage = case.make()
        assert await storage.delete_file("never/was.txt") is False
        response = await fetch(http, await storage.get_read_url("never/was.txt"))
        assert response.status_code == 404

    async def test_prefix_is_not_an_object(self, case: BackendCase) -> None:
        storage = case.make()
        await storage.upload_file("dir/inner.txt", b"x")
        assert await storage.delete_file("dir") is False
        assert await resolve(case.raw_exists("dir/inner.txt")) is True

    async def test_traversal_attempts_refused(self, case: BackendCase) -> None:
        storage = case.make()
        for key in TRAVERSAL_KEYS:
            with pytest.raises(InvalidIdentifierError):
                await storage.upload_file(key, b"pwned")
            with pytest.raises(InvalidIdentifierError):
                await storage.get_read_url(key)
            with pytest.raises(InvalidIdentifierError):
                await storage.delete_file(key)
        for key in (None, 42, b"bytes-key"):
            with pytest.raises(InvalidIdentifierError):
                await storage.upload_file(key, b"pwned")  # type: ignore[arg-type]
        assert await resolve(case.outside_root()) == []

    async def test_20_mb_object(self, case: BackendCase, http: httpx.AsyncClient) -> None:
        storage = case.make()
        payload = os.urandom(20 * 1024 * 1024)
        result = await storage.upload_file("big/20mb.bin", payload)
        response = await fetch(http, result["url"])
        assert response.status_code == 200
        assert len(response.content) == len(payload)
        assert response.content == payload

    async def test_50_concurrent_uploads(self, case: BackendCase, http: httpx.AsyncClient) -> None:
        storage = case.make()
        payloads = {f"c/{i:02d}.bin": os.urandom(1024 + i) for i in range(50)}
        results = await asyncio.gather(*(storage.upload_file(k, v) for k, v in payloads.items()))
        assert [r["object_key"] for r in results] == list(payloads)
        bodies = await asyncio.gather(*(fetch(http, r["url"]) for r in results))
        assert [b.content for b in bodies] == list(payloads.values())

    async def test_read_url_is_reusable_and_stable_content(
        self, case: BackendCase, http: httpx.AsyncClient
    ) -> None:
        storage = case.make()
        await storage.upload_file("r/k.txt", b"same")
        url = await storage.get_read_url("r/k.txt")
        first, second = await fetch(http, url), await fetch(http, url)
        assert (first.content, second.content) == (b"same", b"same")

    async def test_close_is_idempotent_and_storage_reopens(
        self, case: BackendCase, http: httpx.AsyncClient
    ) -> None:
        storage = case.make()
        await storage.upload_file("cl/k", b"before")
        await storage.close()
        await storage.close()
        result = await storage.upload_file("cl/k2", b"after")
        assert (await fetch(http, result["url"])).content == b"after"
        await storage.close()

    async def test_read_file_returns_every_byte(self, case: BackendCase) -> None:
        storage = case.make()
        assert isinstance(storage, ReadableStorage)
        await storage.upload_file("rd/a.bin", BIG_ISH)
        await storage.upload_file("rd/text.txt", "héllo")
        assert await storage.read_file("rd/a.bin") == BIG_ISH
        assert await storage.read_file("rd/text.txt") == "héllo".encode()
        for absent in ("rd/missing.bin", "rd"):  # a prefix is not an object
            with pytest.raises(NotFoundError) as caught:
                await storage.read_file(absent)
            assert caught.value.detail == absent

    async def test_discard_file_removes_object_and_sidecar_and_ignores_absence(
        self, case: BackendCase
    ) -> None:
        storage = case.make()
        assert isinstance(storage, DiscardableStorage)
        await storage.upload_file("dc/a.bin", b"bytes", content_disposition="inline")
        assert await resolve(case.raw_exists("dc/a.bin")) is True
        assert await storage.discard_file("dc/a.bin") is None
        assert await resolve(case.raw_exists("dc/a.bin")) is False
        assert await storage.discard_file("dc/a.bin") is None  # absent: not an error
        assert await storage.delete_file("dc/a.bin") is False
        if case.served_by_route:
            fs = storage._sync_fs
            assert not fs.exists(f"{storage.root}/.chainlit-orm-meta/dc/a.bin.json")
        assert await resolve(case.outside_root()) == []


async def test_list_modified_gives_each_objects_last_write_time(case: BackendCase) -> None:
    """``AgedStorage`` (a SQL purge's orphan sweep reads ages with it): every object under the
    prefix, sidecars left out, each with an aware UTC time of its last write."""
    from datetime import UTC, datetime, timedelta

    from chainlit_orm.storage.protocols import AgedStorage

    storage = case.make()
    assert isinstance(storage, AgedStorage)
    before = datetime.now(UTC) - timedelta(seconds=5)
    for key in ("threads/t1/files/a", "threads/t1/files/b", "threads/t2/files/c", "other/x"):
        await storage.upload_file(key, b"bytes", "text/plain")
    found = await storage.list_modified("threads")
    assert sorted(found) == ["threads/t1/files/a", "threads/t1/files/b", "threads/t2/files/c"]
    after = datetime.now(UTC) + timedelta(seconds=5)
    for moment in found.values():
        assert moment is not None and moment.tzinfo is not None
        assert before <= moment <= after
    assert await storage.list_modified("nothing") == {}
