"""Shared set-up of the storage reliability tests: real layers, real storages, direct listings.

Everything is real: a layer on each database backend (a SQLite file, PostgreSQL, MariaDB, DynamoDB
on moto's server), element storage on memory, a local disk, moto's S3 server and Azurite, and
Chainlit's own storage clients against moto and Azurite. A storage is always inspected directly
(a listing of its bucket, container or root, sidecar records included), never through the layer
under test, so "no object left behind" is checked where the object would be.

Test modules import the fixtures they use from here (``db``, ``chainlit_ctx``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import chainlit as cl
import pytest
from chainlit.context import init_http_context
from chainlit.data.storage_clients.base import BaseStorageClient

from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.storage import FsspecStorage
from tests.contract.conftest import CONTRACT_BACKENDS, ContractBackend
from tests.storage.conftest import (
    AZURITE_ACCOUNT,
    AZURITE_BLOB,
    AZURITE_CONN,
    AZURITE_KEY,
    MOTO_ENDPOINT,
    TEST_SECRET,
    require_service,
)

__all__ = [
    "AZURITE_PORT",
    "DB_BACKENDS",
    "MOTO_PORT",
    "REFUSED_NAME",
    "WRONG_AZURE_KEY",
    "Db",
    "Site",
    "azure_container",
    "azurite_conn",
    "chainlit_azure_blob",
    "chainlit_azure_datalake",
    "chainlit_ctx",
    "db",
    "file_element",
    "new_thread",
    "object_key",
    "refusing_db",
    "s3_bucket",
    "site",
]

DB_BACKENDS = ("sqlite", "postgres", "mariadb", "dynamodb")
MOTO_PORT = int(MOTO_ENDPOINT.rsplit(":", 1)[1].split("/")[0])
AZURITE_PORT = int(AZURITE_BLOB.rsplit(":", 1)[1].split("/")[0])
#: An element with this name is refused by the database itself (see :func:`_install_refusal`).
REFUSED_NAME = "refused.bin"
#: A well-formed account key that is not Azurite's: every request fails authentication.
WRONG_AZURE_KEY = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
REGION = "us-east-1"


# -- databases ----------------------------------------------------------------------------------


@dataclass
class Db:
    """One database backend: a fresh database (or table) for the whole test module."""

    entry: ContractBackend
    handle: Any

    @property
    def name(self) -> str:
        return self.entry.name

    async def layer(self, storage: BaseStorageClient | None, **options: Any) -> ChainlitLayer:
        """A new layer on this database; ``options`` go to its constructor (``timeout=``)."""
        return await self.entry.new_layer(self.handle, storage, **options)



_TRIGGERS: dict[str, list[str]] = {
    "sqlite": [
        f"""CREATE TRIGGER refuse_element_insert BEFORE INSERT ON elements
        WHEN NEW.name = '{REFUSED_NAME}' BEGIN SELECT RAISE(ABORT, 'element refused'); END""",
        f"""CREATE TRIGGER refuse_element_update BEFORE UPDATE ON elements
        WHEN NEW.name = '{REFUSED_NAME}' BEGIN SELECT RAISE(ABORT, 'element refused'); END""",
    ],
    "postgres": [
        f"""CREATE FUNCTION refuse_element() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.name = '{REFUSED_NAME}' THEN RAISE EXCEPTION 'element refused'; END IF;
            RETURN NEW;
        END $$""",
        """CREATE TRIGGER refuse_element BEFORE INSERT OR UPDATE ON elements
        FOR EACH ROW EXECUTE FUNCTION refuse_element()""",
    ],
    "mariadb": [
        f"""CREATE TRIGGER refuse_element_{event.lower()} BEFORE {event} ON elements
        FOR EACH ROW BEGIN
            IF NEW.name = '{REFUSED_NAME}' THEN
                SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'element refused';
            END IF;
        END"""
        for event in ("INSERT", "UPDATE")
    ],
}


async def _install_refusal(db: Db) -> None:
    """Make a SQL database refuse element rows named :data:`REFUSED_NAME`, as a DBA's trigger
    or constraint would: the layer cannot know before it writes."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    layer = await db.layer(None)
    await layer.get_thread(str(uuid.uuid4()))  # creates the schema
    await layer.close()
    engine = create_async_engine(db.handle)
    try:
        async with engine.begin() as conn:
            for statement in _TRIGGERS[db.name]:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _open_db(name: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Db]:
    entry = CONTRACT_BACKENDS[name]
    async with entry.open(tmp_path_factory.mktemp(entry.name)) as handle:
        built = Db(entry, handle)
        if entry.sql:
            await _install_refusal(built)
        yield built


@pytest.fixture(scope="module", params=DB_BACKENDS)
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Db]:
    async with _open_db(request.param, tmp_path_factory) as built:
        yield built


#: The backends whose database refuses a valid-looking row by itself (the trigger of
#: :func:`_install_refusal`). Not DynamoDB yet: the refusal DynamoDB has for a valid element is
#: its 400 KB item limit, and moto's UpdateItem is not atomic there (it keeps the attributes set
#: before the oversized one: checked with plain boto3), so a test would see a half-written item
#: that real DynamoDB never leaves. A pre-write 400 KB check in the DynamoDB backend (issue 14,
#: item 10) makes that refusal come before the write; then "dynamodb" joins this tuple, with
#: ``{"blob": "x" * 420_000}`` as the refused element's props.
REFUSING_BACKENDS = ("sqlite", "postgres", "mariadb")


@pytest.fixture(scope="module", params=REFUSING_BACKENDS)
async def refusing_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Db]:
    async with _open_db(request.param, tmp_path_factory) as built:
        yield built


@pytest.fixture
async def chainlit_ctx() -> Any:
    """A Chainlit HTTP context, so real ``cl.File`` elements can be built (writes run at once)."""
    return init_http_context(thread_id=str(uuid.uuid4()))


async def new_thread(layer: ChainlitLayer) -> str:
    thread_id = str(uuid.uuid4())
    await layer.update_thread(thread_id, name="storage reliability")
    return thread_id


def file_element(
    thread_id: str, name: str, content: bytes | str, **fields: Any
) -> cl.File:
    """A real ``cl.File`` of ``thread_id`` (needs :func:`chainlit_ctx`)."""
    element = cl.File(name=name, content=content, **fields)
    element.thread_id = thread_id
    return element


def object_key(element: cl.Element) -> str:
    return f"threads/{element.thread_id}/files/{element.id}"


# -- storages -----------------------------------------------------------------------------------


@dataclass
class Site:
    """Where a storage client puts objects, and a direct listing of everything there."""

    kind: str
    make: Callable[..., BaseStorageClient]
    list: Callable[[], list[str]]
    clients: list[BaseStorageClient] = field(default_factory=list)

    def client(self, **options: Any) -> BaseStorageClient:
        made = self.make(**options)
        self.clients.append(made)
        return made


def _s3_admin() -> Any:
    return boto3.client(
        "s3",
        endpoint_url=MOTO_ENDPOINT,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _s3_keys(admin: Any, bucket: str, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for page in admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [item["Key"].removeprefix(prefix) for item in page.get("Contents", [])]
    return sorted(keys)


def _azure_admin() -> Any:
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(AZURITE_CONN)


def azurite_conn(endpoint: str = AZURITE_BLOB, key: str = AZURITE_KEY) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


@contextlib.contextmanager
def s3_bucket() -> Iterator[tuple[Any, str]]:
    """A fresh bucket on moto, emptied and deleted afterwards."""
    require_service(MOTO_ENDPOINT, "moto's S3 server")
    admin = _s3_admin()
    bucket = f"clorm-rel-{uuid.uuid4().hex[:12]}"
    admin.create_bucket(Bucket=bucket)
    try:
        yield admin, bucket
    finally:
        for key in _s3_keys(admin, bucket):
            admin.delete_object(Bucket=bucket, Key=key)
        admin.delete_bucket(Bucket=bucket)


@contextlib.contextmanager
def azure_container() -> Iterator[tuple[Any, str]]:
    """A fresh container on Azurite, deleted afterwards."""
    require_service(AZURITE_BLOB, "Azurite")
    admin = _azure_admin()
    container = f"clorm-rel-{uuid.uuid4().hex[:12]}"
    admin.create_container(container)
    try:
        yield admin, container
    finally:
        admin.delete_container(container)
        admin.close()


def _azure_names(admin: Any, container: str, prefix: str = "") -> list[str]:
    client = admin.get_container_client(container)
    return sorted(blob.name.removeprefix(prefix) for blob in client.list_blobs())


@contextlib.asynccontextmanager
async def site(kind: str, tmp_path: Path, *, endpoint: str | None = None) -> AsyncIterator[Site]:
    """A storage location of ``kind`` and the clients made on it, all closed afterwards.

    ``endpoint`` points the clients (not the listing) at another address: a fault proxy.
    Kinds: ``memory``, ``local``, ``s3``, ``azure`` (FsspecStorage); ``chainlit-s3``,
    ``chainlit-azure-blob`` (Chainlit's own clients, against moto and Azurite).
    """
    built: Site
    with contextlib.ExitStack() as stack:
        if kind == "memory":
            from fsspec.implementations.memory import MemoryFileSystem

            root = f"/clorm-rel-{uuid.uuid4().hex}"

            def memory_list() -> list[str]:
                return sorted(
                    p.removeprefix(root + "/")
                    for p in MemoryFileSystem.store
                    if p.startswith(root + "/")
                )

            def memory_make(**options: Any) -> BaseStorageClient:
                return FsspecStorage(
                    f"memory:/{root}", secret=TEST_SECRET, mount=False, **options
                )

            built = Site(kind, memory_make, memory_list)

            def forget_memory() -> None:
                for path in [p for p in MemoryFileSystem.store if p.startswith(root + "/")]:
                    MemoryFileSystem.store.pop(path, None)
                for path in [p for p in MemoryFileSystem.pseudo_dirs if p.startswith(root)]:
                    MemoryFileSystem.pseudo_dirs.remove(path)

            stack.callback(forget_memory)
        elif kind == "local":
            disk = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
            disk.mkdir()

            def disk_list() -> list[str]:
                return sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if p.is_file())

            def disk_make(**options: Any) -> BaseStorageClient:
                return FsspecStorage(str(disk), secret=TEST_SECRET, mount=False, **options)

            built = Site(kind, disk_make, disk_list)
        elif kind == "s3":
            admin, bucket = stack.enter_context(s3_bucket())

            def s3_make(**options: Any) -> BaseStorageClient:
                return FsspecStorage(
                    f"s3://{bucket}/root",
                    endpoint_url=endpoint or MOTO_ENDPOINT,
                    key="testing",
                    secret="testing",
                    client_kwargs={"region_name": REGION},
                    **options,
                )

            built = Site(kind, s3_make, lambda: _s3_keys(admin, bucket))
        elif kind == "azure":
            admin, container = stack.enter_context(azure_container())

            def azure_make(**options: Any) -> BaseStorageClient:
                conn = azurite_conn(endpoint or AZURITE_BLOB)
                return FsspecStorage(f"az://{container}/root", connection_string=conn, **options)

            built = Site(kind, azure_make, lambda: _azure_names(admin, container))
        elif kind == "chainlit-s3":
            from chainlit.data.storage_clients.s3 import S3StorageClient

            admin, bucket = stack.enter_context(s3_bucket())

            def chainlit_s3_make(**options: Any) -> BaseStorageClient:
                return S3StorageClient(
                    options.pop("bucket", bucket),
                    endpoint_url=endpoint or MOTO_ENDPOINT,
                    region_name=REGION,
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",
                    **options,
                )

            built = Site(kind, chainlit_s3_make, lambda: _s3_keys(admin, bucket))
        elif kind == "chainlit-azure-blob":
            admin, container = stack.enter_context(azure_container())

            def chainlit_blob_make(**options: Any) -> BaseStorageClient:
                return chainlit_azure_blob(
                    options.get("container", container), key=options.get("key", AZURITE_KEY),
                    endpoint=endpoint or AZURITE_BLOB,
                )

            built = Site(kind, chainlit_blob_make, lambda: _azure_names(admin, container))
        else:  # pragma: no cover
            raise AssertionError(kind)
        try:
            yield built
        finally:
            for client in built.clients:
                with contextlib.suppress(Exception):  # a test that closed it already
                    await client.close()


def chainlit_azure_blob(container: str, *, key: str, endpoint: str = AZURITE_BLOB) -> Any:
    """Chainlit's ``AzureBlobStorageClient``, its service and container clients pointed at
    Azurite (its constructor builds a ``*.blob.core.windows.net`` connection string): every
    request still goes through Chainlit's own ``upload_file`` and ``delete_file``."""
    from azure.storage.blob.aio import BlobServiceClient
    from chainlit.data.storage_clients.azure_blob import AzureBlobStorageClient

    client = AzureBlobStorageClient(container, AZURITE_ACCOUNT, key)
    client.service_client = BlobServiceClient.from_connection_string(azurite_conn(endpoint, key))
    client.container_client = client.service_client.get_container_client(container)
    return client


def chainlit_azure_datalake(container: str, *, key: str) -> Any:
    """Chainlit's ``AzureStorageClient`` (ADLS Gen2) against Azurite.

    In Chainlit 2.12 the class cannot be instantiated: it leaves ``delete_file`` and
    ``get_read_url`` of ``BaseStorageClient`` abstract. The subclass fills them in the way the
    class would have to; ``upload_file``, the method under test, is Chainlit's own.
    """
    from chainlit.data.storage_clients.azure import AzureStorageClient

    class ConcreteAzureStorageClient(AzureStorageClient):
        async def delete_file(self, object_key: str) -> bool:
            try:
                self.container_client.get_file_client(object_key).delete_file()
            except Exception:
                return False
            return True

        async def get_read_url(self, object_key: str) -> str:
            url: str = self.container_client.get_file_client(object_key).url
            return url

    return ConcreteAzureStorageClient(
        f"{AZURITE_BLOB}/{AZURITE_ACCOUNT}",
        container,
        {"account_name": AZURITE_ACCOUNT, "account_key": key},
    )
