"""What the failover tests share (``test_sentinel.py``, ``test_cluster.py``): waiting for a
promotion or a resubscription, and collecting the results that arrive."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from aioqueue import AsyncResult


def since(moment: float | None, start: float) -> str:
    return "never" if moment is None else f"{moment - start:.2f}s"


async def wait_promoted(port: int, timeout: float) -> float:
    """When the node on ``port`` says it is a master (a promoted replica)."""
    async with aioredis.Redis(port=port) as client:
        deadline = time.monotonic() + timeout
        while (await client.execute_command("ROLE"))[0] != b"master":
            assert time.monotonic() < deadline, "the replica was not promoted"
            await asyncio.sleep(0.05)
        return time.monotonic()


async def wait_subscribed(port: int, channel: str, timeout: float) -> float:
    """When somebody (a worker's control listener) is subscribed to ``channel`` there."""
    async with aioredis.Redis(port=port) as client:
        deadline = time.monotonic() + timeout
        while (await client.pubsub_numsub(channel))[0][1] < 1:
            assert time.monotonic() < deadline, "the control channel did not resubscribe"
            await asyncio.sleep(0.05)
        return time.monotonic()


async def results(handles: dict[int, AsyncResult[Any]], timeout: float) -> dict[int, Any]:
    """The results that arrive within ``timeout`` (all of them, waited for together)."""
    async def one(i: int, handle: AsyncResult[Any]) -> tuple[int, Any]:
        return i, await handle

    tasks = [asyncio.create_task(one(i, h)) for i, h in handles.items()]
    if not tasks:
        return {}
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return dict(task.result() for task in done if task.exception() is None)


async def first_result_after(handles: dict[int, AsyncResult[Any]],
                             after_kill: set[int]) -> float | None:
    """When the first task sent after the kill got its result (from its stored record)."""
    times = []
    for i in after_kill:
        info = await handles[i].info()
        if info.date_done is not None:
            times.append(info.date_done.timestamp())
    if not times:
        return None
    # date_done is wall-clock time: convert to the monotonic clock of the kill.
    return min(times) - time.time() + time.monotonic()
