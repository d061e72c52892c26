"""How the transfer reads a stored file back: through ``ReadableStorage.read_file``, where a
missing object is "absent" (the copy records it as missing) and anything else is an error."""

from __future__ import annotations

from typing import Any

import pytest
from chainlit.data.storage_clients.base import BaseStorageClient

from chainlit_orm.errors import InvalidIdentifierError, StorageError
from chainlit_orm.transfer._layer import read_object
from tests.transfer.conftest import memory_storage


class _WriteOnly(BaseStorageClient):  # type: ignore[misc]
    """A client with Chainlit's interface only (as Chainlit's own S3/Azure/GCS clients)."""

    async def upload_file(self, object_key: str, data: bytes | str, mime: str = "",
                          overwrite: bool = True, content_disposition: str | None = None
                          ) -> dict[str, Any]:
        return {"object_key": object_key, "url": f"https://example.com/{object_key}"}

    async def delete_file(self, object_key: str) -> bool:
        return True

    async def get_read_url(self, object_key: str) -> str:
        return f"https://example.com/{object_key}"

    async def close(self) -> None:
        return None


async def test_present_absent_and_unsafe_objects() -> None:
    async with memory_storage("read") as storage:
        await storage.upload_file("threads/t/files/e", b"bytes \xf0\x9f\x90\xa2", mime="x/y")
        assert await read_object(storage, "threads/t/files/e") == b"bytes \xf0\x9f\x90\xa2"
        assert await read_object(storage, "threads/t/files/missing") is None
        with pytest.raises(InvalidIdentifierError):
            await read_object(storage, "../outside")


async def test_a_client_that_cannot_read_back_is_a_typed_error() -> None:
    with pytest.raises(StorageError, match=r"^_WriteOnly cannot read a stored object back "
                                           r"\(it has no read_file\); give the storage as a "
                                           r"URL instead$"):
        await read_object(_WriteOnly(), "threads/t/files/e")
