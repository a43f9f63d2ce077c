"""taskiq task module (Redis streams broker + Redis result backend).

Worker: ``taskiq worker benchmarks.peers.taskiq_tasks:broker --workers 1``.
"""

from __future__ import annotations

import asyncio
import os

from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from benchmarks.peers._first_run import record_first_run
from benchmarks.peers.base import REDIS_URL_ENV

_url = os.environ[REDIS_URL_ENV]

broker = RedisStreamBroker(url=_url).with_result_backend(RedisAsyncResultBackend(redis_url=_url))


@broker.task
async def noop() -> None:
    return None


@broker.task
async def add(x: int, y: int) -> int:
    return x + y


@broker.task
async def sleepy() -> None:
    await asyncio.sleep(0.05)


@broker.task
async def big(payload: str) -> None:
    return None


@broker.task
async def first_run() -> None:
    record_first_run()
