"""OpenTelemetry tracing: one trace from the code that enqueues a task to the task's run.

::

    from aioqueue.contrib.otel import instrument

    instrument(app)                      # the global tracer provider, or tracer_provider=...

Every message built by the app (``delay``, ``apply_async``, ``delay_many``, ``send_task``,
beat) gets a ``PRODUCER`` span ``send TASK_NAME``, a child of whatever span is current (a
FastAPI request's, say), and carries that span's W3C trace context in the message's
``headers`` (``traceparent``, and ``tracestate``/``baggage`` when set: the global
propagator's fields). The worker runs the task inside a ``CONSUMER`` span ``run TASK_NAME``
whose parent is that send span, so the request, the enqueue and the run are one trace;
spans the task makes itself (HTTP calls, queries) are children of the run span, also in the
thread of a ``def`` task. A retry keeps the headers: each attempt is a run span under the
same send span.

The send span marks the moment the message is built and handed to the broker (it does not
time the Redis write). A run span ends ``ERROR`` with the exception recorded for FAILURE,
with a ``retry`` event for RETRY, and says the state in ``aioqueue.task.state``.

Needs ``opentelemetry-api`` (``aioqueue[otel]``); an SDK and exporter are the
application's choice. Without :func:`instrument` nothing of this runs: the app's hooks stay
``None`` and messages carry no headers (the wire is unchanged).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..events import describe_exception
from ..message import State

if TYPE_CHECKING:
    from .._runner import Running
    from ..app import AioQueue
    from ..broker import Outcome

__all__ = ("instrument", "uninstrument")

SYSTEM = "aioqueue"


class _Tracing:
    """The two hooks :func:`instrument` installs on an app, sharing one tracer."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def headers(self, name: str, task_id: str, queue: str) -> dict[str, str] | None:
        """``app.message_headers``: a send span, and its context for the message."""
        span = self.tracer.start_span(
            f"send {name}", kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": queue,
                "messaging.message.id": task_id,
                "aioqueue.task.name": name,
            })
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        span.end()
        return carrier or None

    async def run(self, running: Running, execution: Coroutine[Any, Any, Outcome]) -> Outcome:
        """``app.around_run``: await the run inside a run span, child of the send span."""
        msg = running.message
        assert msg is not None  # the runner decodes before it runs
        # A message without headers (an uninstrumented producer) starts a trace of its own,
        # never one the worker happens to be in.
        parent = propagate.extract(msg.headers or {}, context=Context())
        span = self.tracer.start_span(
            f"run {msg.task}", context=parent, kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "run",
                "messaging.destination.name": running.delivery.queue,
                "messaging.message.id": msg.id,
                "aioqueue.task.name": msg.task,
                "aioqueue.task.retries": msg.retries,
                "aioqueue.delivery_count": running.delivery.deliveries,
            })
        with trace.use_span(span, end_on_exit=True, record_exception=False,
                            set_status_on_exception=False):
            try:
                outcome = await execution
            except BaseException as exc:  # the worker itself is stopping: handed back
                span.set_attribute("aioqueue.task.state", "HANDED_BACK")
                span.record_exception(exc)
                raise
            _describe_end(span, running)
            return outcome


def _describe_end(span: trace.Span, running: Running) -> None:
    state = running.state
    # None: interrupted by shutdown and handed back to the queue (it runs again).
    span.set_attribute("aioqueue.task.state", "HANDED_BACK" if state is None else str(state))
    exc = running.exc
    if state is State.FAILURE:
        if exc is not None:
            span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR,
                               None if exc is None else describe_exception(exc)))
    elif state is State.RETRY:
        span.add_event("retry", {} if exc is None else {
            "exception.type": type(exc).__qualname__,
            "exception.message": describe_exception(exc)})


def instrument(app: AioQueue, *, tracer_provider: trace.TracerProvider | None = None) -> None:
    """Trace ``app``'s enqueues and runs (see the module doc). Idempotent: a second call
    replaces the first (a new tracer provider, say)."""
    from .. import __version__

    tracing = _Tracing(trace.get_tracer("aioqueue", __version__,
                                        tracer_provider=tracer_provider))
    app.message_headers = tracing.headers
    app.around_run = tracing.run


def uninstrument(app: AioQueue) -> None:
    """Stop tracing ``app`` (messages already sent keep their headers)."""
    app.message_headers = None
    app.around_run = None
