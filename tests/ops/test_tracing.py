"""Issue 18 item 6: OpenTelemetry spans, tested with the SDK's in-memory exporter: exact span
names, parent/child, attributes, on SQLite and DynamoDB (moto), for storage calls, and an error
span; off by default and then nothing changes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from chainlit.element import Text
from chainlit.types import Pagination, ThreadFilter
from chainlit.user import User
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import chainlit_orm
from chainlit_orm import FsspecStorage, tracing
from chainlit_orm.errors import ConfigurationError, NotFoundError, StorageError
from chainlit_orm.layers.dynamodb import DynamoDataLayer
from tests.aws import MOTO_ENDPOINT, REGION, aws_env, dynamodb

__all__ = ["aws_env", "dynamodb"]

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _provider() -> None:
    """One SDK provider for the process (OpenTelemetry allows setting it once); the exporter
    is added to whichever SDK provider is there."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        current = trace.get_tracer_provider()
    assert isinstance(current, TracerProvider)
    current.add_span_processor(SimpleSpanProcessor(EXPORTER))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


@pytest.fixture
async def storage() -> AsyncIterator[FsspecStorage]:
    client = FsspecStorage(f"memory://clorm-otel-{uuid.uuid4().hex}", mount=False,
                           secret="s" * 32)
    yield client
    await client.close()


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name != "app"]


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def step(thread_id: str, kind: str = "user_message") -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "threadId": thread_id, "name": "alice", "type": kind,
            "output": "hello", "streaming": False, "metadata": {}}


def sql(operation: str, *, statements: int, rows: int, thread_id: str | None = None
        ) -> dict[str, Any]:
    out: dict[str, Any] = {
        "db.system.name": "sqlite", "chainlit_orm.backend": "sql",
        "db.operation.name": operation, "chainlit_orm.statements": statements,
        "db.response.returned_rows": rows, "chainlit_orm.retries": 0}
    if thread_id is not None:
        out["chainlit_orm.thread_id"] = thread_id
    return out


@pytest.mark.sqlite
async def test_sqlite_calls_and_a_storage_call(tmp_path: Path, storage: FsspecStorage,
                                               spans: InMemorySpanExporter) -> None:
    layer = chainlit_orm.SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
                                      storage=storage, tracing=True)
    try:
        await layer.check()  # creates the schema: not counted below
        spans.clear()
        user = await layer.create_user(User(identifier="alice"))
        assert user is not None
        thread_id = str(uuid.uuid4())
        with trace.get_tracer("tests").start_as_current_span("app") as app:
            await layer.update_thread(thread_id, name="hello", user_id=user.id)
            await layer.create_step(step(thread_id))
            element = Text(name="notes.txt", content="some notes", thread_id=thread_id)
            await layer.create_element(element)
            thread = await layer.get_thread(thread_id)
            assert thread is not None and len(thread["steps"]) == 1
            page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))
            assert [t["id"] for t in page.data] == [thread_id]
    finally:
        await layer.close()
    got = finished(spans)
    assert [s.name for s in got] == [
        "chainlit_orm.create_user", "chainlit_orm.update_thread", "chainlit_orm.create_step",
        "chainlit_orm.storage.upload_file", "chainlit_orm.create_element",
        "chainlit_orm.storage.get_read_url", "chainlit_orm.get_thread",
        "chainlit_orm.list_threads"]
    by_name = {s.name: s for s in got}
    app_id = app.get_span_context().span_id
    assert by_name["chainlit_orm.create_user"].parent is None
    for name in ("update_thread", "create_step", "create_element", "get_thread",
                 "list_threads"):
        assert by_name[f"chainlit_orm.{name}"].parent.span_id == app_id, name
    upload = by_name["chainlit_orm.storage.upload_file"]
    assert upload.parent.span_id == by_name["chainlit_orm.create_element"].context.span_id
    sign = by_name["chainlit_orm.storage.get_read_url"]
    assert sign.parent.span_id == by_name["chainlit_orm.get_thread"].context.span_id
    assert attributes(upload) == {
        "chainlit_orm.storage.backend": "memory", "db.operation.name": "upload_file",
        "chainlit_orm.object_key": f"threads/{thread_id}/files/{element.id}",
        "chainlit_orm.bytes": len(b"some notes")}
    assert upload.kind is trace.SpanKind.CLIENT and upload.status.status_code is StatusCode.UNSET
    assert attributes(by_name["chainlit_orm.create_user"]) == sql(
        "create_user", statements=1, rows=1)
    assert attributes(by_name["chainlit_orm.update_thread"]) == sql(
        "update_thread", statements=1, rows=0, thread_id=thread_id)
    # a user message: BEGIN, the thread's activity (UPDATE), the step (INSERT), COMMIT
    assert attributes(by_name["chainlit_orm.create_step"]) == sql(
        "create_step", statements=4, rows=0, thread_id=thread_id)
    assert attributes(by_name["chainlit_orm.create_element"]) == sql(
        "create_element", statements=1, rows=0, thread_id=thread_id)
    assert attributes(by_name["chainlit_orm.get_thread"]) == sql(
        "get_thread", statements=2, rows=2, thread_id=thread_id)
    assert attributes(by_name["chainlit_orm.list_threads"]) == sql(
        "list_threads", statements=1, rows=1)


@pytest.mark.sqlite
async def test_an_error_span_records_the_error_type(tmp_path: Path,
                                                    spans: InMemorySpanExporter) -> None:
    layer = chainlit_orm.SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
                                      tracing=True)
    try:
        await layer.check()
        spans.clear()
        thread_id = str(uuid.uuid4())
        with pytest.raises(NotFoundError):
            await layer.update_thread(thread_id, user_id=str(uuid.uuid4()))
    finally:
        await layer.close()
    (span,) = finished(spans)
    assert span.name == "chainlit_orm.update_thread"
    assert attributes(span) == {**sql("update_thread", statements=1, rows=0,
                                      thread_id=thread_id), "error.type": "NotFoundError"}
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]
    assert span.events[0].attributes["exception.type"].endswith("NotFoundError")


async def test_a_storage_error_span(spans: InMemorySpanExporter) -> None:
    storage = FsspecStorage("file:///proc/clorm-otel", mount=False, secret="s" * 32,
                            tracing=True)
    with pytest.raises(StorageError):
        await storage.upload_file("a/b.txt", b"xyz")
    (span,) = finished(spans)
    assert span.name == "chainlit_orm.storage.upload_file"
    assert attributes(span) == {
        "chainlit_orm.storage.backend": "local", "db.operation.name": "upload_file",
        "chainlit_orm.object_key": "a/b.txt", "chainlit_orm.bytes": 3,
        "error.type": "StorageError"}
    assert span.status.status_code is StatusCode.ERROR


@pytest.mark.dynamodb
async def test_dynamodb_calls(dynamodb: Any, storage: FsspecStorage,
                              spans: InMemorySpanExporter) -> None:
    name = f"clorm_otel_{uuid.uuid4().hex[:12]}"
    await chainlit_orm.migrate(f"dynamodb://{name}?region={REGION}&endpoint_url={MOTO_ENDPOINT}")
    layer = DynamoDataLayer(name, storage=storage, region=REGION, endpoint_url=MOTO_ENDPOINT,
                            tracing=True)
    try:
        await layer.check()
        user = await layer.create_user(User(identifier="alice"))
        assert user is not None
        thread_id = str(uuid.uuid4())
        with trace.get_tracer("tests").start_as_current_span("app") as app:
            await layer.update_thread(thread_id, name="hello", user_id=user.id)
            await layer.create_step(step(thread_id))
            thread = await layer.get_thread(thread_id)
            assert thread is not None and len(thread["steps"]) == 1
    finally:
        await layer.close()
        dynamodb.delete_table(TableName=name)
    got = finished(spans)
    assert [s.name for s in got] == [
        "chainlit_orm.storage.upload_file", "chainlit_orm.storage.read_file",
        "chainlit_orm.storage.delete_file", "chainlit_orm.check", "chainlit_orm.create_user",
        "chainlit_orm.update_thread", "chainlit_orm.create_step", "chainlit_orm.get_thread"]
    by_name = {s.name: s for s in got}
    check = by_name["chainlit_orm.check"]
    for storage_call in got[:3]:
        assert storage_call.parent.span_id == check.context.span_id
    app_id = app.get_span_context().span_id
    for call in got[5:]:
        assert call.parent.span_id == app_id

    def dynamo(operation: str, *, api_calls: int, rows: int, thread: bool = True
               ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "db.system.name": "aws.dynamodb", "chainlit_orm.backend": "dynamodb",
            "db.operation.name": operation, "chainlit_orm.api_calls": api_calls,
            "db.response.returned_rows": rows, "chainlit_orm.retries": 0}
        if thread:
            out["chainlit_orm.thread_id"] = thread_id
        return out

    assert attributes(check) == dynamo("check", api_calls=2, rows=1, thread=False)
    assert attributes(by_name["chainlit_orm.create_user"]) == dynamo(
        "create_user", api_calls=3, rows=1, thread=False)
    assert attributes(by_name["chainlit_orm.update_thread"]) == dynamo(
        "update_thread", api_calls=2, rows=1)
    assert attributes(by_name["chainlit_orm.create_step"]) == dynamo(
        "create_step", api_calls=1, rows=0)
    assert attributes(by_name["chainlit_orm.get_thread"]) == dynamo(
        "get_thread", api_calls=1, rows=2)


@pytest.mark.sqlite
async def test_off_by_default_changes_nothing(tmp_path: Path, spans: InMemorySpanExporter,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tracing.ENV_TRACING, raising=False)
    layer = chainlit_orm.SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}")
    try:
        assert layer.tracing is False
        assert not set(tracing.TRACED_LAYER_CALLS) & set(vars(layer))  # the class's methods, as is
        assert await layer.get_user("nobody") is None
    finally:
        await layer.close()
    assert finished(spans) == []


@pytest.mark.sqlite
async def test_the_environment_variable(tmp_path: Path, spans: InMemorySpanExporter,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracing.ENV_TRACING, "1")
    layer = chainlit_orm.SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}")
    off = chainlit_orm.SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
                                    tracing=False)  # the argument wins
    try:
        assert (layer.tracing, off.tracing) == (True, False)
        assert await layer.get_user("nobody") is None
        assert await off.get_user("nobody") is None
    finally:
        await layer.close()
        await off.close()
    assert [s.name for s in finished(spans)] == ["chainlit_orm.get_user"]
    monkeypatch.setenv(tracing.ENV_TRACING, "maybe")
    with pytest.raises(ConfigurationError, match="CHAINLIT_ORM_TRACING='maybe'"):
        chainlit_orm.SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}")


@pytest.mark.sqlite
async def test_a_queued_call_is_traced_when_it_runs(tmp_path: Path,
                                                    spans: InMemorySpanExporter) -> None:
    """Before a session's first message Chainlit's queue holds the call; the span is made when
    the queue is flushed and the write happens, not when it is queued."""
    from chainlit.context import init_ws_context
    from chainlit.session import WebsocketSession

    layer = chainlit_orm.SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
                                      tracing=True)
    thread_id = str(uuid.uuid4())
    session = WebsocketSession(
        id=str(uuid.uuid4()), socket_id=str(uuid.uuid4()), emit=lambda *a: None,
        emit_call=lambda *a: None, user_env={}, client_type="webapp", thread_id=thread_id)
    try:
        await layer.check()
        spans.clear()
        init_ws_context(session)
        queued = step(thread_id, kind="assistant_message")
        assert await layer.create_step(queued) is None
        assert list(session.thread_queues) == ["create_step"]
        assert finished(spans) == []
        session.has_first_interaction = True
        await session.flush_method_queue()
        assert await layer.get_step(queued["id"]) is not None
    finally:
        await session.delete()
        await layer.close()
    assert [s.name for s in finished(spans)] == ["chainlit_orm.create_step",
                                                 "chainlit_orm.get_step"]
    # a step of a thread not written yet: its INSERT (refused: no thread), the stub thread's,
    # the step's again (the statements the layer's on_statement listeners see)
    assert attributes(finished(spans)[0]) == sql("create_step", statements=3, rows=0,
                                                 thread_id=thread_id)
