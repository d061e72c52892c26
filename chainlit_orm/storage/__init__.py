"""Element storage through fsspec: S3, Azure Blob, local disk and memory behind one client.

:class:`FsspecStorage` implements Chainlit's ``BaseStorageClient`` and the two protocols of
:mod:`chainlit_orm.storage.protocols` (:class:`ReadableStorage`, :class:`DiscardableStorage`);
local-disk and memory read URLs are served by the route of :func:`mount_storage_route`. See
``README.md`` in this package.
"""

from __future__ import annotations

from chainlit_orm.storage._headers import build_content_disposition as build_content_disposition
from chainlit_orm.storage._keys import validate_key as validate_key
from chainlit_orm.storage.client import FsspecStorage as FsspecStorage
from chainlit_orm.storage.protocols import DiscardableStorage as DiscardableStorage
from chainlit_orm.storage.protocols import ReadableStorage as ReadableStorage
from chainlit_orm.storage.route import mount_on_chainlit as mount_on_chainlit
from chainlit_orm.storage.route import mount_storage_route as mount_storage_route
from chainlit_orm.storage.served import ROUTE_PATH as ROUTE_PATH
from chainlit_orm.storage.served import ObjectInfo as ObjectInfo

__all__ = [
    "ROUTE_PATH",
    "DiscardableStorage",
    "FsspecStorage",
    "ObjectInfo",
    "ReadableStorage",
    "build_content_disposition",
    "mount_on_chainlit",
    "mount_storage_route",
    "storage_from_env",
    "validate_key",
]

storage_from_env = FsspecStorage.from_env
"""Build a :class:`FsspecStorage` from ``CHAINLIT_ORM_STORAGE_URL``; None when it is unset."""
