"""SAQ task module; worker: ``saq benchmarks.peers.saq_tasks.settings``."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from saq import Queue

from benchmarks.peers._first_run import record_first_run
from benchmarks.peers.base import CONCURRENCY_ENV, REDIS_URL_ENV


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def add(ctx: dict[str, Any], *, x: int, y: int) -> int:
    return x + y


async def sleepy(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(0.05)


async def big(ctx: dict[str, Any], *, payload: str) -> None:
    return None


async def first_run(ctx: dict[str, Any]) -> None:
    record_first_run()


queue = Queue.from_url(os.environ[REDIS_URL_ENV])

settings: dict[str, Any] = {"queue": queue, "functions": [noop, add, sleepy, big, first_run]}
# SAQ's CLI has no concurrency flag; it is a settings key (default 10). The harness always
# sets it (100 in the default-worker phases, 500 in the sleep test).
if os.environ.get(CONCURRENCY_ENV):
    settings["concurrency"] = int(os.environ[CONCURRENCY_ENV])
