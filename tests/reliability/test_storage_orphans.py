"""No orphan, no element whose URL opens nothing: ``create_element`` on every backend.

* A refused element is refused before a byte is stored (every value of its row is checked
  first), or, when only the database can refuse it, its object and sidecar are removed.
* Chainlit's own storage clients report a failed upload by returning ``{}`` (``S3StorageClient``,
  ``AzureStorageClient``) or by raising a bare ``Exception`` (``AzureBlobStorageClient``): either
  is a typed ``StorageError``, with no row and no object. They fail for real here: a bucket that
  does not exist, a black-holed endpoint, a wrong account key, a missing container.

Every case ends with a direct listing of the storage (bucket, container or root, sidecars
included) compared with exactly what must be there.
"""

from __future__ import annotations

import asyncio
import datetime
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainlit_orm.errors import (
    ChainlitORMError,
    InvalidInputError,
    StorageError,
)
from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.storage import FsspecStorage
from tests.reliability.faultproxy import fault_proxy
from tests.reliability.storage_env import (
    AZURITE_KEY,
    MOTO_PORT,
    REFUSED_NAME,
    WRONG_AZURE_KEY,
    Db,
    Site,
    azure_container,
    chainlit_azure_blob,
    chainlit_azure_datalake,
    chainlit_ctx,
    db,
    file_element,
    new_thread,
    object_key,
    refusing_db,
    site,
)

__all__ = ["chainlit_ctx", "db", "refusing_db"]  # fixtures

STORAGE_KINDS = ["memory", "local", "s3", "azure", "chainlit-s3", "chainlit-azure-blob"]


def stored_paths(kind: str, keys: list[str]) -> list[str]:
    """What a listing of ``kind`` holds for these object keys: the object, plus the sidecar
    record on memory/local; under the ``root/`` prefix for FsspecStorage on S3/Azure."""
    if kind in ("memory", "local"):
        return sorted([*keys, *(f".chainlit-orm-meta/{k}.json" for k in keys)])
    if kind in ("s3", "azure"):
        return sorted(f"root/{k}" for k in keys)
    return sorted(keys)


def refused_element(thread_id: str, content: bytes = b"refused bytes") -> Any:
    """An element only the database refuses (the trigger of ``storage_env._install_refusal``)."""
    return file_element(thread_id, REFUSED_NAME, content)


async def element_ids(layer: ChainlitLayer, thread_id: str) -> list[str]:
    thread = await layer.get_thread(thread_id)
    assert thread is not None
    return sorted(e["id"] for e in thread["elements"] or [])


@pytest.fixture(params=STORAGE_KINDS)
def storage_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- the database refuses the row after the upload ---------------------------------------------


async def test_a_row_the_database_refuses_leaves_no_object(
    refusing_db: Db, storage_kind: str, tmp_path: Path, chainlit_ctx: Any
) -> None:
    async with site(storage_kind, tmp_path) as where:
        layer = await refusing_db.layer(where.client())
        try:
            thread_id = await new_thread(layer)
            refused = refused_element(thread_id)
            with pytest.raises(ChainlitORMError) as caught:
                await layer.create_element(refused)
            assert not isinstance(caught.value, StorageError)  # the database's refusal
            assert getattr(caught.value, "__notes__", []) == []  # clean-up succeeded
            assert await layer.get_element(thread_id, refused.id) is None
            assert where.list() == []

            kept = file_element(thread_id, "kept.bin", b"kept bytes")
            await layer.create_element(kept)
            assert await element_ids(layer, thread_id) == [kept.id]
            assert where.list() == stored_paths(storage_kind, [object_key(kept)])
        finally:
            await layer.close()


async def test_a_resent_element_that_is_refused_keeps_the_object_its_row_serves(
    refusing_db: Db, tmp_path: Path, chainlit_ctx: Any
) -> None:
    """Chainlit re-sends updatable elements with the same id, so the same object key. When the
    re-send is refused, the earlier row still refers to that object: removing it would leave a
    row whose file is gone. The object stays (with the bytes of the refused upload, which
    replaced it in place)."""
    async with site("memory", tmp_path) as where:
        storage = where.client()
        assert isinstance(storage, FsspecStorage)
        layer = await refusing_db.layer(storage)
        try:
            thread_id = await new_thread(layer)
            first = file_element(thread_id, "first.bin", b"first bytes")
            await layer.create_element(first)
            again = refused_element(thread_id, b"second bytes")
            again.id = first.id
            with pytest.raises(ChainlitORMError):
                await layer.create_element(again)
            row = await layer.get_element(thread_id, first.id)
            assert row is not None and row["name"] == "first.bin"
            assert row["objectKey"] == object_key(first)
            assert where.list() == stored_paths("memory", [object_key(first)])
            assert await storage.read_file(object_key(first)) == b"second bytes"
        finally:
            await layer.close()


# -- refused before a byte is stored -------------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


INVALID: dict[str, Callable[[Any], None]] = {
    "props holding a datetime": lambda e: setattr(
        e, "props", {"at": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)}
    ),
    "props holding NaN": lambda e: setattr(e, "props", {"x": math.nan}),
    "props holding infinity": lambda e: setattr(e, "props", {"x": [math.inf]}),
    "props nested 5,000 deep": lambda e: setattr(e, "props", _nested(5000)),
    "props that is a list": lambda e: setattr(e, "props", [1, 2]),
    "props key with NUL": lambda e: setattr(e, "props", {"a\x00b": 1}),
    "playerConfig that is a string": lambda e: setattr(e, "player_config", "loop"),
    "name with a lone surrogate": lambda e: setattr(e, "name", "a\ud800.bin"),
    "name that is a number": lambda e: setattr(e, "name", 7),
    "name with NUL": lambda e: setattr(e, "name", "a\x00.bin"),
    "text content with a lone surrogate": lambda e: setattr(e, "content", "x\udfff"),
    "content that is a number": lambda e: setattr(e, "content", 5),
    "page beyond 32 bits": lambda e: setattr(e, "page", 2**40),
    "page that is text": lambda e: setattr(e, "page", "3"),
    "autoPlay that is text": lambda e: setattr(e, "auto_play", "yes"),
    "language that is a number": lambda e: setattr(e, "language", 5),
    "size that is a dict": lambda e: setattr(e, "size", {"w": 1}),
    "mime with CR/LF": lambda e: setattr(e, "mime", "text/plain\r\nX-Evil: 1"),
    "mime that is not ASCII": lambda e: setattr(e, "mime", "text/plaïn"),
}


@pytest.mark.parametrize("storage_kind", ["memory", "s3", "chainlit-s3"])
async def test_invalid_elements_are_refused_before_anything_is_stored(
    db: Db, storage_kind: str, tmp_path: Path, chainlit_ctx: Any
) -> None:
    async with site(storage_kind, tmp_path) as where:
        layer = await db.layer(where.client())
        try:
            thread_id = await new_thread(layer)
            for case, spoil in INVALID.items():
                element = file_element(thread_id, "spoiled.bin", b"bytes")
                spoil(element)
                with pytest.raises(InvalidInputError):
                    await layer.create_element(element)
                assert await layer.get_element(thread_id, element.id) is None, case
                assert where.list() == [], case
        finally:
            await layer.close()


_SAFE_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**31), max_value=2**31 - 1)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
              max_size=12),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(alphabet="abcxyz", min_size=1, max_size=4), inner, max_size=3),
    max_leaves=8,
)
_POISON = st.sampled_from(
    [math.nan, math.inf, datetime.date(2024, 1, 1), b"bytes", {1, 2}, "x\ud800", "n\x00l"]
)
_PROPS = st.one_of(
    st.none(),
    st.dictionaries(st.text(alphabet="abcxyz", min_size=1, max_size=4), _SAFE_JSON, max_size=4),
    st.dictionaries(st.just("p"), _POISON, min_size=1),
)
_NAMES = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20),
    st.sampled_from(["a\ud800.bin", "\udfff", "nul\x00.txt"]),
)
_CONTENT = st.one_of(st.binary(max_size=2048), st.text(max_size=200),
                     st.sampled_from(["lone \ud800 surrogate"]))


@pytest.mark.parametrize("storage_kind", ["memory"])
async def test_every_element_is_stored_whole_or_not_at_all(
    db: Db, storage_kind: str, tmp_path: Path, chainlit_ctx: Any
) -> None:
    """Property: ``create_element`` either stores the row and the exact bytes, or raises a
    typed error with no row and nothing in storage."""
    async with site(storage_kind, tmp_path) as where:
        storage = where.client()
        assert isinstance(storage, FsspecStorage)
        layer = await db.layer(storage)
        thread_id = await new_thread(layer)
        stored: list[str] = []

        async def attempt(name: str, props: Any, content: bytes | str) -> None:
            element = file_element(thread_id, "x", b"replaced below")
            element.name, element.props, element.content = name, props, content
            try:
                await layer.create_element(element)
            except InvalidInputError:  # any other error fails the property
                assert await layer.get_element(thread_id, element.id) is None
            else:
                row = await layer.get_element(thread_id, element.id)
                assert row is not None
                assert (row["name"], row["props"]) == (name, props)
                raw = content.encode() if isinstance(content, str) else content
                assert await storage.read_file(object_key(element)) == raw
                stored.append(object_key(element))
            assert where.list() == stored_paths(storage_kind, stored)

        loop = asyncio.get_running_loop()

        # Hypothesis drives a synchronous test, so it runs in a worker thread and hands each
        # example to this loop, where the layer and its connections live.
        @settings(suppress_health_check=[HealthCheck.too_slow])
        @given(name=_NAMES, props=_PROPS, content=_CONTENT)
        def check(name: str, props: Any, content: bytes | str) -> None:
            asyncio.run_coroutine_threadsafe(attempt(name, props, content), loop).result()

        try:
            await asyncio.to_thread(check)
        finally:
            await layer.close()


# -- Chainlit's storage clients failing for real ------------------------------------------------


async def _refused_by_storage(
    layer: ChainlitLayer, thread_id: str
) -> tuple[StorageError, Any]:
    element = file_element(thread_id, "doc.bin", b"document bytes")
    with pytest.raises(StorageError) as caught:
        await layer.create_element(element)
    assert caught.value.detail == object_key(element)
    assert await layer.get_element(thread_id, element.id) is None
    assert await element_ids(layer, thread_id) == []
    return caught.value, element


async def test_chainlit_s3_client_on_a_missing_bucket(db: Db, chainlit_ctx: Any) -> None:
    from chainlit.data.storage_clients.s3 import S3StorageClient

    from tests.reliability.storage_env import MOTO_ENDPOINT, REGION, _s3_admin

    missing = "clorm-rel-missing-bucket"
    client = S3StorageClient(
        missing, endpoint_url=MOTO_ENDPOINT, region_name=REGION,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    layer = await db.layer(client)
    try:
        error, _ = await _refused_by_storage(layer, await new_thread(layer))
        assert "S3StorageClient.upload_file returned {}" in str(error)
        assert missing not in [b["Name"] for b in _s3_admin().list_buckets()["Buckets"]]
    finally:
        await layer.close()


async def test_chainlit_s3_client_on_a_black_holed_endpoint(
    db: Db, tmp_path: Path, chainlit_ctx: Any
) -> None:
    quick = Config(connect_timeout=1, read_timeout=1, retries={"total_max_attempts": 1})
    with fault_proxy("127.0.0.1", MOTO_PORT) as proxy:
        async with site("chainlit-s3", tmp_path, endpoint=f"http://{proxy.address}") as where:
            layer = await db.layer(where.client(config=quick))
            try:
                thread_id = await new_thread(layer)
                proxy.set_mode("blackhole")
                error, _ = await _refused_by_storage(layer, thread_id)
                assert "returned {}" in str(error)
                # Chainlit's delete_file could not remove it either and says so with False
                assert error.__notes__ == [
                    f"the uploaded object {error.detail!r} may remain in storage: "
                    "S3StorageClient.delete_file returned False"
                ]
                proxy.cut_all()
                proxy.set_mode("pass")
                assert where.list() == []
            finally:
                await layer.close()


@pytest.mark.parametrize("failure", ["wrong key", "missing container"])
async def test_chainlit_azure_blob_client_raising_a_bare_exception(
    db: Db, failure: str, chainlit_ctx: Any
) -> None:
    with azure_container() as (admin, container):
        client = chainlit_azure_blob(
            container if failure == "wrong key" else f"{container}-missing",
            key=WRONG_AZURE_KEY if failure == "wrong key" else AZURITE_KEY,
        )
        layer = await db.layer(client)
        try:
            error, _ = await _refused_by_storage(layer, await new_thread(layer))
            assert type(error.__cause__) is Exception  # what Chainlit's client raised
            assert "AzureBlobStorageClient.upload_file raised Exception" in str(error)
            assert WRONG_AZURE_KEY not in str(error)
            assert [b.name for b in admin.get_container_client(container).list_blobs()] == []
            assert f"{container}-missing" not in [c.name for c in admin.list_containers()]
        finally:
            await layer.close()


async def test_chainlit_azure_datalake_client_returning_nothing(
    db: Db, chainlit_ctx: Any
) -> None:
    with azure_container() as (admin, container):
        client = chainlit_azure_datalake(container, key=WRONG_AZURE_KEY)
        layer = await db.layer(client)
        try:
            error, _ = await _refused_by_storage(layer, await new_thread(layer))
            assert "AzureStorageClient.upload_file returned {}" in str(error)
            assert [b.name for b in admin.get_container_client(container).list_blobs()] == []
        finally:
            await layer.close()


@pytest.mark.parametrize("kind", ["chainlit-s3", "chainlit-azure-blob"])
async def test_chainlit_clients_that_work_store_the_element(
    db: Db, kind: str, tmp_path: Path, chainlit_ctx: Any
) -> None:
    """The control: the same clients, configured right, store the row and the exact bytes."""
    async with site(kind, tmp_path) as where:
        layer = await db.layer(where.client())
        try:
            thread_id = await new_thread(layer)
            element = file_element(thread_id, "doc.bin", b"document bytes")
            await layer.create_element(element)
            assert await element_ids(layer, thread_id) == [element.id]
            assert where.list() == [object_key(element)]
            assert _read_back(where, kind, object_key(element)) == b"document bytes"
        finally:
            await layer.close()


def _read_back(where: Site, kind: str, key: str) -> bytes:
    client: Any = where.clients[0]
    if kind == "chainlit-s3":
        body: bytes = client.client.get_object(Bucket=client.bucket, Key=key)["Body"].read()
        return body
    from azure.storage.blob import BlobServiceClient

    from tests.storage.conftest import AZURITE_CONN

    with BlobServiceClient.from_connection_string(AZURITE_CONN) as admin:
        data: bytes = (
            admin.get_blob_client(client.container_name, key).download_blob().readall()
        )
        return data


