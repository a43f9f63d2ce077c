"""streaq's task module for the SIGKILL reliability test (benchmarks/_reliability.py).

Worker: ``streaq run benchmarks.peers.streaq_reliability_tasks:worker`` (concurrency=100).
"""

from __future__ import annotations

import contextlib
import os

from streaq import Worker

from benchmarks._reliability import AsyncRecorder
from benchmarks.peers.base import REDIS_URL_ENV, venv_bin

MAX_RATE = 200.0
NOTE = ("`Worker(concurrency=100)`, defaults otherwise: tasks are read from a Redis stream "
        "through a consumer group and acknowledged after they ran; a dead worker's "
        "pending tasks are claimed by another worker once idle for `idle_timeout` "
        "(default 60 s; live workers renew it).")
SAFE_NOTE = NOTE

worker = Worker(redis_url=os.environ[REDIS_URL_ENV], concurrency=100)
_recorder = AsyncRecorder()


@worker.task
async def work(i: int) -> None:
    await _recorder.work(i)


def worker_cmd() -> list[str]:
    return [venv_bin("streaq"), "run", f"{__name__}:worker"]


class Producer:
    async def start(self) -> None:
        self._ctx = contextlib.AsyncExitStack()
        await self._ctx.enter_async_context(worker)  # documented: `async with worker:`

    async def send(self, i: int) -> None:
        await work.enqueue(i)

    async def close(self) -> None:
        await self._ctx.aclose()
