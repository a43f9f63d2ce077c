"""The in-process memory broker keeps the Redis broker's semantics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import pytest

from aioqueue import AioQueue, NotRegistered, State, TaskRevoked
from aioqueue.broker import Enqueue


async def test_round_trip_and_failure(memory_app: AioQueue) -> None:
    @memory_app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @memory_app.task
    async def fails() -> None:
        raise KeyError("missing")

    async with memory_app.worker(concurrency=5):
        with anyio.fail_after(5):
            assert await (await add.delay(2, 3)) == 5
            with pytest.raises(KeyError, match="missing"):
                await (await fails.delay())
            handles = await add.delay_many([(i, i) for i in range(50)])
            assert await asyncio.gather(*handles) == [2 * i for i in range(50)]


async def test_countdown_retry_and_revoke(memory_app: AioQueue) -> None:
    calls: list[int] = []

    @memory_app.task(bind=True)
    async def flaky(self: Any) -> int:
        calls.append(self.request.retries)
        if self.request.retries == 0:
            raise self.retry(countdown=0.05)
        return self.request.retries

    @memory_app.task
    async def never() -> None:
        raise AssertionError("revoked tasks must not run")

    revoked = await never.apply_async(countdown=0.1)
    await revoked.revoke()
    async with memory_app.worker(concurrency=5):
        start = time.monotonic()
        delayed = await flaky.apply_async(countdown=0.1)
        with anyio.fail_after(5):
            assert await delayed == 1
            with pytest.raises(TaskRevoked):
                await revoked
        assert time.monotonic() - start >= 0.15
    assert calls == [0, 1]
    assert await revoked.state() is State.REVOKED


async def test_unknown_task_is_dead_lettered(memory_app: AioQueue) -> None:
    @memory_app.task
    async def ok() -> str:
        return "ok"

    handle = await memory_app.send_task("nobody.home")
    async with memory_app.worker(concurrency=2):
        with anyio.fail_after(5):
            with pytest.raises(NotRegistered, match=r"nobody\.home"):
                await handle
            assert await (await ok.delay()) == "ok"
    letters = await memory_app.broker.dead_letters("default", 10)
    assert [letter.reason for letter in letters] == ["not registered: nobody.home"]
    assert await memory_app.broker.requeue_dead("default", None) == 1
    assert await memory_app.broker.purge_dead("default") == 0


async def test_reclaim_after_visibility_timeout(memory_app: AioQueue) -> None:
    broker = memory_app.broker
    await broker.enqueue([Enqueue("default", b"payload")])
    first = await broker.fetch(["default"], "dead-worker", 10, 0.1)
    assert [d.deliveries for d in first] == [1]
    assert await broker.reclaim(["default"], "live", idle_s=10.0, count=10) == []
    again = await broker.reclaim(["default"], "live", idle_s=0.0, count=10)
    assert [(d.payload, d.deliveries) for d in again] == [(b"payload", 2)]


async def test_time_limit_and_terminate(memory_app: AioQueue) -> None:
    from aioqueue import TimeLimitExceeded

    inside = anyio.Event()

    @memory_app.task(time_limit=0.05)
    async def too_slow() -> None:
        await anyio.sleep(10)

    @memory_app.task
    async def forever() -> None:
        inside.set()
        await anyio.sleep(10)

    async with memory_app.worker(concurrency=4):
        with anyio.fail_after(5):
            with pytest.raises(TimeLimitExceeded):
                await (await too_slow.delay())
            handle = await forever.delay()
            await inside.wait()
            await handle.revoke(terminate=True)
            with pytest.raises(TaskRevoked):
                await handle
    assert (await handle.info()).worker is not None  # recorded by the worker that ran it
