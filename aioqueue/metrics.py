"""Prometheus metrics, with celery-exporter's names so its Grafana boards and alerts carry over.

Two views, on ``prometheus_client`` (the optional extra ``aioqueue[metrics]``; nothing
else in aioqueue imports this module unless asked to):

* **A worker's own**, ``Worker(..., metrics_port=9808)`` (or ``app.worker(metrics_port=...)``):
  ``GET http://127.0.0.1:PORT/metrics`` while the worker runs, served on the worker's own
  event loop. Tasks by name, queue and how they ended, their runtime and queue wait
  (histograms), the tasks running now, and whether the worker consumes. Each worker has its
  own ``CollectorRegistry`` (never the process-global one), so several workers in one
  process do not mix.
* **The cluster's, from Redis** (:func:`render_cluster_metrics`, or the ASGI endpoint of
  :func:`create_metrics_app` for a dashboard or a standalone exporter): queue depths, live
  workers, and the per-minute task counters the workers record with events on
  (``worker_send_task_events``; ``task_send_sent_event`` for ``sent``), summed into
  counters that only go up.

The worker's hot path pays one plain method call per task (two dictionary lookups, a few
integer additions, two ``bisect`` into histogram buckets: ~0.7 us). Everything
Prometheus-shaped is built only when ``/metrics`` is scraped (a custom collector), so no
``prometheus_client`` lock or label lookup runs per task.

Names (celery-exporter's where one maps; see ``examples/prometheus/README.md``):

==========================================  ===============================================
``celery_task_{received,started,succeeded,  counters; labels ``name``, ``hostname`` (the
failed,retried,revoked,rejected}_total``    worker's name), ``queue_name``; ``failed`` also
                                            ``exception`` (class name); ``rejected`` counts
                                            dead-lettered messages
``celery_task_runtime``                     histogram (seconds, from the fetch) of runs
                                            that ended in SUCCESS, FAILURE or RETRY
``celery_task_queue_wait_time``             histogram (seconds): stream entry (sent, or due)
                                            to the fetch that starts the run
``celery_worker_up{hostname}``              1 while consuming (0 while connecting or
                                            stopping)
``celery_worker_tasks_active{hostname}``    tasks running now
==========================================  ===============================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, MutableMapping
from time import monotonic
from time import time as epoch
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "aioqueue.metrics needs prometheus_client: pip install 'aioqueue[metrics]'") from exc

from .errors import BrokerError
from .message import State

if TYPE_CHECKING:
    from ._runner import Running
    from .app import AioQueue
    from .broker import Outcome
    from .worker import Worker

__all__ = (
    "RUNTIME_BUCKETS",
    "WAIT_BUCKETS",
    "MetricsApp",
    "WorkerMetrics",
    "cluster_metric_families",
    "create_metrics_app",
    "render_cluster_metrics",
    "serve_worker_metrics",
)

log = logging.getLogger("aioqueue.metrics")

INF = float("inf")
#: Runtime buckets (seconds): prometheus_client's defaults with two below 5 ms, where most
#: asyncio tasks end.
RUNTIME_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0, INF)
#: Queue wait buckets (seconds): celery-exporter's, from 50 ms to 30 min (waits are near 0
#: when healthy and grow to minutes under a backlog), with two below 50 ms.
WAIT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, INF)

#: The worker-local address: loopback only (put a proxy or a sidecar in front to expose it).
DEFAULT_HOST = "127.0.0.1"

_TASK_LABELS = ["name", "hostname", "queue_name"]
_COUNTERS = (
    # (attribute, metric name without _total, help): celery-exporter's names and texts.
    ("received", "celery_task_received", "Sent when the worker receives a task."),
    ("started", "celery_task_started", "Sent just before the worker executes the task."),
    ("succeeded", "celery_task_succeeded", "Sent if the task executed successfully."),
    ("retried", "celery_task_retried",
     "Sent if the task failed, but will be retried in the future."),
    ("revoked", "celery_task_revoked", "Sent if the task has been revoked."),
    ("rejected", "celery_task_rejected",
     "The task was rejected by the worker: moved to dead letters (undecodable, not "
     "registered, or delivered more than max_deliveries times)."),
)
_RUNTIME_HELP = "Histogram of task runtime measurements (seconds)."
_WAIT_HELP = ("Histogram of the time tasks spend waiting in the queue before being executed, "
              "excluding deliberate ETA/countdown delay (seconds).")
_SUCCESS, _FAILURE, _RETRY, _REVOKED = State.SUCCESS, State.FAILURE, State.RETRY, State.REVOKED


class _TaskStats:
    """Plain counters of one (task name, queue) on one worker: what the hot path touches."""

    __slots__ = ("failed", "rejected", "retried", "revoked", "runtime", "runtime_sum",
                 "started", "succeeded", "unstarted", "wait", "wait_sum")

    def __init__(self) -> None:
        #: Of finished deliveries only (runs in flight are added at scrape time); received
        #: is started + unstarted (revoked or dead-lettered before a run).
        self.started = self.unstarted = 0
        self.succeeded = self.retried = self.revoked = self.rejected = 0
        #: Failures by exception class name.
        self.failed: dict[str, int] = {}
        #: Per-bucket (not cumulative) counts; cumulated at scrape time.
        self.runtime = [0] * len(RUNTIME_BUCKETS)
        self.runtime_sum = 0.0
        self.wait = [0] * len(WAIT_BUCKETS)
        self.wait_sum = 0.0


def _buckets(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    total = 0
    for bound, n in zip(bounds, counts, strict=True):
        total += n
        out.append(("+Inf" if bound == INF else repr(bound), total))
    return out


class WorkerMetrics:
    """One worker's metrics and its ``/metrics`` endpoint (see the module doc).

    The worker calls :meth:`finished` once per delivery: the only per-task cost. Runs in
    flight are counted as received and started at scrape time, from ``worker.running`` (a
    run there with a decoded message has started: the runner's checks before the start
    never await), so a long task counts as started while it runs. ``prometheus_client``
    calls :meth:`collect` on the worker's loop (the server runs there): no locks.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.hostname = worker.name
        #: queue -> task name -> counters (nested: no key tuple to build per task).
        self._stats: dict[str, dict[str, _TaskStats]] = {}
        #: Last received/started values reported, per (name, queue): never reported lower
        #: (a run that ends off the usual path, e.g. left for redelivery after an internal
        #: error, leaves ``running`` without being counted as finished).
        self._reported: dict[tuple[str, str, str], int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._server: asyncio.Server | None = None
        #: The port served (the one asked for, or the one picked for port 0).
        self.port: int | None = None

    def _new_stats(self, queue: str, name: str) -> _TaskStats:
        stats = self._stats.setdefault(queue, {})[name] = _TaskStats()
        return stats

    # -- the hot path ----------------------------------------------------------------------
    def finished(self, running: Running, outcome: Outcome) -> None:
        """A delivery ended: count how, observe its queue wait and (for a run that ended
        in SUCCESS, FAILURE or RETRY) its runtime."""
        msg = running.message
        state = running.state
        if msg is None or state is None:
            self._ended_early(running, outcome)
            return
        delivery = running.delivery
        names = self._stats.get(delivery.queue)
        stats = None if names is None else names.get(msg.task)
        if stats is None:
            stats = self._new_stats(delivery.queue, msg.task)
        took = monotonic() - running.started  # since the fetch: the run, and its decoding
        if state is _SUCCESS:
            stats.succeeded += 1
        elif state is _FAILURE:
            exc = running.exc
            name = "" if exc is None else type(exc).__name__
            stats.failed[name] = stats.failed.get(name, 0) + 1
        elif state is _RETRY:
            stats.retried += 1
        else:  # REVOKED: before it started (revoked, expired), or terminated while running
            stats.revoked += 1
            if running.cancel_reason is None:
                stats.unstarted += 1
                return
        stats.started += 1
        if state is not _REVOKED:  # a run cut short has no runtime
            stats.runtime[bisect_left(RUNTIME_BUCKETS, took)] += 1
            stats.runtime_sum += took
        # Waited from the stream entry (sent, or moved there when due) to the fetch.
        try:
            wait = epoch() - took - int(delivery.message_id.partition("-")[0]) * 0.001
        except ValueError:  # not a stream entry id
            return
        if wait < 0.0:  # the clocks of Redis and of this host disagree
            wait = 0.0
        stats.wait[bisect_left(WAIT_BUCKETS, wait)] += 1
        stats.wait_sum += wait

    def _ended_early(self, running: Running, outcome: Outcome) -> None:
        """Dead-lettered before a run (rejected), or handed back (counted as started when
        it had started: shutdown interrupted it), or early (it will come again)."""
        msg = running.message
        if outcome.dead_reason is not None:
            name = "?" if msg is None else msg.task
            names = self._stats.get(running.delivery.queue)
            stats = None if names is None else names.get(name)
            if stats is None:
                stats = self._new_stats(running.delivery.queue, name)
            stats.unstarted += 1
            stats.rejected += 1
        elif msg is not None and running.cancel_reason is not None:
            names = self._stats.get(running.delivery.queue)
            stats = None if names is None else names.get(msg.task)
            if stats is None:
                stats = self._new_stats(running.delivery.queue, msg.task)
            stats.started += 1

    # -- scraping --------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        """The metric families, built from the plain counters (prometheus_client's API)."""
        worker = self.worker
        host = self.hostname
        in_flight: dict[tuple[str, str], int] = {}
        for running in list(worker.running.values()):
            msg = running.message
            if msg is not None:
                key = (running.delivery.queue, msg.task)
                in_flight[key] = in_flight.get(key, 0) + 1
                if msg.task not in self._stats.get(key[0], {}):
                    self._new_stats(*key)
        counters = {attr: CounterMetricFamily(name, doc, labels=_TASK_LABELS)
                    for attr, name, doc in _COUNTERS}
        failed = CounterMetricFamily("celery_task_failed",
                                     "Sent if the execution of the task failed.",
                                     labels=[*_TASK_LABELS, "exception"])
        runtime = HistogramMetricFamily("celery_task_runtime", _RUNTIME_HELP,
                                        labels=_TASK_LABELS)
        wait = HistogramMetricFamily("celery_task_queue_wait_time", _WAIT_HELP,
                                     labels=_TASK_LABELS)
        reported = self._reported
        for queue, names in sorted(self._stats.items()):
            for name, stats in sorted(names.items()):
                labels = [name, host, queue]
                running_now = in_flight.get((queue, name), 0)
                for attr, counter in counters.items():
                    if attr == "received":
                        n = stats.started + stats.unstarted + running_now
                    elif attr == "started":
                        n = stats.started + running_now
                    else:
                        n = getattr(stats, attr)
                        counter.add_metric(labels, n)
                        continue
                    seen = (attr, queue, name)
                    n = reported[seen] = max(reported.get(seen, 0), n)
                    counter.add_metric(labels, n)
                # Every series exists from the task's first delivery on, so rate() sees the
                # first failure as an increase (celery-exporter does the same with inc(0)).
                for exception, n in sorted((stats.failed or {"": 0}).items()):
                    failed.add_metric([*labels, exception], n)
                runtime.add_metric(labels, _buckets(RUNTIME_BUCKETS, stats.runtime),
                                   stats.runtime_sum)
                wait.add_metric(labels, _buckets(WAIT_BUCKETS, stats.wait), stats.wait_sum)
        yield from counters.values()
        yield failed
        yield runtime
        yield wait
        consuming = worker._started.is_set() and not worker._stopping
        yield _gauge("celery_worker_up", "1 while the worker consumes its queues.",
                     ["hostname"], [([host], 1.0 if consuming else 0.0)])
        yield _gauge("celery_worker_tasks_active",
                     "The number of tasks the worker is currently processing.",
                     ["hostname"], [([host], float(len(worker.running)))])
        yield _gauge("aioqueue_worker_concurrency", "The most tasks the worker runs at once.",
                     ["hostname"], [([host], float(worker.concurrency))])
        processed = CounterMetricFamily("aioqueue_worker_processed",
                                        "Deliveries the worker has finished since it started.",
                                        labels=["hostname"])
        processed.add_metric([host], worker.processed)
        yield processed

    def render(self) -> bytes:
        """The text exposition of this worker's registry."""
        return generate_latest(self.registry)

    # -- serving ---------------------------------------------------------------------------
    async def start(self, port: int, host: str = DEFAULT_HOST) -> None:
        """Serve ``GET /metrics`` on ``host:port`` (port 0: any free one, see :attr:`port`)."""
        self._server = await asyncio.start_server(self._handle, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("worker %s: metrics on http://%s:%d/metrics", self.hostname, host, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10.0):
                head = await reader.readuntil(b"\r\n\r\n")
                method, _, rest = head.partition(b" ")
                path = rest.partition(b" ")[0].partition(b"?")[0]
                if method not in (b"GET", b"HEAD"):
                    status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
                elif path != b"/metrics":
                    status, body, ctype = "404 Not Found", b"see /metrics\n", "text/plain"
                else:
                    status, body, ctype = "200 OK", self.render(), CONTENT_TYPE_LATEST
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: "
                    f"{len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1"))
                if method != b"HEAD":
                    writer.write(body)
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that went away or sent garbage: nothing to answer
        except Exception:  # a bug here must never reach the worker's loop
            log.exception("worker %s: metrics request failed", self.hostname)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def serve_worker_metrics(worker: Worker, port: int,
                               host: str = DEFAULT_HOST) -> AsyncIterator[WorkerMetrics]:
    """Give ``worker`` its metrics and serve them for the duration of the block."""
    metrics = WorkerMetrics(worker)
    await metrics.start(port, host)
    worker.metrics = metrics
    try:
        yield metrics
    finally:
        await metrics.stop()


def _gauge(name: str, doc: str, labels: list[str],
           values: Iterable[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, value in values:
        family.add_metric(label_values, value)
    return family


# -- the cluster, from Redis ----------------------------------------------------------------
#: Per-minute counters read at each scrape. They count into totals that only go up: a minute
#: that leaves the window keeps the last value seen, so a counter never drops (a drop would
#: read as a reset and a spike to Prometheus).
WINDOW_MINUTES = 60

#: Per-minute counter states (``aioqueue.events``) -> celery-exporter's counter names.
_STATE_COUNTERS = {
    "SENT": ("celery_task_sent", "Sent when a task message is published."),
    "STARTED": ("celery_task_started", "Sent just before the worker executes the task."),
    "SUCCESS": ("celery_task_succeeded", "Sent if the task executed successfully."),
    "FAILURE": ("celery_task_failed", "Sent if the execution of the task failed."),
    "RETRY": ("celery_task_retried",
              "Sent if the task failed, but will be retried in the future."),
    "REVOKED": ("celery_task_revoked", "Sent if the task has been revoked."),
    "DEAD": ("celery_task_rejected", "The task was moved to dead letters by a worker."),
}


class _Totals:
    """Monotonic totals of one app's per-minute counters, for this process's scrapes."""

    def __init__(self) -> None:
        #: Last value seen of each (minute, field) still inside the window.
        self.seen: dict[int, dict[str, int]] = {}
        #: Sums of the minutes that left the window.
        self.retired: dict[str, int] = {}

    def update(self, minutes: dict[int, dict[str, int]]) -> dict[str, int]:
        start = min(minutes) if minutes else 0
        for minute in [m for m in self.seen if m < start]:
            for field, n in self.seen.pop(minute).items():
                self.retired[field] = self.retired.get(field, 0) + n
        for minute, fields in minutes.items():
            seen = self.seen.setdefault(minute, {})
            for field, n in fields.items():
                if n > seen.get(field, 0):  # never down, even if a key expired early
                    seen[field] = n
        totals = dict(self.retired)
        for fields in self.seen.values():
            for field, n in fields.items():
                totals[field] = totals.get(field, 0) + n
        return totals


_totals: MutableMapping[Any, _Totals] = weakref.WeakKeyDictionary()


async def cluster_metric_families(app: AioQueue, *, task_counters: bool = True,
                                  now: float | None = None) -> list[Metric]:
    """The cluster's metric families, read from Redis through :class:`~aioqueue.monitor.Monitor`
    (see :func:`render_cluster_metrics`)."""
    from .monitor import Monitor

    monitor = Monitor(app)
    now = time.time() if now is None else now
    workers = await monitor.workers()
    queues = await monitor.queues()

    families: list[Metric] = []
    per_queue: list[tuple[str, str, Callable[[Any], float]]] = [
        ("celery_queue_length", "The number of messages waiting in the queue.",
         lambda q: q.waiting),
        ("aioqueue_queue_running", "Messages taken by a worker and not yet settled.",
         lambda q: q.running),
        ("aioqueue_queue_delayed", "Messages due later (countdown, eta, retry back-off).",
         lambda q: q.delayed),
        ("aioqueue_queue_dead_letters", "Messages in the queue's dead-letter stream.",
         lambda q: q.dead),
        ("aioqueue_queue_oldest_waiting_age_seconds",
         "How long the oldest waiting message has waited (0 when none waits).",
         lambda q: 0.0 if q.oldest_waiting_at is None else max(0.0, now - q.oldest_waiting_at)),
    ]
    for name, doc, value in per_queue:
        families.append(_gauge(name, doc, ["queue_name"],
                               [([q.name], float(value(q))) for q in queues]))
    consumers = {q.name: [w for w in workers if q.name in w.queues] for q in queues}
    families.append(_gauge(
        "celery_active_consumer_count", "The number of live workers consuming the queue.",
        ["queue_name"], [([q], float(len(ws))) for q, ws in consumers.items()]))
    families.append(_gauge(
        "celery_active_worker_count", "The number of live workers consuming the queue.",
        ["queue_name"], [([q], float(len(ws))) for q, ws in consumers.items()]))
    families.append(_gauge(
        "celery_active_process_count",
        "Task slots (concurrency) of the live workers consuming the queue.",
        ["queue_name"], [([q], float(sum(w.concurrency for w in ws)))
                         for q, ws in consumers.items()]))
    families.append(_gauge("aioqueue_workers", "The number of live workers.", [],
                           [([], float(len(workers)))]))
    families.append(_gauge("celery_worker_up", "1 for each live worker (heartbeat in 10 s).",
                           ["hostname"], [([w.name], 1.0) for w in workers]))
    families.append(_gauge("celery_worker_tasks_active",
                           "The number of tasks the worker is currently processing.",
                           ["hostname"], [([w.name], float(w.running)) for w in workers]))
    families.append(_gauge("aioqueue_worker_concurrency", "The most tasks the worker runs at once.",
                           ["hostname"], [([w.name], float(w.concurrency)) for w in workers]))
    processed = CounterMetricFamily("aioqueue_worker_processed",
                                    "Deliveries the worker has finished since it started.",
                                    labels=["hostname"])
    for w in workers:
        processed.add_metric([w.name], w.processed)
    families.append(processed)
    if task_counters:
        families += await _task_counters(app, monitor, now)
    return families


async def _task_counters(app: AioQueue, monitor: Any, now: float) -> list[Metric]:
    """celery_task_*_total{name} from the per-minute counters, as totals that only go up."""
    minutes = await monitor.throughput(WINDOW_MINUTES, now=now)
    totals = _totals.get(app)
    if totals is None:
        totals = _totals[app] = _Totals()
    by_state: dict[str, dict[str, int]] = {state: {} for state in _STATE_COUNTERS}
    for field, n in totals.update(minutes).items():
        task, _, state = field.rpartition("|")
        if state in by_state:
            by_state[state][task] = n
    # A worker takes only what it starts: received = started + dead-lettered unstarted.
    received: dict[str, int] = {}
    for state in ("STARTED", "DEAD"):
        for task, n in by_state[state].items():
            received[task] = received.get(task, 0) + n
    families: list[Metric] = []
    named = [("celery_task_received", "Sent when the worker receives a task.", received)]
    named += [(name, doc, by_state[state]) for state, (name, doc) in _STATE_COUNTERS.items()]
    for name, doc, counts in named:
        counter = CounterMetricFamily(name, doc, labels=["name"])
        for task, n in sorted(counts.items()):
            counter.add_metric([task], n)
        families.append(counter)
    return families


class _Families:
    """A collector of a fixed list of families (one scrape's)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


async def render_cluster_metrics(app: AioQueue, *, task_counters: bool = True) -> bytes:
    """The cluster's metrics in Prometheus' text format, read from Redis.

    Queue depths (``celery_queue_length{queue_name}`` = waiting, and running, delayed,
    dead letters, oldest waiting age), live workers (``celery_worker_up{hostname}``, active
    tasks, ``celery_active_consumer_count{queue_name}``...) and the task counters
    (``celery_task_succeeded_total{name}``...) summed from the per-minute counters, which
    workers record with events on (``worker_send_task_events``, ``aioqueue worker -E``).
    Counters are totals kept by this process: they start at the last hour's counts and
    only go up while it runs. They carry only ``name`` (the per-minute counters know no
    queue or worker); ``task_counters=False`` leaves them out, for setups that scrape every
    worker's own ``/metrics`` for them (else both would count each task).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(await cluster_metric_families(app,
                                                              task_counters=task_counters)))
    return generate_latest(registry)


ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]


class MetricsApp:
    """An ASGI app answering ``GET`` with :func:`render_cluster_metrics` (see
    :func:`create_metrics_app`)."""

    def __init__(self, app: AioQueue, *, task_counters: bool = True) -> None:
        self.app = app
        self.task_counters = task_counters

    async def __call__(self, scope: dict[str, Any], receive: ASGIReceive,
                       send: ASGISend) -> None:
        if scope["type"] == "lifespan":  # served on its own (not mounted): nothing to set up
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        ctype = "text/plain; charset=utf-8"
        if scope.get("method") not in ("GET", "HEAD"):
            status, body = 405, b"GET only\n"
        else:
            try:
                status, body, ctype = 200, await render_cluster_metrics(
                    self.app, task_counters=self.task_counters), CONTENT_TYPE_LATEST
            except BrokerError as exc:
                log.warning("metrics: cannot read the broker: %s", exc)
                status, body = 503, f"broker unavailable: {exc}\n".encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode("latin-1")),
                                (b"content-length", str(len(body)).encode("latin-1"))]})
        await send({"type": "http.response.body",
                    "body": b"" if scope.get("method") == "HEAD" else body})


def create_metrics_app(app: AioQueue, *, task_counters: bool = True) -> MetricsApp:
    """An ASGI endpoint serving the cluster's metrics (:func:`render_cluster_metrics`).

    In FastAPI: ``api.add_route("/metrics", create_metrics_app(app))``; in Starlette:
    ``Route("/metrics", create_metrics_app(app))`` (an ASGI app as the endpoint). A
    ``mount("/metrics", ...)`` works too, but answers ``/metrics`` with a redirect to
    ``/metrics/``. Or serve it alone (``uvicorn --factory`` with a function returning it).
    ``task_counters``: see :func:`render_cluster_metrics`.
    """
    return MetricsApp(app, task_counters=task_counters)
