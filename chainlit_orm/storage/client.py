"""``FsspecStorage``: Chainlit's ``BaseStorageClient`` over fsspec (S3, Azure Blob, disk, memory).

One class replaces Chainlit's per-cloud storage clients. The rules it keeps:

* **No blocking on the event loop.** s3fs and adlfs are created with ``asynchronous=True`` inside
  the running loop (lazily, one instance per loop, because their HTTP sessions belong to the loop
  that created them) and their coroutines (``_pipe_file``, ``_info``, ``_rm_file``, ``_url``) are
  awaited natively. Local disk and memory are synchronous filesystems; every call to them runs in
  a worker thread (:func:`asyncio.to_thread`). The sync wrappers of s3fs/adlfs are never called:
  from a running loop they would block it while fsspec's IO thread works.
* **Read URLs a browser can open.** S3 gives a presigned GET, Azure an account-key SAS (both from
  ``fs._url``, which also works against moto and Azurite); local disk and memory give a signed,
  expiring URL served by the route in :mod:`chainlit_orm.storage.route`.
* **Keys cannot escape the root** (:mod:`chainlit_orm.storage._keys`), and **errors are typed and
  chained**: absent objects are ``False`` from :meth:`FsspecStorage.delete_file`; everything else
  raises :class:`~chainlit_orm.errors.StorageError` ``from`` the cause, with the URL masked.
* **No call waits for ever.** Each call has an overall deadline (``timeout``) enforced here with
  :func:`asyncio.timeout`, on top of the SDKs' own connect/read timeouts. The SDK knobs alone are
  not enough: aiohttp starts its read timer only once a request body is sent, and botocore sends
  ``PutObject`` with ``Expect: 100-continue``, so a black-holed S3 upload waits for the
  ``100 Continue`` for ever; adlfs passes its timeouts to transfers only, and azure-storage retries
  a refused connection with backoffs of 15 s and more. Past the deadline the call raises
  :class:`~chainlit_orm.errors.StorageTimeoutError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import io
import json
import logging
import math
import os
import re
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

import fsspec
from chainlit.data.storage_clients.base import BaseStorageClient
from fsspec.core import split_protocol

from chainlit_orm.errors import (
    ChainlitORMError,
    ConfigurationError,
    ConflictError,
    InvalidInputError,
    MissingDependencyError,
    NotFoundError,
    StorageError,
    StorageTimeoutError,
    mask_url,
)
from chainlit_orm.storage import _signing, served
from chainlit_orm.storage._headers import check_content_type, normalize_content_disposition
from chainlit_orm.storage._keys import META_DIR, meta_path, object_path, validate_key
from chainlit_orm.storage.served import ObjectInfo, OpenObject
from chainlit_orm.urls import STORAGE_URL_VARIABLE

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "ENV_CONNECT_TIMEOUT",
    "ENV_PUBLIC_BASE_URL",
    "ENV_READ_TIMEOUT",
    "ENV_SECRET",
    "ENV_TIMEOUT",
    "ENV_URL",
    "FsspecStorage",
    "ObjectInfo",
]

logger = logging.getLogger(__name__)

ENV_URL = STORAGE_URL_VARIABLE  # one name for from_env(), the CLI and FsspecStorage.from_env()
ENV_SECRET = "CHAINLIT_ORM_STORAGE_SECRET"  # noqa: S105 (a variable name)
ENV_PUBLIC_BASE_URL = "CHAINLIT_ORM_STORAGE_PUBLIC_BASE_URL"
ENV_TIMEOUT = "CHAINLIT_ORM_STORAGE_TIMEOUT"
ENV_CONNECT_TIMEOUT = "CHAINLIT_ORM_STORAGE_CONNECT_TIMEOUT"
ENV_READ_TIMEOUT = "CHAINLIT_ORM_STORAGE_READ_TIMEOUT"
#: Overall deadline of one storage call (retries and waiting for a concurrency slot included).
#: Generous because one call may move a large file; the connect/read timeouts catch a dead
#: endpoint long before it on every path where the SDK applies them.
DEFAULT_TIMEOUT = 120.0
#: Same values as the DynamoDB backend's botocore client.
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0
_ENV_AUTH_SECRET = "CHAINLIT_AUTH_SECRET"  # noqa: S105 (a variable name)
_ENV_EXPIRY = "STORAGE_EXPIRY_TIME"
_DEFAULT_EXPIRES = 3600
_S3_MAX_EXPIRES = 7 * 24 * 3600
_MIN_SECRET_LENGTH = 16
_STORAGE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Backend:
    """What differs between backends, declared next to the protocol (fsspec registry style)."""

    kind: str
    module: str | None
    extra: str | None
    native_async: bool

    @property
    def served_by_route(self) -> bool:
        return not self.native_async


_S3 = _Backend("s3", "s3fs", "s3", native_async=True)
_AZURE = _Backend("azure", "adlfs", "azure", native_async=True)
_LOCAL = _Backend("local", None, None, native_async=False)
_MEMORY = _Backend("memory", None, None, native_async=False)
_BACKENDS: dict[str, _Backend] = {
    "s3": _S3,
    "s3a": _S3,
    "az": _AZURE,
    "abfs": _AZURE,
    "abfss": _AZURE,
    "file": _LOCAL,
    "local": _LOCAL,
    "memory": _MEMORY,
}


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _read_expires(expires: int | None) -> int:
    if expires is None:
        raw = _env(_ENV_EXPIRY)
        if raw is None:
            return _DEFAULT_EXPIRES
        try:
            expires = int(raw)
        except ValueError as exc:
            raise ConfigurationError(
                f"{_ENV_EXPIRY}={raw!r} is not a number of seconds", detail=_ENV_EXPIRY
            ) from exc
    if isinstance(expires, bool) or not isinstance(expires, int) or expires <= 0:
        raise ConfigurationError(
            f"expires must be a positive number of seconds, got {expires!r}", detail=expires
        )
    return expires


def _read_seconds(value: float | None, env_name: str, default: float, option: str) -> float:
    """A duration in seconds: the option, else the environment variable, else the default."""
    source = option
    if value is None:
        raw = _env(env_name)
        if raw is None:
            return default
        source = env_name
        try:
            value = float(raw)
        except ValueError as exc:
            raise ConfigurationError(
                f"{env_name}={raw!r} is not a number of seconds", detail=env_name
            ) from exc
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"{source} must be a positive, finite number of seconds, got {value!r}",
            detail=source,
        )
    return float(value)


def _read_root_path() -> str:
    # Same sum Chainlit's catch-all uses to build its own links (server.py: serve()).
    root = (_env("CHAINLIT_PARENT_ROOT_PATH") or "") + (_env("CHAINLIT_ROOT_PATH") or "")
    return "" if root in ("", "/") else "/" + root.strip("/")


class FsspecStorage(BaseStorageClient):
    """Chainlit element storage on any of S3, Azure Blob, local disk or memory, through fsspec.

    Drop-in for Chainlit's ``BaseStorageClient`` (``storage_provider=`` of Chainlit's own layers)
    and the ``storage=`` of chainlit-orm's layers. Configuration is read once, here, at
    construction, never at import and never at first use, so a bad setting fails at start-up.

    Args:
        url: where objects live. ``s3://bucket/prefix`` (s3fs), ``az://container/prefix`` or
            ``abfs://container/prefix`` (adlfs), ``file:///path`` or a plain path (a relative path
            is made absolute against the current directory now), ``memory://name``.
        name: identifies this storage in the local read-URL route so several storages can
            coexist; defaults to a hash of the backend and root, stable across processes.
        secret: key material for the local/memory read-URL signatures (at least 16 characters).
            Defaults to ``CHAINLIT_ORM_STORAGE_SECRET``, then ``CHAINLIT_AUTH_SECRET``; with
            neither, a random per-process secret is generated (and a warning logged): URLs then
            break on restart and are refused by the other workers of a multi-process deployment.
            For ``s3://`` it is s3fs's own ``secret`` (the AWS secret access key), since presigned
            URLs are signed with the AWS credentials; Azure refuses it (use ``account_key``).
        expires: lifetime of read URLs in seconds; defaults to ``STORAGE_EXPIRY_TIME``, else
            3600 like Chainlit.
        public_base_url: makes local/memory read URLs absolute (``https://host``); defaults to
            ``CHAINLIT_ORM_STORAGE_PUBLIC_BASE_URL``. Without it they are relative
            (``{CHAINLIT_ROOT_PATH}/chainlit-orm/files/...``) because Chainlit's UI is served from
            the same origin.
        mount: for local/memory only: whether to mount the read-URL route on Chainlit's app
            (``chainlit.server.app``). ``None`` (default) mounts it when ``chainlit.server`` is
            already imported, as it is under ``chainlit run`` and ``mount_chainlit``; ``True``
            imports it; ``False`` leaves mounting to
            :func:`~chainlit_orm.storage.mount_storage_route`.
        timeout: overall deadline, in seconds, of every call (upload, delete, read, signing a
            URL, one chunk of the local route), SDK retries and the wait for a ``concurrency``
            slot included (creating the SDK client on first use is not: it is local work);
            past it the call raises ``StorageTimeoutError``. Defaults to
            ``CHAINLIT_ORM_STORAGE_TIMEOUT``, else 120. :meth:`discard_file`, the clean-up after
            a failed element write, gets half of it, so a failed upload and its clean-up end
            within 1.5 times ``timeout``.
        connect_timeout: seconds to open a connection (S3: botocore ``connect_timeout``; Azure:
            azure-core ``connection_timeout`` on transfers). Defaults to
            ``CHAINLIT_ORM_STORAGE_CONNECT_TIMEOUT``, else 5.
        read_timeout: seconds to wait for the next bytes of an answer (S3: botocore
            ``read_timeout``; Azure: azure-core ``read_timeout`` on transfers). Defaults to
            ``CHAINLIT_ORM_STORAGE_READ_TIMEOUT``, else 30. Explicit SDK settings in ``options``
            (``config_kwargs`` for s3fs, ``connection_timeout``/``read_timeout`` for adlfs) win.
            Local disk and memory have no connection: only ``timeout`` applies to them.
        concurrency: how many uploads/deletes of this storage run at once per event loop; the
            rest wait their turn. It bounds the worker threads of local/memory (more threads
            than cores only make the loop's thread wait longer for the GIL) and, for S3/Azure,
            how much request preparation (payload hashing and signing, done on the loop by
            aiobotocore/azure-core) piles up in one loop iteration. botocore's connection pool
            holds 10 connections by default, so 8 costs no S3 throughput.
        tracing: an OpenTelemetry span per call (``otel`` extra); None (default) follows
            ``CHAINLIT_ORM_TRACING``. A traced layer traces its storage too. See
            :mod:`chainlit_orm.tracing`.
        **options: passed to the fsspec filesystem (s3fs: ``endpoint_url``, ``key``, ``token``,
            ``client_kwargs``, ...; adlfs: ``connection_string``, ``account_name``,
            ``account_key``, ``account_host``, ...). Unset options
            are filled from the usual environment variables: ``AWS_ENDPOINT_URL_S3`` /
            ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY`` (+
            ``AWS_SESSION_TOKEN``), ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` for S3;
            ``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_ACCOUNT_NAME``,
            ``AZURE_STORAGE_ACCOUNT_KEY`` for Azure.

    Raises:
        ConfigurationError: unsupported URL, missing bucket/container/name, bad ``expires``,
            ``secret`` or timeout, Azure without an account key (SAS signing needs it), or a
            route ``name`` already used by another storage.
        MissingDependencyError: s3fs (extra ``s3``) or adlfs (extra ``azure``) is not installed.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        secret: str | bytes | None = None,
        expires: int | None = None,
        public_base_url: str | None = None,
        mount: bool | None = None,
        concurrency: int = 8,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        tracing: bool | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(url, str) or not url.strip():
            raise ConfigurationError("storage URL is empty", detail=url)
        self.url = url.strip()
        protocol, _ = split_protocol(self.url)
        backend = _BACKENDS.get(protocol or "file")
        if backend is None:
            raise ConfigurationError(
                f"unsupported storage URL {mask_url(self.url)!r}: use s3://, az://, abfs://, "
                "file:// (or a plain path) or memory://",
                detail=protocol,
            )
        self._backend = backend
        self._error_types, self._timeout_types = self._import_backend()
        self._fs_class: Any = fsspec.get_filesystem_class(protocol or "file")
        self.root: str = self._fs_class._strip_protocol(self.url).rstrip("/")
        if backend is _LOCAL:
            self.root = os.path.abspath(self.root or "/")
        if not self.root or (self.root == "/" and backend is not _LOCAL):
            raise ConfigurationError(
                f"storage URL {mask_url(self.url)!r} names no bucket, container or memory root",
                detail=self.url,
            )
        self.expires = _read_expires(expires)
        if backend is _S3 and self.expires > _S3_MAX_EXPIRES:
            raise ConfigurationError(
                f"S3 presigned URLs live at most {_S3_MAX_EXPIRES} s, got expires={self.expires}",
                detail=self.expires,
            )
        if secret is not None and backend is _S3:
            # s3fs calls the AWS secret access key ``secret``; S3 read URLs are presigned with
            # it, so there is no URL-signing secret to confuse it with.
            options.setdefault("secret", secret)
            secret = None
        elif secret is not None and backend is _AZURE:
            raise ConfigurationError(
                "secret= signs local and memory read URLs; Azure SAS URLs are signed with "
                "account_key (or the connection string's AccountKey)",
                detail="secret",
            )
        self.timeout = _read_seconds(timeout, ENV_TIMEOUT, DEFAULT_TIMEOUT, "timeout")
        self.connect_timeout = _read_seconds(
            connect_timeout, ENV_CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, "connect_timeout"
        )
        self.read_timeout = _read_seconds(
            read_timeout, ENV_READ_TIMEOUT, DEFAULT_READ_TIMEOUT, "read_timeout"
        )
        #: deadline of :meth:`discard_file` (see ``timeout``)
        self.cleanup_timeout = self.timeout / 2
        self._options = self._resolve_options(options)
        self.name = name if name is not None else self._default_name()
        if not _STORAGE_NAME.match(self.name):
            raise ConfigurationError(
                f"storage name {self.name!r} must match {_STORAGE_NAME.pattern}", detail=self.name
            )
        self.public_base_url = (public_base_url or _env(ENV_PUBLIC_BASE_URL) or "").rstrip("/")
        self._root_path = _read_root_path()
        self._signing_key = (
            _signing.derive_signing_key(self._resolve_secret(secret))
            if backend.served_by_route
            else b""
        )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(
                f"concurrency must be a positive integer, got {concurrency!r}", detail=concurrency
            )
        self.concurrency = concurrency
        self._slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        self._sync_fs: Any = None
        self._async_fs: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] = {}
        if backend.served_by_route:
            self._sync_fs = self._new_filesystem(asynchronous=False)
            self.register_for_route()
            self._mount(mount)
        from chainlit_orm import tracing as _tracing

        if _tracing.wanted(tracing):
            self.enable_tracing()

    #: whether this storage's calls emit OpenTelemetry spans (:mod:`chainlit_orm.tracing`)
    traced: bool = False

    def enable_tracing(self) -> None:
        """Emit an OpenTelemetry span per call from now on (a traced layer calls this on its
        storage; see :mod:`chainlit_orm.tracing`).

        Raises:
            MissingDependencyError: ``opentelemetry-api`` is not installed (extra ``otel``).
        """
        from chainlit_orm import tracing as _tracing

        _tracing.instrument_storage(self)

    @property
    def kind(self) -> str:
        """``s3``, ``azure``, ``local`` or ``memory``."""
        return self._backend.kind

    # -- construction helpers -------------------------------------------------------------------

    def _import_backend(
        self,
    ) -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
        """Import the optional SDK now; return the exception types that mean a real failure, and
        those of them that mean a timeout (builtin ``TimeoutError`` covers asyncio's, aiohttp's
        ``ServerTimeoutError``, fsspec's ``FSTimeoutError`` and ``socket.timeout``)."""
        backend = self._backend
        if backend.module is not None:
            try:
                importlib.import_module(backend.module)
            except ImportError as exc:
                raise MissingDependencyError(backend.module, backend.extra or "all") from exc
        types: list[type[BaseException]] = [OSError]
        timeouts: list[type[BaseException]] = [TimeoutError]
        if backend is _S3:
            import aiohttp
            from botocore.exceptions import (
                BotoCoreError,
                ClientError,
                ConnectTimeoutError,
                ReadTimeoutError,
            )

            types += [BotoCoreError, ClientError, aiohttp.ClientError]
            timeouts += [ConnectTimeoutError, ReadTimeoutError]
        elif backend is _AZURE:
            import aiohttp
            from azure.core.exceptions import (
                AzureError,
                ServiceRequestTimeoutError,
                ServiceResponseTimeoutError,
            )

            types += [AzureError, aiohttp.ClientError]
            timeouts += [ServiceRequestTimeoutError, ServiceResponseTimeoutError]
        return tuple(types), tuple(timeouts)

    def _resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Merge the explicit options over the URL's and the environment's (read here, once)."""
        merged: dict[str, Any] = dict(self._fs_class._get_kwargs_from_urls(self.url))
        merged.update(options)
        if self._backend is _S3:
            endpoint = _env("AWS_ENDPOINT_URL_S3") or _env("AWS_ENDPOINT_URL")
            if endpoint and "endpoint_url" not in merged:
                merged["endpoint_url"] = endpoint
            key, secret = _env("AWS_ACCESS_KEY_ID"), _env("AWS_SECRET_ACCESS_KEY")
            if key and secret and "key" not in merged and "secret" not in merged:
                merged["key"], merged["secret"] = key, secret
                if token := _env("AWS_SESSION_TOKEN"):
                    merged.setdefault("token", token)
            region = _env("AWS_REGION") or _env("AWS_DEFAULT_REGION")
            client_kwargs = dict(merged.get("client_kwargs") or {})
            if region and "region_name" not in client_kwargs:
                client_kwargs["region_name"] = region
            if client_kwargs:
                merged["client_kwargs"] = client_kwargs
            # botocore's own timeouts (aiobotocore maps them to aiohttp's sock_connect/sock_read);
            # retries stay botocore's (AWS_MAX_ATTEMPTS / AWS_RETRY_MODE or config_kwargs).
            config_kwargs = dict(merged.get("config_kwargs") or {})
            config_kwargs.setdefault("connect_timeout", self.connect_timeout)
            config_kwargs.setdefault("read_timeout", self.read_timeout)
            merged["config_kwargs"] = config_kwargs
        elif self._backend is _AZURE:
            # adlfs hands these to azure-core on uploads and downloads; metadata calls (info,
            # delete) keep azure-core's defaults and are bounded by ``timeout`` alone.
            merged.setdefault("connection_timeout", self.connect_timeout)
            merged.setdefault("read_timeout", self.read_timeout)
            for option, variable in (
                ("connection_string", "AZURE_STORAGE_CONNECTION_STRING"),
                ("account_name", "AZURE_STORAGE_ACCOUNT_NAME"),
                ("account_key", "AZURE_STORAGE_ACCOUNT_KEY"),
            ):
                value = _env(variable)
                if value and option not in merged:
                    merged[option] = value
            connection = str(merged.get("connection_string") or "")
            if not connection and not merged.get("account_name"):
                raise ConfigurationError(
                    "Azure storage needs connection_string or account_name (options or "
                    "AZURE_STORAGE_CONNECTION_STRING / AZURE_STORAGE_ACCOUNT_NAME)",
                    detail=self.url,
                )
            if "accountkey=" not in connection.lower() and not merged.get("account_key"):
                raise ConfigurationError(
                    "Azure read URLs are SAS tokens signed with the account key: give account_key "
                    "(or AZURE_STORAGE_ACCOUNT_KEY) or a connection string with AccountKey=",
                    detail=self.url,
                )
        merged.setdefault("use_listings_cache", False)
        return merged

    def _default_name(self) -> str:
        location = f"{self._backend.kind}://{self.root}"
        return hashlib.sha256(location.encode("utf-8")).hexdigest()[:16]

    def _resolve_secret(self, secret: str | bytes | None) -> bytes:
        if secret is None:
            secret = _env(ENV_SECRET)
            if secret is None:
                fallback = _env(_ENV_AUTH_SECRET)
                return fallback.encode() if fallback else _signing.process_secret()
        raw = secret.encode() if isinstance(secret, str) else secret
        if len(raw) < _MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"the storage URL-signing secret must be at least {_MIN_SECRET_LENGTH} "
                f"characters (option secret= or {ENV_SECRET})",
                detail="secret",
            )
        return raw

    def register_for_route(self) -> None:
        """Register with the read-URL route (:mod:`.served`) under :attr:`name`.

        Raises:
            ConfigurationError: the name is registered by a storage of another location, or of
                the same location with another secret (its URLs would be refused).
        """
        current = served.lookup(self.name)
        if current is not None and current is not self and isinstance(current, FsspecStorage):
            if (current._backend, current.root) != (self._backend, self.root):
                raise ConfigurationError(
                    f"storage name {self.name!r} is already used by {mask_url(current.url)!r}; "
                    "pass a different name=",
                    detail=self.name,
                )
            if current._signing_key != self._signing_key:
                raise ConfigurationError(
                    f"storage name {self.name!r} is already registered with another secret; "
                    "URLs of one would be refused by the route; use the same secret or name=",
                    detail=self.name,
                )
        served.register(self)

    def _mount(self, mount: bool | None) -> None:
        import sys

        if mount is False or (mount is None and "chainlit.server" not in sys.modules):
            return
        from chainlit_orm.storage.route import mount_on_chainlit

        mount_on_chainlit()

    @classmethod
    def from_env(cls, **options: Any) -> FsspecStorage | None:
        """Build a storage from ``CHAINLIT_ORM_STORAGE_URL``, or return None when it is unset.

        Everything else comes from the environment variables documented on the class, and
        ``options`` are passed through to the constructor.
        """
        url = _env(ENV_URL)
        return None if url is None else cls(url, **options)

    # -- filesystems ----------------------------------------------------------------------------

    def _new_filesystem(self, *, asynchronous: bool) -> Any:
        """Create a private filesystem instance (the seam the event-loop tests instrument).

        ``skip_instance_cache`` keeps fsspec from sharing the instance (and its loop-bound HTTP
        session) with other storages or loops, so :meth:`close` only closes what is ours.
        """
        options = dict(self._options)
        if asynchronous:
            options["asynchronous"] = True
        return self._fs_class(skip_instance_cache=True, **options)

    async def _open_async_fs(self) -> Any:
        fs = self._new_filesystem(asynchronous=True)
        if self._backend is _S3:
            if fs.session is None:
                # Creating an aiobotocore client reads botocore's JSON data files synchronously
                # (blocking I/O on the event loop: bench/results/design.md D7). Do it once in a
                # worker thread; the session caches what it loaded, so set_session() below only
                # builds the client.
                fs.session = await asyncio.to_thread(_warmed_aio_session, dict(fs.kwargs))
            await fs.set_session()
        return fs

    async def _fs(self) -> Any:
        """Return this loop's async filesystem, creating it on first use (one per loop)."""
        loop = asyncio.get_running_loop()
        for other in [lp for lp in self._async_fs if lp.is_closed()]:
            del self._async_fs[other]
        task = self._async_fs.get(loop)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = loop.create_task(self._open_async_fs())
            self._async_fs[loop] = task
        with self._translate("connect to", ""):
            return await asyncio.shield(task)

    async def _ready(self) -> None:
        """Create this loop's filesystem, if it is a native-async one, outside any deadline.

        Creating it is local work (aiobotocore loads botocore's data files in a worker thread;
        credentials come from botocore's chain, with its own timeouts), not a call to the
        service: a busy machine must not turn it into a ``StorageTimeoutError``.
        """
        if self._backend.native_async:
            await self._fs()

    def _slot(self) -> asyncio.Semaphore:
        """This loop's semaphore bounding concurrent operations (see ``concurrency``)."""
        loop = asyncio.get_running_loop()
        slot = self._slots.get(loop)
        if slot is None:
            for other in [lp for lp in self._slots if lp.is_closed()]:
                del self._slots[other]
            slot = self._slots[loop] = asyncio.Semaphore(self.concurrency)
        return slot

    @contextlib.contextmanager
    def _translate(self, action: str, key: str) -> Iterator[None]:
        """Turn backend failures into :class:`StorageError` chained to the cause (a timeout of
        the SDK, anywhere in the cause chain, into :class:`StorageTimeoutError`)."""
        try:
            yield
        except ChainlitORMError:
            raise
        except self._error_types as exc:
            where = f"{key!r} in {self.url}" if key else self.url
            message = f"could not {action} {where}: {type(exc).__name__}: {exc}"
            kind = StorageTimeoutError if self._is_timeout(exc) else StorageError
            raise kind(mask_url(message), detail=key or None) from exc

    def _is_timeout(self, exc: BaseException) -> bool:
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            if isinstance(current, self._timeout_types):
                return True
            seen.add(id(current))
            current = current.__cause__ or current.__context__
        return False

    @contextlib.asynccontextmanager
    async def _bounded(
        self, action: str, key: str, seconds: float | None = None
    ) -> AsyncIterator[None]:
        """One storage call: within its deadline (``timeout`` unless given), errors translated.

        Invariant: no public method of this class awaits the network, a worker thread or a
        concurrency slot outside one of these blocks (creating the filesystem, :meth:`_ready`,
        is the one exception: local work), so none waits on the service past its deadline.
        """
        limit = self.timeout if seconds is None else seconds
        try:
            async with asyncio.timeout(limit):
                with self._translate(action, key):
                    yield
        except ChainlitORMError:
            raise
        except TimeoutError as exc:  # the deadline itself (asyncio.timeout raises it)
            where = f"{key!r} in {self.url}" if key else self.url
            raise StorageTimeoutError(
                mask_url(f"could not {action} {where}: no answer within {limit:g} s (timeout)"),
                detail=key or None,
            ) from exc

    def _path(self, key: str) -> str:
        return object_path(self.root, key)

    # -- BaseStorageClient ----------------------------------------------------------------------

    async def upload_file(
        self,
        object_key: str,
        data: bytes | str,
        mime: str = "application/octet-stream",
        overwrite: bool = True,
        content_disposition: str | None = None,
    ) -> dict[str, Any]:
        """Store ``data`` under ``object_key`` with its Content-Type and Content-Disposition.

        ``str`` data is stored UTF-8 encoded. A non-ASCII file name in ``content_disposition`` is
        re-encoded per RFC 6266/5987 so every backend can store and serve it.

        Returns:
            ``{"object_key": object_key, "url": read_url}``, the shape Chainlit's layers read.

        Raises:
            InvalidIdentifierError: the key is unsafe; nothing was written.
            InvalidInputError: ``mime`` or ``content_disposition`` has CR/LF or is malformed.
            ConflictError: ``overwrite=False`` and the key exists; nothing was written.
            StorageError: the backend failed (chained to the cause); ``StorageTimeoutError``
                when it did not finish within ``timeout`` (the object may or may not exist).
        """
        key = validate_key(object_key)
        path = self._path(key)
        payload = _payload(data)
        content_type = check_content_type(mime or "application/octet-stream")
        disposition = normalize_content_disposition(content_disposition)
        await self._ready()
        async with self._bounded("upload", key):
            async with self._slot():
                await self._upload(key, path, payload, overwrite, content_type, disposition)
            url = await self._read_url(key)
        return {"object_key": key, "url": url}

    async def _upload(
        self,
        key: str,
        path: str,
        payload: bytes,
        overwrite: bool,
        content_type: str,
        disposition: str | None,
    ) -> None:
        with self._translate("upload", key):
            if self._backend is _S3:
                fs = await self._fs()
                extra = {"ContentType": content_type}
                if disposition is not None:
                    extra["ContentDisposition"] = disposition
                mode = "overwrite" if overwrite else "create"
                try:
                    await fs._pipe_file(path, payload, mode=mode, **extra)
                except FileExistsError as exc:
                    raise self._conflict(key) from exc
            elif self._backend is _AZURE:
                from azure.storage.blob import ContentSettings

                fs = await self._fs()
                settings = ContentSettings(
                    content_type=content_type, content_disposition=disposition
                )
                try:
                    await fs._pipe_file(
                        path, payload, overwrite=overwrite, content_settings=settings
                    )
                except FileExistsError as exc:
                    raise self._conflict(key) from exc
            else:
                meta = {"content_type": content_type, "content_disposition": disposition}
                await asyncio.to_thread(self._upload_sync, key, payload, overwrite, meta)

    def _conflict(self, key: str) -> ConflictError:
        return ConflictError(
            f"object {key!r} already exists in {mask_url(self.url)}; pass overwrite=True to "
            "replace it",
            detail=key,
        )

    def _upload_sync(self, key: str, payload: bytes, overwrite: bool, meta: dict[str, Any]) -> None:
        """Worker-thread upload for local/memory: data first, then its sidecar record.

        The data is written (exclusively when ``overwrite`` is False, with ``open(..., "xb")``, so
        the check and the write are one atomic step) before the sidecar, so a conflict never
        touches the existing object's metadata.
        """
        fs, path, side = self._sync_fs, self._path(key), meta_path(self.root, key)
        fs.makedirs(fs._parent(path), exist_ok=True)
        try:
            with fs.open(path, "wb" if overwrite else "xb") as handle:
                handle.write(payload)
        except FileExistsError as exc:
            raise self._conflict(key) from exc
        fs.makedirs(fs._parent(side), exist_ok=True)
        fs.pipe_file(side, json.dumps(meta).encode("utf-8"))

    async def delete_file(self, object_key: str) -> bool:
        """Delete ``object_key``: True if it was deleted, False if there was no such object.

        S3 answers a DELETE of a missing key with success, so existence is checked first (a HEAD);
        a prefix that only exists as a "directory" is not an object and gives False.

        Raises:
            InvalidIdentifierError: the key is unsafe.
            StorageError: the backend failed (permissions, network, credentials), chained.
        """
        key = validate_key(object_key)
        await self._ready()
        async with self._bounded("delete", key), self._slot():
            return await self._delete(key, self._path(key))

    async def discard_file(self, object_key: str) -> None:
        """Remove ``object_key`` (and its sidecar) whether or not it exists, within
        ``cleanup_timeout`` (half of ``timeout``): the clean-up after a failed element write.

        One DELETE, no existence check first: after a timeout the upload may still have landed,
        and an S3/Azure DELETE the server received removes it even if its answer is lost.
        It takes no concurrency slot: it must not queue behind the uploads that are failing.

        Raises:
            InvalidIdentifierError: the key is unsafe.
            StorageError: the backend failed (``StorageTimeoutError`` past ``cleanup_timeout``);
                the object may remain.
        """
        key = validate_key(object_key)
        await self._ready()
        async with self._bounded("remove", key, self.cleanup_timeout):
            if not self._backend.native_async:
                await asyncio.to_thread(self._discard_sync, key)
                return
            fs = await self._fs()
            with contextlib.suppress(FileNotFoundError):  # Azure: absent; S3 never says so
                await fs._rm_file(self._path(key))

    def _discard_sync(self, key: str) -> None:
        fs = self._sync_fs
        for path in (self._path(key), meta_path(self.root, key)):
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(path)

    async def read_file(self, object_key: str) -> bytes:
        """Every byte stored under ``object_key`` (:class:`~chainlit_orm.storage.ReadableStorage`).

        Raises:
            NotFoundError: no such object (a prefix that only exists as a directory included).
            InvalidIdentifierError: the key is unsafe.
            StorageError: the backend failed (``StorageTimeoutError`` past ``timeout``).
        """
        key = validate_key(object_key)
        path = self._path(key)
        await self._ready()
        async with self._bounded("read", key), self._slot():
            if self._backend.native_async:
                fs = await self._fs()
                try:
                    data: bytes | None = bytes(await fs._cat_file(path))
                except (FileNotFoundError, IsADirectoryError):
                    data = None
            else:
                data = await asyncio.to_thread(self._read_sync, path)
        if data is None:
            raise NotFoundError(
                f"no object {key!r} in {mask_url(self.url)}", detail=key
            )
        return data

    async def list_keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix``, sorted (:class:`~chainlit_orm.storage.protocols.
        ListableStorage`); the sidecar records are not objects and are left out. Bounded by
        ``timeout`` times ten: a listing reads pages, not one object (a purge bounds it by its
        own ``timeout`` too: :func:`chainlit_orm.lifecycle.hooks.storage_call`).

        Raises:
            InvalidIdentifierError: the prefix is unsafe.
            StorageError: the backend failed (``StorageTimeoutError`` past the bound).
        """
        return sorted(await self._find_under(prefix))

    async def list_modified(self, prefix: str) -> dict[str, datetime | None]:
        """Every object key under ``prefix`` with the time it was last written, in UTC (None
        where the filesystem does not say): :class:`~chainlit_orm.storage.protocols.
        AgedStorage`, what ``purge`` needs to leave an upload whose row is still being
        written alone. Bounded as :meth:`list_keys`.

        Raises:
            InvalidIdentifierError: the prefix is unsafe.
            StorageError: the backend failed (``StorageTimeoutError`` past the bound).
        """
        found = await self._find_under(prefix)
        return {key: _modified(info) for key, info in sorted(found.items())}

    async def _find_under(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Object key -> the filesystem's details, for every object under ``prefix``."""
        key = validate_key(prefix.rstrip("/"))
        path = self._path(key)
        await self._ready()
        async with self._bounded("list", key, self.timeout * 10), self._slot():
            if self._backend.native_async:
                fs = await self._fs()
                try:
                    found = dict(await fs._find(path, detail=True))
                except FileNotFoundError:
                    found = {}
            else:
                found = await asyncio.to_thread(self._find_sync, path)
        base = path[: -len(key)]  # the root as the filesystem spells it, ending in "/"
        keys: dict[str, dict[str, Any]] = {}
        for item, info in found.items():
            text = str(item)
            for head in (base, base.lstrip("/")):
                if text.startswith(head):
                    rest = text[len(head):]
                    if rest and rest.split("/", 1)[0] != META_DIR:
                        keys[rest] = info if isinstance(info, dict) else {}
                    break
        return keys

    def _find_sync(self, path: str) -> dict[str, Any]:
        try:
            return dict(self._sync_fs.find(path, detail=True))
        except FileNotFoundError:
            return {}

    def _read_sync(self, path: str) -> bytes | None:
        try:
            return bytes(self._sync_fs.cat_file(path))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    async def _delete(self, key: str, path: str) -> bool:
        with self._translate("delete", key):
            if not self._backend.native_async:
                return await asyncio.to_thread(self._delete_sync, key)
            fs = await self._fs()
            try:
                info = await fs._info(path)
                if info.get("type") != "file":
                    return False
                await fs._rm_file(path)
            except FileNotFoundError:
                return False
            return True

    def _delete_sync(self, key: str) -> bool:
        fs, path = self._sync_fs, self._path(key)
        try:
            if fs.info(path).get("type") != "file":
                return False
            fs.rm_file(path)
        except FileNotFoundError:
            return False
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(meta_path(self.root, key))
        return True

    async def get_read_url(self, object_key: str) -> str:
        """Return a URL a browser can open for ``object_key``, valid for ``expires`` seconds.

        S3: presigned GET; Azure: read-only SAS signed with the account key; local and memory: a
        signed URL of the package's route (relative unless ``public_base_url`` is set). The object
        is not checked for existence (as with a presigned URL, a missing object is a 404 later).

        Raises:
            InvalidIdentifierError: the key is unsafe.
            StorageError: signing failed (chained).
        """
        key = validate_key(object_key)
        await self._ready()
        async with self._bounded("sign a read URL for", key):
            return await self._read_url(key)

    async def _read_url(self, key: str) -> str:
        path = self._path(key)
        if self._backend.native_async:
            with self._translate("sign a read URL for", key):
                fs = await self._fs()
                url: str = await fs._url(path, expires=self.expires)
                return url
        # Rounded up: ``int(now)`` would cut up to a second off the promised lifetime, so a URL
        # signed at x.99 s with expires=1 would already be dead 0.01 s later.
        expires_at = math.ceil(time.time()) + self.expires
        signature = _signing.sign(self._signing_key, self.name, key, expires_at)
        base = self.public_base_url or self._root_path
        quoted = quote(key, safe="/")
        path = f"{served.ROUTE_PATH}/{self.name}/{quoted}"
        return f"{base}{path}?expires={expires_at}&sig={signature}"

    async def close(self) -> None:
        """Release this storage's HTTP sessions and connections; never raises.

        Each async filesystem is closed on its own loop: the current loop's is awaited here; one
        created on another, still-running loop is closed there; one of a closed loop is dropped.
        What is caught is logged at debug level: a failing ``close()`` must not mask the error
        that led to it or break Chainlit's shutdown.
        """
        current = asyncio.get_running_loop()
        entries, self._async_fs = list(self._async_fs.items()), {}
        for loop, task in entries:
            try:
                if loop is current:
                    if not task.done():
                        task.cancel()
                        continue
                    if task.cancelled() or task.exception() is not None:
                        continue
                    await self._close_async_fs(task.result())
                elif not loop.is_closed() and loop.is_running() and task.done():
                    if not task.cancelled() and task.exception() is None:
                        future = asyncio.run_coroutine_threadsafe(
                            self._close_async_fs(task.result()), loop
                        )
                        await asyncio.wrap_future(future)
                else:
                    logger.debug("chainlit-orm storage: dropped a filesystem of a closed loop")
            except Exception:
                logger.debug(
                    "chainlit-orm storage: error while closing %s",
                    mask_url(self.url),
                    exc_info=True,
                )

    async def _close_async_fs(self, fs: Any) -> None:
        if self._backend is _S3:
            creator = getattr(fs, "_s3creator", None)
            fs._s3 = None
            if creator is not None:
                await creator.__aexit__(None, None, None)
            return
        client = fs.service_client
        await client.close()
        credential = getattr(fs, "credential", None)
        if credential is not None and hasattr(credential, "close"):
            await credential.close()
        _detach_finalizers(lambda obj: getattr(obj, "service_client", None) is client)

    # -- the read route's side (local and memory) -----------------------------------------------

    def verify_read_url(self, key: str, expires: str, signature: str) -> bool:
        """Whether a read URL's ``signature`` is this storage's for ``key`` and unexpired."""
        return _signing.verify(self._signing_key, self.name, key, expires, signature, time.time())

    async def open_object(self, key: str) -> OpenObject | None:
        """Open ``key`` for the route, or None if it is not a file (route backends only).

        The object is opened, and its size taken from the open handle, before the route sends a
        status line: an object deleted or replaced afterwards is still served whole from the
        handle (a local file stays readable once unlinked; memory is served from a snapshot),
        and one deleted before is a 404, never a response that breaks half-way.
        """
        async with self._bounded("read", key):
            return await asyncio.to_thread(self._open_sync, key)

    def _open_sync(self, key: str) -> OpenObject | None:
        fs, path = self._sync_fs, self._path(key)
        try:
            if self._backend is _MEMORY:
                # fsspec's memory filesystem hands every reader the same file object, so
                # concurrent reads would move each other's position: serve a snapshot.
                reader: IO[bytes] = io.BytesIO(fs.cat_file(path))
            else:
                reader = fs.open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        try:
            size = reader.seek(0, io.SEEK_END)
            reader.seek(0)
            try:
                meta = json.loads(fs.cat_file(meta_path(self.root, key)))
            except FileNotFoundError:
                meta = {}
            except ValueError as exc:
                raise StorageError(
                    f"the metadata record of {key!r} in {mask_url(self.url)} is corrupt",
                    detail=key,
                ) from exc
        except BaseException:
            reader.close()
            raise
        info = ObjectInfo(
            size=size,
            content_type=meta.get("content_type") or "application/octet-stream",
            content_disposition=meta.get("content_disposition"),
        )
        return OpenObject(info=info, reader=reader)

    async def read_range(
        self, key: str, opened: OpenObject, start: int, end: int
    ) -> AsyncIterator[bytes]:
        """Yield bytes ``[start, end)`` of an opened object in 1 MiB chunks read in a worker
        thread, each read within ``timeout``; the handle is closed at the end."""
        reader = opened.reader
        try:
            async with self._bounded("read", key):
                await asyncio.to_thread(reader.seek, start)
            remaining = end - start
            while remaining > 0:
                async with self._bounded("read", key):
                    chunk: bytes = await asyncio.to_thread(
                        reader.read, min(_READ_CHUNK, remaining)
                    )
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk
        finally:
            await opened.aclose()

    def __repr__(self) -> str:
        return f"FsspecStorage({mask_url(self.url)!r}, name={self.name!r})"


def _payload(data: object) -> bytes:
    """The bytes to store: ``str`` as UTF-8; anything else must already be bytes-like."""
    try:
        if isinstance(data, str):
            return data.encode("utf-8")
        if isinstance(data, bytes | bytearray | memoryview):
            return bytes(data)
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            "element content is text with a lone surrogate, which UTF-8 cannot encode"
        ) from exc
    raise InvalidInputError(f"content must be bytes or str, got {type(data).__name__}")


def _warmed_aio_session(kwargs: dict[str, Any]) -> Any:
    """Build the ``AioSession`` s3fs would build, with its S3 data files already loaded.

    Runs in a worker thread with its own short-lived loop: the throwaway client uses explicit dummy
    credentials, a region and an endpoint, so nothing is resolved or sent over the network; only
    the session's loader cache is kept.
    """
    from aiobotocore.session import AioSession

    session = AioSession(**kwargs)

    async def warm() -> None:
        async with session.create_client(
            "s3",
            region_name="us-east-1",
            endpoint_url="http://127.0.0.1:9",
            aws_access_key_id="warm-up",
            aws_secret_access_key="warm-up",  # noqa: S106 (never used to sign anything sent)
        ):
            pass

    asyncio.run(warm())
    return session


def _detach_finalizers(match: Callable[[Any], bool]) -> None:
    """Detach adlfs's ``weakref.finalize`` hooks for a filesystem we closed ourselves.

    adlfs registers ``sync(self.loop, close_service_client, self)`` at construction. On an
    ``asynchronous=True`` instance ``self.loop`` is None, so at interpreter exit the hook fails
    with "Loop is not running"; it also holds the instance in its arguments, so the instance is
    never collected. After :meth:`FsspecStorage.close` both are pointless.
    """
    registry = getattr(weakref.finalize, "_registry", {})
    for finalizer in list(registry):
        peeked = finalizer.peek()
        if peeked is not None and match(peeked[0]):
            finalizer.detach()


def _modified(info: Mapping[str, Any]) -> datetime | None:
    """The last-write time in an fsspec ``info`` dict, as an aware UTC datetime: local files
    give ``mtime`` (epoch seconds), memory ``created``, S3 ``LastModified``, Azure
    ``last_modified``; None when there is none."""
    for name in ("LastModified", "last_modified", "mtime", "created", "modified"):
        value = info.get(name)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                parsed = datetime.fromisoformat(value)
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None
