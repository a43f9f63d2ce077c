"""arq task module; worker: ``arq benchmarks.peers.arq_tasks.WorkerSettings``."""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

from arq.connections import RedisSettings
from arq.logs import default_log_config

from benchmarks.peers._first_run import record_first_run
from benchmarks.peers.base import CONCURRENCY_ENV, REDIS_URL_ENV


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    return x + y


async def sleepy(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(0.05)


async def big(ctx: dict[str, Any], payload: str) -> None:
    return None


async def first_run(ctx: dict[str, Any]) -> None:
    record_first_run()


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop, add, sleepy, big, first_run]
    redis_settings = RedisSettings.from_dsn(os.environ[REDIS_URL_ENV])


# arq's CLI has no concurrency flag; max_jobs (default 10) is a WorkerSettings attribute.
# The harness always sets it (100 in the default-worker phases, 500 in the sleep test).
if os.environ.get(CONCURRENCY_ENV):
    WorkerSettings.max_jobs = int(os.environ[CONCURRENCY_ENV])  # type: ignore[attr-defined]

# arq's CLI logs two lines per job at INFO; every other worker here runs at WARNING, and
# per-job logging would dominate a no-op's cost, so arq gets WARNING too (--custom-log-dict).
LOG_CONFIG = default_log_config(verbose=False)
LOG_CONFIG["handlers"]["arq.standard"]["level"] = "WARNING"
LOG_CONFIG["loggers"]["arq"]["level"] = "WARNING"
