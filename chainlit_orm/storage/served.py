"""What the read-URL route and the storages it serves share, so neither imports the other.

:class:`~chainlit_orm.storage.client.FsspecStorage` signs local/memory read URLs under
:data:`ROUTE_PATH` and registers itself here by name; the route
(:mod:`chainlit_orm.storage.route`) looks the name up and calls only the public methods of
:class:`ServedStorage`. (Before issue 15 the client and the route imported each other, and the
route called four private methods of the client.)
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, Protocol

__all__ = ["ROUTE_PATH", "ObjectInfo", "OpenObject", "ServedStorage", "lookup", "register"]

#: Where the route serves read URLs: ``{ROUTE_PATH}/{storage name}/{key}?expires=..&sig=..``.
ROUTE_PATH = "/chainlit-orm/files"


@dataclass(frozen=True)
class ObjectInfo:
    """An object served by the local route: its size and the headers stored at upload."""

    size: int
    content_type: str
    content_disposition: str | None


@dataclass(frozen=True)
class OpenObject:
    """An object the local route has opened: what to serve it with, and the open handle."""

    info: ObjectInfo
    reader: IO[bytes]

    async def aclose(self) -> None:
        await asyncio.to_thread(self.reader.close)


class ServedStorage(Protocol):
    """What the route needs of a storage it serves."""

    @property
    def name(self) -> str: ...

    def verify_read_url(self, key: str, expires: str, signature: str) -> bool:
        """Whether ``signature`` is this storage's for ``key`` and has not expired."""
        ...

    async def open_object(self, key: str) -> OpenObject | None:
        """Open ``key`` for serving, or None if it is not an object."""
        ...

    def read_range(self, key: str, opened: OpenObject, start: int,
                   end: int) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of an opened object; closes it at the end."""
        ...

    def register_for_route(self) -> None:
        """Put this storage in the registry (checking its name is not taken by another)."""
        ...


#: Route-served storages by name (weakly: a storage that is garbage-collected stops serving).
_served: weakref.WeakValueDictionary[str, ServedStorage] = weakref.WeakValueDictionary()


def lookup(name: str) -> ServedStorage | None:
    """The storage registered under ``name``, if it is still alive."""
    return _served.get(name)


def register(storage: ServedStorage) -> None:
    """Register ``storage`` under its name (the caller has checked the name is its own)."""
    _served[storage.name] = storage
