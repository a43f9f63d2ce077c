"""OpenTelemetry (``aioqueue.contrib.otel``): an enqueue and its run are one trace, with
the W3C trace context carried in the message; nothing changes when not instrumented."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aioqueue import AioQueue, Task
from aioqueue.contrib.otel import instrument, uninstrument


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    memory.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    """A provider of the test's own (the global one can be set only once per process)."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


async def test_a_run_is_a_child_of_its_send_in_the_enqueuers_trace(
        any_app: AioQueue, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    app = any_app
    instrument(app, tracer_provider=provider)
    tracer = provider.get_tracer("test")

    @app.task(name="o.add")
    async def add(x: int, y: int) -> int:
        with tracer.start_as_current_span("inside the task"):
            return x + y

    @app.task(name="o.bad")
    async def bad() -> None:
        raise KeyError("missing")

    async with app.worker(concurrency=2):
        with tracer.start_as_current_span("parent") as parent:
            handle = await add.delay(1, 2)
        assert await handle == 3
        alone = await add.delay(5, 5)  # no span current: the send span starts a trace
        assert await alone == 10
        with pytest.raises(KeyError):
            await (await bad.delay()).get(timeout=10)

    trace_id, parent_id = ids(spans(exporter, "parent")[0])
    assert parent.get_span_context().trace_id == trace_id
    send_first, send_alone = spans(exporter, "send o.add")
    run_first, run_alone = spans(exporter, "run o.add")
    assert send_first.kind is SpanKind.PRODUCER and run_first.kind is SpanKind.CONSUMER
    assert ids(send_first)[0] == ids(run_first)[0] == trace_id
    assert parent_of(send_first) == parent_id
    assert parent_of(run_first) == ids(send_first)[1]
    inner = spans(exporter, "inside the task")[0]
    assert ids(inner)[0] == trace_id and parent_of(inner) == ids(run_first)[1]
    assert send_first.attributes is not None and run_first.attributes is not None
    assert send_first.attributes["messaging.message.id"] == handle.id
    assert send_first.attributes["messaging.destination.name"] == "default"
    assert run_first.attributes["aioqueue.task.state"] == "SUCCESS"
    # Sent outside any span: its own trace, still one with its run.
    assert parent_of(send_alone) is None and ids(send_alone)[0] != trace_id
    assert ids(run_alone)[0] == ids(send_alone)[0]
    assert parent_of(run_alone) == ids(send_alone)[1]
    [failed] = spans(exporter, "run o.bad")
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert failed.attributes is not None and failed.attributes["aioqueue.task.state"] == "FAILURE"


async def test_a_fastapi_request_and_the_task_it_enqueued_are_one_trace(
        app: AioQueue, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    from fastapi import FastAPI

    instrument(app, tracer_provider=provider)
    tracer = provider.get_tracer("test")

    @app.task(name="o.square")
    async def square(x: int) -> int:
        return x * x

    api = FastAPI()

    @api.get("/square/{x}")
    async def endpoint(x: int) -> dict[str, int]:
        return {"result": await (await square.delay(x))}

    async def traced(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """What an ASGI server instrumentation does: a SERVER span around the request."""
        if scope["type"] != "http":
            return await api(scope, receive, send)
        with tracer.start_as_current_span(f"GET {scope['path']}", kind=SpanKind.SERVER):
            await api(scope, receive, send)

    async with app.worker(concurrency=2):
        transport = httpx.ASGITransport(app=traced)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            response = await client.get("/square/7")
    assert response.json() == {"result": 49}

    [request] = spans(exporter, "GET /square/7")
    [send] = spans(exporter, "send o.square")
    [run] = spans(exporter, "run o.square")
    assert ids(request)[0] == ids(send)[0] == ids(run)[0]
    assert parent_of(send) == ids(request)[1] and parent_of(run) == ids(send)[1]


async def test_retries_batches_and_sync_senders_keep_the_trace(
        app: AioQueue, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    instrument(app, tracer_provider=provider)
    tracer = provider.get_tracer("test")

    @app.task(name="o.flaky", bind=True, default_retry_delay=0)
    async def flaky(self: Task[..., Any]) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=RuntimeError("again"))
        return "fine"

    @app.task(name="o.noop")
    async def noop(i: int) -> int:
        return i

    async with app.worker(concurrency=4):
        assert await (await flaky.delay()).get(timeout=10) == "fine"
        with tracer.start_as_current_span("batch"):
            handles = await noop.delay_many([(i,) for i in range(3)])
        assert [await h for h in handles] == [0, 1, 2]

        # Sync code (a Django/Flask view, in a thread) sends through aioqueue's portal.
        def view() -> Any:
            with tracer.start_as_current_span("sync view"):
                return noop.delay(9).get(timeout=10)

        assert await anyio.to_thread.run_sync(view) == 9

    [send] = spans(exporter, "send o.flaky")
    first, second = spans(exporter, "run o.flaky")
    assert parent_of(first) == parent_of(second) == ids(send)[1]
    assert first.attributes is not None and first.attributes["aioqueue.task.state"] == "RETRY"
    assert [e.name for e in first.events] == ["retry"]
    assert second.attributes is not None and second.attributes["aioqueue.task.retries"] == 1

    [batch] = spans(exporter, "batch")
    sends = [s for s in spans(exporter, "send o.noop") if parent_of(s) == ids(batch)[1]]
    assert len(sends) == 3
    runs = {parent_of(r) for r in spans(exporter, "run o.noop")}
    assert {ids(s)[1] for s in sends} <= runs

    [view_span] = spans(exporter, "sync view")
    [sync_send] = [s for s in spans(exporter, "send o.noop") if parent_of(s) == ids(view_span)[1]]
    assert ids(sync_send)[0] == ids(view_span)[0]
    assert ids(sync_send)[1] in runs


async def test_without_instrumentation_messages_carry_no_headers(
        app: AioQueue, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    @app.task(name="o.plain")
    async def plain() -> None:
        return None

    def wire(msg_payload: bytes) -> dict[str, Any]:
        decoded: dict[str, Any] = msgspec.msgpack.decode(msg_payload)
        return decoded

    assert app.message_headers is None and app.around_run is None
    _, item = app._build("o.plain", (), {})
    assert "headers" not in wire(item.payload)

    instrument(app, tracer_provider=provider)
    msg, item = app._build("o.plain", (), {})
    assert msg.headers is not None and msg.headers["traceparent"].startswith("00-")
    assert wire(item.payload)["headers"] == msg.headers
    # Nothing recording (no SDK): no context to carry, and the wire stays as it was.
    instrument(app, tracer_provider=trace.NoOpTracerProvider())
    _, item = app._build("o.plain", (), {})
    assert "headers" not in wire(item.payload)
    uninstrument(app)
    assert app.message_headers is None and app.around_run is None
    async with app.worker(concurrency=1):
        await (await plain.delay()).get(timeout=10)
    assert spans(exporter, "run o.plain") == []


async def test_a_def_task_in_its_thread_is_inside_its_run_span(
        app: AioQueue, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    instrument(app, tracer_provider=provider)
    tracer = provider.get_tracer("test")

    @app.task(name="o.blocking")
    def blocking() -> str:
        with tracer.start_as_current_span("in the thread"):
            return "ok"

    async with app.worker(concurrency=1):
        assert await (await blocking.delay()).get(timeout=10) == "ok"
    [run] = spans(exporter, "run o.blocking")
    [inner] = spans(exporter, "in the thread")
    assert ids(inner)[0] == ids(run)[0] and parent_of(inner) == ids(run)[1]
