"""arq's task module for the SIGKILL reliability test (benchmarks/_reliability.py).

Worker: ``arq benchmarks.peers.arq_reliability_tasks.WorkerSettings`` (max_jobs=100).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings

from benchmarks._reliability import AsyncRecorder, safe_settings
from benchmarks.peers.arq_tasks import LOG_CONFIG
from benchmarks.peers.base import REDIS_URL_ENV, venv_bin

MAX_RATE = 200.0
NOTE = ("`max_jobs=100`, defaults otherwise: a job stays in the queue until it finished; "
        "while it runs, an `arq:in-progress:<id>` key with a TTL of `job_timeout` + 10 s "
        "(default 300 + 10 s) keeps other workers off it, so a killed worker's jobs run "
        "again only after that TTL (`max_tries` 5).")
SAFE_NOTE = ("as `arq`, plus `job_timeout=10` (s): the in-progress key then expires after "
             "20 s, so a killed worker's jobs run again after ~20 s; a job running longer "
             "than 10 s would be cancelled.")

_recorder = AsyncRecorder()


async def work(ctx: dict[str, Any], i: int) -> None:
    await _recorder.work(i)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [work]
    redis_settings = RedisSettings.from_dsn(os.environ[REDIS_URL_ENV])
    max_jobs = 100


if safe_settings():
    WorkerSettings.job_timeout = 10  # type: ignore[attr-defined]


def worker_cmd() -> list[str]:
    # WARNING-level logging, as in the speed benchmark (arq logs every job at INFO).
    return [venv_bin("arq"), f"{__name__}.WorkerSettings",
            "--custom-log-dict", "benchmarks.peers.arq_tasks.LOG_CONFIG"]


class Producer:
    async def start(self) -> None:
        self.pool: ArqRedis = await create_pool(
            RedisSettings.from_dsn(os.environ[REDIS_URL_ENV]))

    async def send(self, i: int) -> None:
        await self.pool.enqueue_job("work", i)

    async def close(self) -> None:
        await self.pool.aclose()


__all__ = ["LOG_CONFIG"]
