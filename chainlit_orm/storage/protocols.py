"""What a storage client can offer beyond Chainlit's ``BaseStorageClient``, as small protocols.

Chainlit's ``BaseStorageClient`` can upload, delete and sign a read URL; it cannot read an object
back, and its clients report a failed delete by logging and returning False. Code that needs more
(the DynamoDB backend reading an offloaded step text back, the element flow removing the object
of a refused element) asks for it with ``isinstance(storage, Protocol)`` and treats any other
client as a plain ``BaseStorageClient``. :class:`~chainlit_orm.storage.FsspecStorage` implements
both; a custom client may too, by having the method (no registration, no base class).
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

__all__ = ["AgedStorage", "DiscardableStorage", "ListableStorage", "ReadableStorage"]


@runtime_checkable
class ReadableStorage(Protocol):
    """A storage client that can read an object back."""

    async def read_file(self, object_key: str) -> bytes:
        """Return every byte stored under ``object_key``.

        Raises:
            NotFoundError: there is no such object.
            InvalidIdentifierError: the key is unsafe.
            StorageError: the backend failed (``StorageTimeoutError`` past the client's timeout).
        """
        ...


@runtime_checkable
class DiscardableStorage(Protocol):
    """A storage client that can remove an object it may or may not hold, quickly and surely.

    Used to clean up after a failed element write: unlike ``delete_file`` it does not first ask
    whether the object exists (a request that could be answered late is one more chance to leave
    it behind) and it reports failure by raising, never by returning False.
    """

    async def discard_file(self, object_key: str) -> None:
        """Remove ``object_key`` and anything stored with it; an absent object is not an error.

        Raises:
            InvalidIdentifierError: the key is unsafe.
            StorageError: the backend failed or did not answer in time (the object may remain).
        """
        ...


@runtime_checkable
class ListableStorage(Protocol):
    """A storage client that can list the objects under a prefix (``purge`` sweeps the files
    of threads that no longer exist with it)."""

    async def list_keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix`` (a key prefix ending at a ``/`` boundary), sorted.

        Raises:
            InvalidIdentifierError: the prefix is unsafe.
            StorageError: the backend failed.
        """
        ...


@runtime_checkable
class AgedStorage(Protocol):
    """A storage client that can list the objects under a prefix with their ages (a SQL
    ``purge`` removes element files no row refers to, once older than a grace period)."""

    async def list_modified(self, prefix: str) -> dict[str, datetime | None]:
        """Every object key under ``prefix`` with the time it was last written (aware, UTC;
        None when the storage does not say: such an object is never swept).

        Raises:
            InvalidIdentifierError: the prefix is unsafe.
            StorageError: the backend failed.
        """
        ...
