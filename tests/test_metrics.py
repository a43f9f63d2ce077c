"""Prometheus metrics (``aioqueue.metrics``): a worker's own ``/metrics``, and the cluster's
from Redis, read back with prometheus_client's own parser."""

from __future__ import annotations

import socket
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aioqueue import AioQueue, Task
from aioqueue.metrics import _Totals, create_metrics_app, render_cluster_metrics
from aioqueue.testing import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    """The one sample of ``metric`` with exactly these labels (KeyError if absent)."""
    return samples[(metric, frozenset(labels.items()))]


def total(samples: Samples, metric: str, /, **labels: str) -> float:
    """The sum of the samples of ``metric`` whose labels include these."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == metric and wanted <= ls)


async def scrape(port: int, path: str = "/metrics") -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_a_worker_serves_counters_histograms_and_in_flight_of_what_ran(
        any_app: AioQueue) -> None:
    app = any_app
    started, release = anyio.Event(), anyio.Event()

    @app.task(name="m.ok")
    async def ok(x: int) -> int:
        return x + 1

    @app.task(name="m.bad")
    async def bad() -> None:
        raise ValueError("nope")

    @app.task(name="m.flaky", bind=True, default_retry_delay=0)
    async def flaky(self: Task[..., Any]) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=RuntimeError("again"))
        return "fine"

    @app.task(name="m.hold")
    async def hold() -> None:
        started.set()
        await release.wait()

    port = free_port()
    labels = {"hostname": "w-m", "queue_name": "default"}
    async with app.worker(concurrency=4, name="w-m", metrics_port=port):
        idle = parse((await scrape(port)).text)
        assert value(idle, "celery_worker_up", hostname="w-m") == 1
        assert value(idle, "celery_worker_tasks_active", hostname="w-m") == 0
        assert value(idle, "aioqueue_worker_concurrency", hostname="w-m") == 4

        assert [await h for h in await ok.delay_many([(i,) for i in range(5)])] == [
            1, 2, 3, 4, 5]
        for handle in [await bad.delay() for _ in range(3)]:
            assert isinstance(await handle.get(propagate=False), ValueError)
        assert await (await flaky.delay()).get(timeout=10) == "fine"

        held = await hold.delay()
        with anyio.fail_after(10):
            await started.wait()
        busy = parse((await scrape(port)).text)
        assert value(busy, "celery_worker_tasks_active", hostname="w-m") == 1
        assert value(busy, "celery_task_started_total", name="m.hold", **labels) == 1
        assert value(busy, "celery_task_succeeded_total", name="m.hold", **labels) == 0
        release.set()
        await held.get(timeout=10)

        response = await scrape(port)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        s = parse(response.text)
        assert (await scrape(port, "/other")).status_code == 404

    assert value(s, "celery_task_succeeded_total", name="m.ok", **labels) == 5
    assert value(s, "celery_task_received_total", name="m.ok", **labels) == 5
    assert value(s, "celery_task_started_total", name="m.ok", **labels) == 5
    assert value(s, "celery_task_failed_total", name="m.ok", exception="", **labels) == 0
    assert value(s, "celery_task_failed_total", name="m.bad", exception="ValueError",
                 **labels) == 3
    assert value(s, "celery_task_succeeded_total", name="m.bad", **labels) == 0
    assert value(s, "celery_task_retried_total", name="m.flaky", **labels) == 1
    assert value(s, "celery_task_succeeded_total", name="m.flaky", **labels) == 1
    assert value(s, "celery_task_started_total", name="m.flaky", **labels) == 2
    assert value(s, "celery_task_succeeded_total", name="m.hold", **labels) == 1
    # One runtime and one queue-wait observation per run: 5 + 3 + 2 + 1.
    ran = 5 + 3 + 2 + 1
    assert total(s, "celery_task_runtime_count") == ran
    assert total(s, "celery_task_queue_wait_time_count") == ran
    assert value(s, "celery_task_runtime_count", name="m.bad", **labels) == 3
    assert value(s, "celery_task_runtime_bucket", name="m.ok", le="+Inf", **labels) == 5
    assert 0 < value(s, "celery_task_runtime_sum", name="m.ok", **labels) < 5
    assert value(s, "celery_task_queue_wait_time_bucket", name="m.ok", le="+Inf",
                 **labels) == 5
    assert value(s, "celery_worker_tasks_active", hostname="w-m") == 0
    assert value(s, "aioqueue_worker_processed_total", hostname="w-m") == ran
    assert refused(port)  # served only while the worker runs


async def test_revoked_and_dead_lettered_tasks_are_received_but_never_started(
        app: AioQueue) -> None:
    @app.task(name="m.never")
    async def never() -> None:
        raise AssertionError("revoked: must not run")

    await app.revoke("revoked-id")
    revoked = await never.apply_async(task_id="revoked-id")
    unknown = await app.send_task("m.unknown")
    port = free_port()
    async with app.worker(concurrency=2, name="w-r", metrics_port=port):
        assert type(await revoked.get(propagate=False, timeout=10)).__name__ == "TaskRevoked"
        assert type(await unknown.get(propagate=False, timeout=10)).__name__ == "NotRegistered"
        s = parse((await scrape(port)).text)
    labels = {"hostname": "w-r", "queue_name": "default"}
    assert value(s, "celery_task_revoked_total", name="m.never", **labels) == 1
    assert value(s, "celery_task_received_total", name="m.never", **labels) == 1
    assert value(s, "celery_task_started_total", name="m.never", **labels) == 0
    assert value(s, "celery_task_rejected_total", name="m.unknown", **labels) == 1
    assert value(s, "celery_task_received_total", name="m.unknown", **labels) == 1
    assert total(s, "celery_task_runtime_count") == 0


async def test_a_busy_metrics_port_fails_the_worker_at_start(app: AioQueue) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            async with app.worker(concurrency=1, metrics_port=taken.getsockname()[1]):
                pass  # pragma: no cover


async def test_cluster_metrics_show_queues_workers_and_counted_tasks(any_app: AioQueue) -> None:
    app = any_app
    app.conf.update(worker_send_task_events=True, task_send_sent_event=True)

    @app.task(name="c.ok")
    async def ok() -> str:
        return "done"

    @app.task(name="c.bad")
    async def bad() -> None:
        raise KeyError("x")

    async with app.worker(concurrency=3, name="w-c"):
        for h in await ok.delay_many([() for _ in range(4)]):
            await h
        with pytest.raises(KeyError):
            await (await bad.delay()).get(timeout=10)
    await app.broker.ensure_queues(["default", "mail"])
    await ok.delay_many([() for _ in range(3)])
    await ok.apply_async(countdown=3600)
    await ok.apply_async(queue="mail")
    async with app.worker(concurrency=7, queues=["idle"], name="w-idle"):
        s = parse((await render_cluster_metrics(app)).decode())
        again = parse((await render_cluster_metrics(app)).decode())
        queues_only = parse((await render_cluster_metrics(app, task_counters=False)).decode())

    assert value(s, "celery_queue_length", queue_name="default") == 3
    assert value(s, "celery_queue_length", queue_name="mail") == 1
    assert value(s, "celery_queue_length", queue_name="idle") == 0
    assert value(s, "aioqueue_queue_delayed", queue_name="default") == 1
    assert value(s, "aioqueue_queue_running", queue_name="default") == 0
    assert value(s, "aioqueue_queue_dead_letters", queue_name="default") == 0
    assert value(s, "aioqueue_queue_oldest_waiting_age_seconds", queue_name="default") >= 0
    assert value(s, "aioqueue_queue_oldest_waiting_age_seconds", queue_name="idle") == 0
    assert value(s, "aioqueue_workers") == 1
    assert value(s, "celery_worker_up", hostname="w-idle") == 1
    assert value(s, "celery_worker_tasks_active", hostname="w-idle") == 0
    assert value(s, "celery_active_consumer_count", queue_name="idle") == 1
    assert value(s, "celery_active_consumer_count", queue_name="default") == 0
    assert value(s, "celery_active_process_count", queue_name="idle") == 7
    assert value(s, "celery_task_succeeded_total", name="c.ok") == 4
    assert value(s, "celery_task_started_total", name="c.ok") == 4
    assert value(s, "celery_task_received_total", name="c.ok") == 4
    assert value(s, "celery_task_failed_total", name="c.bad") == 1
    # sent: 4 + 1 run, then 3 waiting + 1 delayed + 1 on "mail".
    assert value(s, "celery_task_sent_total", name="c.ok") == 9
    assert value(again, "celery_task_succeeded_total", name="c.ok") == 4  # no double count
    assert total(queues_only, "celery_task_succeeded_total") == 0
    assert value(queues_only, "celery_queue_length", queue_name="default") == 3


def test_cluster_counters_only_go_up_as_minutes_leave_the_window() -> None:
    totals = _Totals()
    assert totals.update({10: {"t|SUCCESS": 2}, 11: {"t|SUCCESS": 1}}) == {"t|SUCCESS": 3}
    # Minute 11 grows; minute 10 leaves the window: kept at its last value.
    assert totals.update({11: {"t|SUCCESS": 4}, 12: {}}) == {"t|SUCCESS": 6}
    # A minute's key expiring early (or a smaller read) never makes a total go down.
    assert totals.update({11: {}, 12: {"t|FAILURE": 1}}) == {"t|SUCCESS": 6, "t|FAILURE": 1}
    assert totals.update({13: {"t|SUCCESS": 1}}) == {"t|SUCCESS": 7, "t|FAILURE": 1}


async def test_the_asgi_endpoint_serves_cluster_metrics_in_starlette_and_fastapi(
        app: AioQueue) -> None:
    from fastapi import FastAPI
    from starlette.applications import Starlette
    from starlette.routing import Route

    @app.task(name="a.later")
    async def later() -> None:
        return None

    await app.broker.ensure_queues(["default"])
    await later.delay_many([() for _ in range(2)])
    starlette = Starlette(routes=[Route("/metrics", create_metrics_app(app))])
    api = FastAPI()
    api.add_route("/metrics", create_metrics_app(app))
    mounted = FastAPI()
    mounted.mount("/metrics", create_metrics_app(app))
    for asgi, path in [(starlette, "/metrics"), (api, "/metrics"), (mounted, "/metrics/"),
                       (create_metrics_app(app), "/")]:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get(path)
            assert response.status_code == 200, (asgi, response.text)
            assert response.headers["content-type"].startswith("text/plain; version=")
            assert value(parse(response.text), "celery_queue_length",
                         queue_name="default") == 2
            assert (await client.post(path)).status_code == 405
