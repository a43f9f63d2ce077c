"""``ResultSet``: many handles awaited as one, on every layout, and what a wait costs."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import anyio
import pytest

from aioqueue import AioQueue, ResultSet


def _tasks(app: AioQueue) -> tuple[Any, Any]:
    @app.task(name="rs.square")
    async def square(x: int) -> int:
        return x * x

    @app.task(name="rs.boom")
    async def boom(x: int) -> int:
        raise ValueError(f"boom {x}")

    return square, boom


async def test_a_result_set_returns_every_result_in_order(any_app: AioQueue) -> None:
    square, _ = _tasks(any_app)
    handles = await square.delay_many([(i,) for i in range(50)])
    async with any_app.worker(concurrency=10):
        first = handles[0]
        assert await first == 0  # awaited alone first: its record is then read back
        rs = ResultSet([*handles, handles[3]])  # a handle listed twice gets its result twice
        with anyio.fail_after(20):
            values = await rs
        assert values == [i * i for i in range(50)] + [9]
        assert await rs.completed_count() == 51
        assert await rs.ready() is True
        assert len(rs) == 51


async def test_a_failed_task_in_a_set_raises_its_error_or_takes_its_place(
    any_app: AioQueue,
) -> None:
    square, boom = _tasks(any_app)
    async with any_app.worker(concurrency=4):
        handles = [await square.delay(2), await boom.delay(7), await square.delay(3)]
        with anyio.fail_after(20), pytest.raises(ValueError, match="boom 7"):
            await ResultSet(handles).get()
        with anyio.fail_after(20):
            values = await ResultSet(handles).join(propagate=False)
    assert values[0] == 4 and values[2] == 9
    assert isinstance(values[1], ValueError) and "boom 7" in str(values[1])


async def test_a_set_that_times_out_leaves_nothing_registered(any_app: AioQueue) -> None:
    square, _ = _tasks(any_app)
    handles = await square.delay_many([(i,) for i in range(20)])
    with pytest.raises(TimeoutError, match="20 of 20 tasks not ready"):
        await ResultSet(handles).get(timeout=0.2)
    waiter = any_app.waiter
    assert waiter._groups == {} and waiter._group_list == []
    async with any_app.worker(concurrency=4):
        with anyio.fail_after(20):
            assert await ResultSet(handles) == [i * i for i in range(20)]


async def test_a_set_whose_replies_were_lost_reads_the_stored_results(
    app: AioQueue, raw: Any,
) -> None:
    square, _ = _tasks(app)
    handles = await square.delay_many([(i,) for i in range(30)])
    async with app.worker(concurrency=10):
        for handle in handles:  # stored, while nobody waits: replies pile up unread
            with anyio.fail_after(20):
                while await raw.exists(f"{app.conf.key_prefix}:result:{handle.id}") == 0:
                    await anyio.sleep(0.02)
    await raw.delete(app._reply_to)  # the replies are gone: only the records are left
    app.waiter.RECHECK_FIRST_S = 0.05
    with anyio.fail_after(20):
        assert await ResultSet(handles) == [i * i for i in range(30)]


async def test_waiting_on_a_set_costs_a_fraction_of_gathering_its_handles(
    app: AioQueue,
) -> None:
    """What the waiting itself allocates per handle (the handles exist either way)."""
    square, _ = _tasks(app)
    count = 5000
    handles = await square.delay_many([(i,) for i in range(count)])

    waiter = app.waiter

    def registered() -> bool:
        return bool(waiter._groups) or len(waiter._futures) == count

    async def cost(make_wait: Any) -> float:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            waiting = asyncio.ensure_future(make_wait())
            with anyio.fail_after(5):  # until every id is registered with the waiter
                while not registered():
                    await asyncio.sleep(0)
            during = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return (during - before) / count

    as_set = await cost(lambda: ResultSet(handles).get())
    gathered = await cost(lambda: asyncio.gather(*handles))
    print(f"waiting per handle: ResultSet {as_set:.0f} B, asyncio.gather {gathered:.0f} B")
    assert as_set < 250, as_set
    assert as_set * 4 < gathered, (as_set, gathered)
    assert app.waiter._groups == {}  # a cancelled wait unregisters its ids


async def test_celerys_sync_spellings_work_in_sync_code_and_fail_loudly_in_async(
    app: AioQueue,
) -> None:
    square, _ = _tasks(app)
    async with app.worker(concurrency=4):
        handles = [await square.delay(i) for i in range(5)]
        rs = ResultSet(handles)
        # Sync code (no running loop): Celery's blocking get() and ready() work as there.
        assert await anyio.to_thread.run_sync(lambda: rs.get(timeout=20)) == [0, 1, 4, 9, 16]
        assert await anyio.to_thread.run_sync(lambda: rs.ready()) is True
        # Async code: the sync habit fails at once, naming the awaited spelling.
        with pytest.raises(TypeError, match=r"await .*ready\(\)"):
            if rs.ready():
                pass
        assert await rs.ready()
