"""aioqueue task module.

Worker: ``aioqueue worker benchmarks.peers.aioqueue_tasks:app [-c N] -l warning``.
"""

from __future__ import annotations

import asyncio
import os

from aioqueue import AioQueue
from benchmarks.peers._first_run import record_first_run
from benchmarks.peers.base import REDIS_URL_ENV

app = AioQueue("bench", broker=os.environ[REDIS_URL_ENV])


@app.task
async def noop() -> None:
    return None


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
async def sleepy() -> None:
    await asyncio.sleep(0.05)


@app.task
async def big(payload: str) -> None:
    """The 1 MB-argument row: carries the argument, does nothing with it."""
    return None


@app.task
async def first_run() -> None:
    record_first_run()
