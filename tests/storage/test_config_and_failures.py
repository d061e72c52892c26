"""Configuration (options, environment, missing extras) and real backend failures."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest

from chainlit_orm.errors import (
    ConfigurationError,
    MissingDependencyError,
    StorageError,
    StorageTimeoutError,
)
from chainlit_orm.storage import FsspecStorage, storage_from_env
from tests.storage.conftest import (
    AZURITE_BLOB,
    AZURITE_CONN,
    MOTO_ENDPOINT,
    TEST_SECRET,
    _free_port,
    require_service,
    unique,
)

ENV_VARS = (
    "CHAINLIT_ORM_STORAGE_URL",
    "CHAINLIT_ORM_STORAGE_SECRET",
    "CHAINLIT_ORM_STORAGE_PUBLIC_BASE_URL",
    "CHAINLIT_ORM_STORAGE_TIMEOUT",
    "CHAINLIT_ORM_STORAGE_CONNECT_TIMEOUT",
    "CHAINLIT_ORM_STORAGE_READ_TIMEOUT",
    "CHAINLIT_AUTH_SECRET",
    "STORAGE_EXPIRY_TIME",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "CHAINLIT_ROOT_PATH",
    "CHAINLIT_PARENT_ROOT_PATH",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_from_env_unset_is_none(clean_env: pytest.MonkeyPatch) -> None:
    assert storage_from_env() is None
    assert FsspecStorage.from_env() is None


async def test_from_env_reads_everything_at_construction(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("CHAINLIT_ORM_STORAGE_URL", str(tmp_path / "env"))
    clean_env.setenv("CHAINLIT_ORM_STORAGE_SECRET", TEST_SECRET)
    clean_env.setenv("CHAINLIT_ORM_STORAGE_PUBLIC_BASE_URL", "https://files.example.com/")
    clean_env.setenv("STORAGE_EXPIRY_TIME", "120")
    storage = storage_from_env(mount=False)
    assert storage is not None
    assert storage.root == str(tmp_path / "env")
    assert storage.expires == 120
    assert storage.public_base_url == "https://files.example.com"
    # read at construction: later changes do not affect the instance
    clean_env.setenv("STORAGE_EXPIRY_TIME", "9")
    clean_env.setenv("CHAINLIT_ORM_STORAGE_SECRET", "a-different-secret-value-123")
    url = await storage.get_read_url("k")
    assert url.startswith(f"https://files.example.com/chainlit-orm/files/{storage.name}/k?")
    expires = int(url.split("expires=")[1].split("&")[0])
    sig = url.split("sig=")[1]
    assert storage.verify_read_url("k", str(expires), sig) is True
    twin = FsspecStorage(str(tmp_path / "env"), secret=TEST_SECRET, mount=False)
    assert twin.name == storage.name
    assert twin.verify_read_url("k", str(expires), sig) is True


def test_secret_fallbacks(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("CHAINLIT_AUTH_SECRET", "chainlit-jwt-secret-xyz")
    from_auth = FsspecStorage(str(tmp_path / "a"), mount=False)
    explicit = FsspecStorage(str(tmp_path / "b"), secret="chainlit-jwt-secret-xyz", mount=False)
    assert from_auth._signing_key == explicit._signing_key
    # derived, never the raw JWT secret
    assert from_auth._signing_key != b"chainlit-jwt-secret-xyz"
    clean_env.delenv("CHAINLIT_AUTH_SECRET")
    random_one = FsspecStorage(str(tmp_path / "c"), mount=False)
    random_two = FsspecStorage(str(tmp_path / "d"), mount=False)
    assert random_one._signing_key == random_two._signing_key  # one per process
    assert random_one._signing_key != from_auth._signing_key
    with pytest.raises(ConfigurationError):
        FsspecStorage(str(tmp_path / "e"), secret="short", mount=False)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("gs://bucket/x", {}),
        ("ftp://host/x", {}),
        ("s3://", {}),
        ("memory://", {}),
        ("az://container", {}),  # no account or connection string
        ("az://container", {"account_name": "acct"}),  # no account key: cannot sign SAS
        ("az://container", {"connection_string": AZURITE_CONN, "secret": TEST_SECRET}),
        ("memory://x", {"expires": 0}),
        ("memory://x", {"expires": -5}),
        ("s3://bucket", {"expires": 8 * 24 * 3600}),
        ("memory://x", {"name": "bad name!"}),
        ("memory://x", {"concurrency": 0}),
        ("", {}),
    ],
)
def test_bad_configuration_fails_at_construction(
    clean_env: pytest.MonkeyPatch, url: str, options: dict[str, object]
) -> None:
    with pytest.raises(ConfigurationError):
        FsspecStorage(url, mount=False, **options)


def test_bad_expiry_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STORAGE_EXPIRY_TIME", "soon")
    with pytest.raises(ConfigurationError, match="STORAGE_EXPIRY_TIME"):
        FsspecStorage("memory://x", mount=False, secret=TEST_SECRET)


def test_aws_and_azure_env_filled_in(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5055")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "env-key")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    clean_env.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    s3 = FsspecStorage("s3://bucket/p")
    assert s3._options == {
        "endpoint_url": "http://127.0.0.1:5055",
        "key": "env-key",
        "secret": "env-secret",
        "client_kwargs": {"region_name": "eu-west-1"},
        "config_kwargs": {"connect_timeout": 5.0, "read_timeout": 30.0},
        "use_listings_cache": False,
    }
    explicit = FsspecStorage("s3://bucket/p", endpoint_url="http://other", key="k", secret="s")
    assert explicit._options["endpoint_url"] == "http://other"
    assert (explicit._options["key"], explicit._options["secret"]) == ("k", "s")
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", AZURITE_CONN)
    azure = FsspecStorage("az://container/p")
    assert azure._options["connection_string"] == AZURITE_CONN
    assert (azure._options["connection_timeout"], azure._options["read_timeout"]) == (5.0, 30.0)


@pytest.mark.parametrize(
    ("module", "extra", "url"), [("s3fs", "s3", "s3://b/p"), ("adlfs", "azure", "az://c/p")]
)
def test_missing_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, module: str, extra: str, url: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError) as caught:
        FsspecStorage(url, connection_string=AZURITE_CONN)
    assert str(caught.value) == (
        f"{module} is not installed; install it with: pip install 'chainlit-orm[{extra}]'"
    )
    assert isinstance(caught.value, ImportError)


# -- real failures -------------------------------------------------------------------------------


async def test_local_failure_is_storage_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "blocker").write_bytes(b"a file where a directory is needed")
    storage = FsspecStorage(str(root), secret=TEST_SECRET, mount=False)
    with pytest.raises(StorageError) as caught:
        await storage.upload_file("blocker/child.txt", b"x")
    assert isinstance(caught.value.__cause__, OSError)
    assert str(root) in str(caught.value)
    with pytest.raises(StorageError) as deleting:
        await storage.delete_file("blocker/child.txt")
    assert isinstance(deleting.value.__cause__, NotADirectoryError)
    assert (root / "blocker").read_bytes() == b"a file where a directory is needed"


@pytest.mark.azure
async def test_azure_wrong_key_is_storage_error_with_masked_secret() -> None:
    require_service(AZURITE_BLOB, "Azurite")
    wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    conn = AZURITE_CONN.replace(AZURITE_CONN.split("AccountKey=")[1].split(";")[0], wrong_key)
    storage = FsspecStorage(f"az://{unique('cl-orm')}/p", connection_string=conn)
    try:
        for operation in (
            storage.upload_file("k", b"x"),
            storage.delete_file("k"),
        ):
            with pytest.raises(StorageError) as caught:
                await operation
            assert caught.value.__cause__ is not None
            assert "az://" in str(caught.value)
            assert wrong_key not in str(caught.value)
    finally:
        await storage.close()


@pytest.mark.s3
async def test_s3_unreachable_endpoint_is_storage_error() -> None:
    require_service(MOTO_ENDPOINT, "moto's S3 server")
    endpoint = f"http://127.0.0.1:{_free_port()}"
    storage = FsspecStorage(
        f"s3://{unique('cl-orm')}/p",
        endpoint_url=endpoint,
        key="AKIDEXAMPLE",
        secret="super-secret-value",
        config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2},
    )
    try:
        with pytest.raises(StorageError) as caught:
            await storage.upload_file("k", b"x")
        assert caught.value.__cause__ is not None
        assert "super-secret-value" not in str(caught.value)
        with pytest.raises(StorageError):
            await storage.delete_file("k")
    finally:
        await storage.close()


@pytest.mark.s3
async def test_s3_missing_bucket_upload_is_storage_error() -> None:
    require_service(MOTO_ENDPOINT, "moto's S3 server")
    storage = FsspecStorage(
        f"s3://{unique('cl-orm-absent')}/p", endpoint_url=MOTO_ENDPOINT, key="t", secret="t"
    )
    try:
        with pytest.raises(StorageError) as caught:
            await storage.upload_file("k", b"x")
        assert isinstance(caught.value.__cause__, FileNotFoundError)
    finally:
        await storage.close()


@pytest.mark.s3
async def test_close_never_raises_and_logs_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    require_service(MOTO_ENDPOINT, "moto's S3 server")
    storage = FsspecStorage(
        f"s3://{unique('cl-orm')}/p", endpoint_url=MOTO_ENDPOINT, key="t", secret="t"
    )
    fs = await storage._fs()

    class Boom:
        async def __aexit__(self, *exc: object) -> None:
            raise RuntimeError("boom while closing")

    real_creator = fs._s3creator
    fs._s3creator = Boom()
    with caplog.at_level(logging.DEBUG, logger="chainlit_orm.storage.client"):
        await storage.close()
    assert [r.levelno for r in caplog.records if "closing" in r.getMessage()] == [logging.DEBUG]
    await real_creator.__aexit__(None, None, None)


# -- timeouts ------------------------------------------------------------------------------------


def test_timeouts_default_and_reach_the_sdks(clean_env: pytest.MonkeyPatch) -> None:
    local = FsspecStorage("memory://timeouts-default", secret=TEST_SECRET, mount=False)
    assert (local.timeout, local.connect_timeout, local.read_timeout) == (120.0, 5.0, 30.0)
    assert local.cleanup_timeout == 60.0
    s3 = FsspecStorage("s3://b/p", key="k", secret="s", timeout=9, connect_timeout=1.5,
                       read_timeout=4)
    assert s3.timeout == 9.0
    assert s3._options["config_kwargs"] == {"connect_timeout": 1.5, "read_timeout": 4.0}
    # the SDK's own settings, given explicitly, win over the storage's
    mine = FsspecStorage("s3://b/p", key="k", secret="s", read_timeout=4,
                         config_kwargs={"read_timeout": 99, "retries": {"mode": "standard"}})
    assert mine._options["config_kwargs"] == {
        "read_timeout": 99, "retries": {"mode": "standard"}, "connect_timeout": 5.0,
    }
    azure = FsspecStorage("az://c/p", connection_string=AZURITE_CONN, connect_timeout=2,
                          read_timeout=3)
    assert (azure._options["connection_timeout"], azure._options["read_timeout"]) == (2.0, 3.0)


def test_timeouts_from_the_environment_at_construction(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CHAINLIT_ORM_STORAGE_TIMEOUT", "7.5")
    clean_env.setenv("CHAINLIT_ORM_STORAGE_CONNECT_TIMEOUT", "0.5")
    clean_env.setenv("CHAINLIT_ORM_STORAGE_READ_TIMEOUT", "2")
    storage = FsspecStorage("memory://timeouts-env", secret=TEST_SECRET, mount=False)
    clean_env.setenv("CHAINLIT_ORM_STORAGE_TIMEOUT", "99")  # read once, at construction
    assert (storage.timeout, storage.connect_timeout, storage.read_timeout) == (7.5, 0.5, 2.0)
    assert storage.cleanup_timeout == 3.75
    explicit = FsspecStorage("memory://timeouts-env2", secret=TEST_SECRET, mount=False, timeout=1)
    assert explicit.timeout == 1.0


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "5", None])
def test_bad_timeouts_fail_at_construction(clean_env: pytest.MonkeyPatch, bad: object) -> None:
    if bad is None:
        clean_env.setenv("CHAINLIT_ORM_STORAGE_READ_TIMEOUT", "soon")
        with pytest.raises(ConfigurationError, match="CHAINLIT_ORM_STORAGE_READ_TIMEOUT"):
            FsspecStorage("memory://bad-timeout", secret=TEST_SECRET, mount=False)
        return
    for option in ("timeout", "connect_timeout", "read_timeout"):
        with pytest.raises(ConfigurationError, match=option) as caught:
            FsspecStorage("memory://bad-timeout", secret=TEST_SECRET, mount=False,
                          **{option: bad})
        assert caught.value.detail == option


async def test_a_local_call_that_never_returns_ends_in_a_timeout(tmp_path: Path) -> None:
    """A FIFO nobody reads: opening it to write blocks the worker thread for ever, as a hung
    network mount would. The call still ends, typed, at its deadline; the test then opens the
    other end so the abandoned thread can finish."""
    root = tmp_path / "root"
    (root / "fifo").parent.mkdir(parents=True)
    os.mkfifo(root / "fifo")
    os.mkfifo(root / "fifo-to-read")  # its own FIFO: the upload's thread may still hold "fifo"
    storage = FsspecStorage(str(root), secret=TEST_SECRET, mount=False, timeout=0.5)
    upload = asyncio.ensure_future(storage.upload_file("fifo", b"never written"))
    with pytest.raises(StorageTimeoutError) as caught:
        await upload
    assert caught.value.detail == "fifo"
    assert "no answer within 0.5 s" in str(caught.value)
    # meet the blocked thread at the FIFO (a blocking open returns once it has opened its end,
    # however late the thread pool ran it), so it finishes
    os.close(await asyncio.to_thread(os.open, root / "fifo", os.O_RDONLY))
    reading = asyncio.ensure_future(storage.read_file("fifo-to-read"))
    with pytest.raises(StorageTimeoutError):
        await reading
    os.close(await asyncio.to_thread(os.open, root / "fifo-to-read", os.O_WRONLY))
