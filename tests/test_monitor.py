"""The monitoring foundation (``aioqueue.monitor``), on both brokers: the worker registry,
events and their per-minute counters, remote inspect/control, queue details, actions."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from aioqueue import AioQueue, Task
from aioqueue.events import EventType
from aioqueue.monitor import Monitor


async def test_a_running_worker_is_listed_with_its_load_and_leaves_when_it_stops(
        any_app: AioQueue) -> None:
    app = any_app
    monitor = Monitor(app)
    async with app.worker(concurrency=3, queues=["default", "emails"], name="w-listed"):
        [info] = await monitor.workers()
        assert info.name == "w-listed" and info.queues == ["default", "emails"]
        assert info.concurrency == 3 and info.pid > 0 and info.uptime_s >= 0
        assert "emails" in await monitor.queue_names()
    assert await monitor.workers() == []


async def test_task_events_and_counters_record_what_ran(any_app: AioQueue) -> None:
    app = any_app
    app.conf.update(worker_send_task_events=True, task_send_sent_event=True)
    monitor = Monitor(app)

    @app.task(name="mon.ok")
    async def ok(x: int) -> int:
        return x * 2

    @app.task(name="mon.bad")
    async def bad() -> None:
        raise KeyError("nope")

    @app.task(name="mon.flaky", bind=True, default_retry_delay=0)
    async def flaky(self: Task[..., Any]) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=RuntimeError("again"))
        return "fine"

    async with app.worker(concurrency=2, name="w-events"):
        assert await (await ok.delay(21)).get(timeout=10) == 42
        failed = await bad.delay()
        with pytest.raises(KeyError):
            await failed.get(timeout=10)
        assert await (await flaky.delay()).get(timeout=10) == "fine"
    events = [e for _, e in await monitor.recent_events(100)]
    kinds = [(e.type, e.name) for e in events if e.task_id is not None]
    for expected in [(EventType.SENT, "mon.ok"), (EventType.STARTED, "mon.ok"),
                     (EventType.SUCCEEDED, "mon.ok"), (EventType.FAILED, "mon.bad"),
                     (EventType.RETRIED, "mon.flaky"), (EventType.SUCCEEDED, "mon.flaky")]:
        assert expected in kinds, (expected, kinds)
    succeeded = next(e for e in events if e.type == EventType.SUCCEEDED and e.name == "mon.ok")
    assert succeeded.result == "42" and succeeded.args == "(21,)"
    assert succeeded.worker == "w-events" and succeeded.runtime is not None
    assert succeeded.sent_at is not None and succeeded.started_at is not None
    failure = next(e for e in events if e.type == EventType.FAILED)
    assert failure.exception == "KeyError: 'nope'" and "KeyError" in (failure.traceback or "")
    assert failure.payload is not None  # kept, to retry it
    assert {e.type for e in events} >= {EventType.WORKER_ONLINE, EventType.WORKER_OFFLINE}
    counts: dict[str, int] = {}
    for minute in (await monitor.throughput(5)).values():
        for field, n in minute.items():
            counts[field] = counts.get(field, 0) + n
    assert counts["mon.ok|SUCCESS"] == 1 and counts["mon.bad|FAILURE"] == 1
    assert counts["mon.flaky|RETRY"] == 1 and counts["mon.ok|SENT"] == 1


async def test_events_are_off_by_default(any_app: AioQueue) -> None:
    app = any_app

    @app.task
    async def quiet() -> None:
        return None

    async with app.worker(concurrency=1):
        await (await quiet.delay()).get(timeout=10)
    events = [e for _, e in await Monitor(app).recent_events(100)]
    assert [e.type for e in events if e.task_id] == []  # worker events only
    assert {e.type for e in events} == {EventType.WORKER_ONLINE, EventType.WORKER_OFFLINE}


async def test_inspect_and_control_reach_every_worker_within_a_second(
        any_app: AioQueue) -> None:
    app = any_app
    monitor = Monitor(app)
    started, release = anyio.Event(), anyio.Event()

    @app.task(name="mon.slow")
    async def slow(tag: str) -> str:
        started.set()
        await release.wait()
        return tag

    async with app.worker(concurrency=2, name="w-a"), app.worker(concurrency=2, name="w-b"):
        handle = await slow.delay("x")
        with anyio.fail_after(5):
            await started.wait()
        began = time.monotonic()
        assert await monitor.ping() == {"w-a": "pong", "w-b": "pong"}
        assert time.monotonic() - began < 1.0  # answered, not timed out
        active = await monitor.inspect("active")
        running = [t for tasks in active.values() for t in tasks]
        assert [(t["name"], t["args"]) for t in running] == [("mon.slow", "('x',)")]
        registered = await monitor.inspect("registered", destination="w-b")
        assert list(registered) == ["w-b"] and "mon.slow" in registered["w-b"]
        stats = await monitor.inspect("stats")
        assert stats["w-a"]["concurrency"] == 2
        answers = await monitor.control("cancel", task_id=handle.id)
        assert sorted(answers.values()) == [f"cancelled {handle.id}", "not running here"]
        with pytest.raises(Exception, match="revoked"):
            await handle.get(timeout=10)
        release.set()


async def test_queue_details_purge_and_dead_letters(any_app: AioQueue) -> None:
    app = any_app
    monitor = Monitor(app)

    @app.task(name="mon.later")
    async def later() -> None:
        return None

    before = time.time()
    await app.broker.ensure_queues(["default"])
    await later.delay_many([() for _ in range(3)])
    await later.apply_async(countdown=3600)
    await later.apply_async(queue="unserved")  # sent to, served by no worker: still listed
    assert "unserved" in await monitor.queue_names()
    [q] = await monitor.queues(["default"])
    assert (q.waiting, q.running, q.delayed, q.dead) == (3, 0, 1, 0)
    assert q.oldest_waiting_at is not None and before - 1 <= q.oldest_waiting_at <= time.time()
    assert await monitor.purge("default", who="tester") == 4
    [q] = await monitor.queues(["default"])
    assert (q.waiting, q.delayed, q.oldest_waiting_at) == (0, 0, None)
    [entry] = await monitor.audit_log()
    assert (entry.who, entry.action, entry.target, entry.detail) == (
        "tester", "purge", "default", "4 messages")


async def test_a_failed_task_is_retried_from_its_event(any_app: AioQueue) -> None:
    app = any_app
    app.conf.update(worker_send_task_events=True)
    monitor = Monitor(app)
    attempts: list[int] = []

    @app.task(name="mon.once_broken")
    async def once_broken(n: int) -> int:
        attempts.append(n)
        if len(attempts) == 1:
            raise ValueError("first time")
        return n + 1

    async with app.worker(concurrency=1):
        with pytest.raises(ValueError):
            await (await once_broken.delay(41)).get(timeout=10)
        failed = next(e for _, e in await monitor.recent_events(50)
                      if e.type == EventType.FAILED)
        new_id = await monitor.retry(failed, who="dashboard")
        assert await app.AsyncResult(new_id).get(timeout=10) == 42
    assert attempts == [41, 41]
    assert (await monitor.audit_log())[-1].action == "retry"


async def test_tail_follows_new_events(any_app: AioQueue) -> None:
    app = any_app
    app.conf.update(worker_send_task_events=True)
    monitor = Monitor(app)

    @app.task(name="mon.tick")
    async def tick() -> None:
        return None

    async with app.worker(concurrency=1):
        seen: list[str] = []
        with anyio.fail_after(10):
            await tick.delay()
            async for _, event in monitor.tail(block_s=0.2):
                seen.append(event.type)
                if event.type == EventType.SUCCEEDED:
                    break
    assert EventType.STARTED in seen
