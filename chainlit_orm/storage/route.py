"""The HTTP route that serves local-disk and memory objects behind signed, expiring URLs.

S3 and Azure hand the browser a presigned/SAS URL; a disk or memory has no such server, so the
package mounts one GET route, ``{prefix}/chainlit-orm/files/{storage name}/{key}``, that checks the
URL's HMAC signature and expiry in constant time and streams the object with the Content-Type and
Content-Disposition stored at upload. One route serves every registered
:class:`~chainlit_orm.storage.FsspecStorage`, found by its ``name``.

Chainlit's own GET catch-all ``/{full_path:path}`` answers ``index.html`` for any path, so a route
appended after it would never run: :func:`mount_storage_route` inserts the route *before* it.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Match, Route

from chainlit_orm.errors import InvalidIdentifierError, StorageError, StorageTimeoutError
from chainlit_orm.storage import served
from chainlit_orm.storage._keys import validate_key
from chainlit_orm.storage.served import ROUTE_PATH, OpenObject, ServedStorage

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["ROUTE_PATH", "mount_on_chainlit", "mount_storage_route"]

logger = logging.getLogger(__name__)


# [0-9], not \d: \d also matches Unicode digits ("²") that int() refuses.
_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
# Types a browser would execute when opened directly: served sandboxed, since the route shares
# the Chainlit UI's origin (and its cookies).
_ACTIVE_TYPES = (
    "text/html",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/xml",
    "application/xml",
)


class _StorageRoute(Route):
    """Marker subclass so mounting twice is detected and does nothing."""


def mount_storage_route(app: Starlette, *storages: ServedStorage, path_prefix: str = "") -> None:
    """Serve local/memory read URLs from ``app`` (idempotent).

    The route goes before any catch-all GET route (Chainlit's ``/{full_path:path}``), or last if
    there is none. Storages register themselves at construction; passing them here only makes the
    intent explicit and re-registers them.

    Args:
        app: a Starlette or FastAPI application (Chainlit's ``chainlit.server.app`` or your own).
        *storages: storages this route must serve (optional, see above).
        path_prefix: where the app's routes live (Chainlit's ``--root-path``); the read URLs'
            prefix comes from ``CHAINLIT_ROOT_PATH`` or the storage's ``public_base_url``.
    """
    for storage in storages:
        storage.register_for_route()
    prefix = "/" + path_prefix.strip("/") if path_prefix.strip("/") else ""
    path = f"{prefix}{ROUTE_PATH}/{{name}}/{{key:path}}"
    routes = app.router.routes
    if any(isinstance(r, _StorageRoute) and r.path == path for r in routes):
        return
    route = _StorageRoute(path, _serve, methods=["GET", "HEAD"], name="chainlit_orm_files")
    routes.insert(_first_capturing_route(app, f"{prefix}{ROUTE_PATH}/probe/key"), route)


def _first_capturing_route(app: Starlette, probe_path: str) -> int:
    """Index of the first route that would answer a GET of ``probe_path`` (else the end).

    Asking each route whether it matches, rather than looking for Chainlit's catch-all by its
    path, also finds it when FastAPI wraps an included router in one opaque entry (FastAPI 0.165
    keeps ``include_router`` routers as ``_IncludedRouter``) and finds any other catch-all
    (a ``Mount("/")``, a SPA fallback). The app's router reads ``routes`` on every request, so an
    insertion here takes effect even after the app started.
    """
    scope = {
        "type": "http",
        "method": "GET",
        "path": probe_path,
        "raw_path": probe_path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "app": app,
    }
    for index, candidate in enumerate(app.router.routes):
        match, _ = candidate.matches(dict(scope))
        if match == Match.FULL:
            return index
    return len(app.router.routes)


def mount_on_chainlit() -> None:
    """Mount the route on Chainlit's FastAPI app, under ``config.run.root_path``.

    Chainlit registers its routes under ``config.run.root_path`` (set by ``--root-path``), so the
    route goes there too; URLs are generated with ``CHAINLIT_ROOT_PATH`` (plus
    ``CHAINLIT_PARENT_ROOT_PATH`` when Chainlit is mounted in another app), as Chainlit's own.
    """
    from chainlit.config import config
    from chainlit.server import app

    mount_storage_route(app, path_prefix=config.run.root_path or "")


def _parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """Parse a single ``bytes=`` range: ``(start, end_exclusive)``, None to serve all, False if
    unsatisfiable. Multiple ranges are answered with the whole object, which RFC 9110 allows."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        length = int(last)
        if length == 0:
            return False
        return max(size - length, 0), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or (last and int(last) < start):
        return False
    return start, end


async def _serve(request: Request) -> Response:
    name = request.path_params["name"]
    key = request.path_params["key"]
    storage = served.lookup(name)
    if storage is None:
        return Response("Not Found", status_code=404, media_type="text/plain")
    try:
        validate_key(key)
    except InvalidIdentifierError:
        return Response("Bad Request", status_code=400, media_type="text/plain")
    expires = request.query_params.get("expires", "")
    signature = request.query_params.get("sig", "")
    if not storage.verify_read_url(key, expires, signature):
        return Response("Forbidden", status_code=403, media_type="text/plain")
    try:
        opened = await storage.open_object(key)
    except StorageTimeoutError as exc:
        logger.warning("chainlit-orm storage route: %s", exc)
        return Response("Gateway Timeout", status_code=504, media_type="text/plain")
    except StorageError as exc:
        logger.warning("chainlit-orm storage route: %s", exc)
        return Response("Service Unavailable", status_code=503, media_type="text/plain")
    if opened is None:
        return Response("Not Found", status_code=404, media_type="text/plain")
    response = _respond(request, storage, key, expires, opened)
    if not isinstance(response, StreamingResponse):
        await opened.aclose()
    return response


def _respond(
    request: Request, storage: ServedStorage, key: str, expires: str, opened: OpenObject
) -> Response:
    """The response for an opened object: a stream that closes the handle when it ends, or a
    bodiless answer (HEAD, empty, unsatisfiable range) after which the caller closes it."""
    info = opened.info

    # Content-Type goes in verbatim (not as media_type, to which Starlette appends a charset).
    headers = {
        "Content-Type": info.content_type,
        "Accept-Ranges": "bytes",
        # Cacheable by the browser only, and no longer than the signature is valid.
        "Cache-Control": f"private, max-age={max(int(expires) - int(time.time()), 0)}",
        "X-Content-Type-Options": "nosniff",
    }
    if info.content_disposition:
        headers["Content-Disposition"] = info.content_disposition
    if info.content_type.split(";")[0].strip().lower() in _ACTIVE_TYPES:
        headers["Content-Security-Policy"] = "sandbox"

    status, start, end = 200, 0, info.size
    wanted = _parse_range(request.headers.get("range"), info.size)
    if wanted is False:
        headers["Content-Range"] = f"bytes */{info.size}"
        return Response(status_code=416, headers=headers)
    if isinstance(wanted, tuple):
        status, (start, end) = 206, wanted
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD" or end == start:
        return Response(status_code=status, headers=headers)
    return StreamingResponse(
        storage.read_range(key, opened, start, end),
        status_code=status,
        headers=headers,
    )
