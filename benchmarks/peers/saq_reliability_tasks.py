"""SAQ's task module for the SIGKILL reliability test (benchmarks/_reliability.py).

Worker: ``saq benchmarks.peers.saq_reliability_tasks.settings`` (concurrency=100).
"""

from __future__ import annotations

import os
from typing import Any

from saq import Queue

from benchmarks._reliability import AsyncRecorder, safe_settings
from benchmarks.peers.base import REDIS_URL_ENV, venv_bin

MAX_RATE = 200.0
NOTE = ("`concurrency=100`, defaults otherwise: a dequeued job sits in the `active` list; "
        "workers sweep it at most once a minute (`timers['sweep']` 60 s, under a 60 s "
        "lock shared by all workers), and a job past its "
        "`timeout` (default 10 s) is aborted, and retried only if `retries` (default 1 = "
        "one attempt, no retry) allows: a killed worker's jobs end ABORTED, never re-run.")
SAFE_NOTE = ("as `saq`, plus `retries=5` on every job (sent with `enqueue`) and "
             "`timers={'sweep': 5}` on the worker: a killed worker's job is retried once "
             "past its `timeout` (10 s) by a sweep; but a sweep takes a 60 s lock shared "
             "by all workers (`Queue.sweep(lock=60)`), so it runs at most once a minute.")

_recorder = AsyncRecorder()


async def work(ctx: dict[str, Any], *, i: int) -> None:
    await _recorder.work(i)


queue = Queue.from_url(os.environ[REDIS_URL_ENV])
settings: dict[str, Any] = {"queue": queue, "functions": [work], "concurrency": 100}
if safe_settings():
    settings["timers"] = {"sweep": 5}
#: Per-job options (SAQ's retries are set by the producer, on each job).
JOB_OPTIONS: dict[str, Any] = {"retries": 5} if safe_settings() else {}


def worker_cmd() -> list[str]:
    return [venv_bin("saq"), f"{__name__}.settings"]


class Producer:
    async def start(self) -> None:
        self.queue = Queue.from_url(os.environ[REDIS_URL_ENV])
        await self.queue.connect()

    async def send(self, i: int) -> None:
        await self.queue.enqueue("work", i=i, **JOB_OPTIONS)

    async def close(self) -> None:
        await self.queue.disconnect()
