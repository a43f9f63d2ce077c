"""docket (pydocket) task module.

Worker: ``docket worker --tasks benchmarks.peers.docket_tasks:tasks --url ... --concurrency N``
(a task collection is any iterable of async functions). The driver registers the same
functions on its ``Docket`` (``docket.add(fn)`` registers and schedules).
"""

from __future__ import annotations

import asyncio

from benchmarks.peers._first_run import record_first_run

DOCKET_NAME = "bench"


async def noop() -> None:
    return None


async def add(x: int, y: int) -> int:
    return x + y


async def sleepy() -> None:
    await asyncio.sleep(0.05)


async def big(payload: str) -> None:
    return None


async def first_run() -> None:
    record_first_run()


tasks = [noop, add, sleepy, big, first_run]
