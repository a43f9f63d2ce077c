"""docket's task module for the SIGKILL reliability test (benchmarks/_reliability.py).

Worker: ``docket worker --tasks benchmarks.peers.docket_reliability_tasks:tasks
--docket bench_rel --url ... --concurrency 100``.
"""

from __future__ import annotations

import contextlib
import os

from docket import Docket

from benchmarks._reliability import AsyncRecorder, safe_settings
from benchmarks.peers.base import REDIS_URL_ENV, venv_bin

DOCKET_NAME = "bench_rel"
MAX_RATE = 200.0
NOTE = ("`--concurrency 100`, defaults otherwise: tasks are read from a Redis stream "
        "through a consumer group and acknowledged after they ran; another worker claims "
        "a dead worker's pending tasks once idle for `redelivery_timeout` (default 5 min).")
SAFE_NOTE = ("as `docket`, plus `--redelivery-timeout 10s`: a killed worker's tasks "
             "become eligible after 10 s idle, found by a sweep at a quarter of that.")

_recorder = AsyncRecorder()


async def work(i: int) -> None:
    await _recorder.work(i)


tasks = [work]


def worker_cmd() -> list[str]:
    return [venv_bin("docket"), "worker", "--tasks", f"{__name__}:tasks",
            "--docket", DOCKET_NAME, "--url", os.environ[REDIS_URL_ENV],
            "--concurrency", "100", "--logging-level", "WARNING",
            *(["--redelivery-timeout", "10s"] if safe_settings() else [])]


class Producer:
    async def start(self) -> None:
        self._ctx = contextlib.AsyncExitStack()
        self.docket = await self._ctx.enter_async_context(
            Docket(name=DOCKET_NAME, url=os.environ[REDIS_URL_ENV]))

    async def send(self, i: int) -> None:
        # add() per call: it fixes the key (a fresh uuid7) and `when` when called, so a
        # reused add(work) would schedule the same key again, which docket ignores.
        await self.docket.add(work)(i)

    async def close(self) -> None:
        await self._ctx.aclose()
