"""SAQ task module; worker: ``saq benchmarks.peers.saq_tasks.settings``."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from saq import Queue

from benchmarks.peers.base import CONCURRENCY_ENV, REDIS_URL_ENV


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def add(ctx: dict[str, Any], *, x: int, y: int) -> int:
    return x + y


async def sleepy(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(0.05)


queue = Queue.from_url(os.environ[REDIS_URL_ENV])

settings: dict[str, Any] = {"queue": queue, "functions": [noop, add, sleepy]}
# SAQ's CLI has no concurrency flag; it is a settings key (default 10).
if os.environ.get(CONCURRENCY_ENV):
    settings["concurrency"] = int(os.environ[CONCURRENCY_ENV])
