"""streaq task module; worker: ``streaq run benchmarks.peers.streaq_tasks:worker``.

streaq's CLI has no concurrency flag: it is a ``Worker(concurrency=...)`` argument (default
16), read here from ``BENCH_CONCURRENCY`` (the harness sets 100, or 500 in the sleep test).
"""

from __future__ import annotations

import logging
import os

import anyio
from streaq import Worker

from benchmarks.peers._first_run import record_first_run
from benchmarks.peers.base import CONCURRENCY_ENV, REDIS_URL_ENV


def _warning_and_above(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


# streaq's CLI has no log-level option and configures its logger at INFO, two lines per
# task; every other worker here runs at WARNING, so drop INFO records (dictConfig keeps
# filters that are already on a logger).
logging.getLogger("streaq").addFilter(_warning_and_above)

# Every waiting result() holds a pub/sub connection of the client's coredis pool (default
# 64 connections): the closed-loop row's 100 concurrent waiters would exhaust it and stall,
# so the pool gets room for them (the only non-default client setting; see README).
POOL_CONNECTIONS = 256

worker = Worker(
    redis_url=os.environ[REDIS_URL_ENV],
    redis_kwargs={"max_connections": POOL_CONNECTIONS},
    concurrency=int(os.environ.get(CONCURRENCY_ENV) or 16),
)


@worker.task
async def noop() -> None:
    return None


@worker.task
async def add(x: int, y: int) -> int:
    return x + y


@worker.task
async def sleepy() -> None:
    await anyio.sleep(0.05)


@worker.task
async def big(payload: str) -> None:
    return None


@worker.task
async def first_run() -> None:
    record_first_run()
