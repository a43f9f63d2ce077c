"""taskiq's task module for the SIGKILL reliability test (benchmarks/_reliability.py).

Worker: ``taskiq worker benchmarks.peers.taskiq_reliability_tasks:broker --workers 1
--max-async-tasks 100`` (Redis streams broker, no result backend: nothing reads results).
"""

from __future__ import annotations

import os

from taskiq_redis import RedisStreamBroker

from benchmarks._reliability import AsyncRecorder, safe_settings
from benchmarks.peers.base import REDIS_URL_ENV, venv_bin

MAX_RATE = 200.0
NOTE = ("`--workers 1 --max-async-tasks 100`, `RedisStreamBroker` defaults otherwise: a "
        "message is acknowledged once the task ran and its result was saved; a dead "
        "worker's pending messages are claimed (XAUTOCLAIM) by another worker once idle "
        "for `idle_timeout` (default 600,000 ms = 10 min).")
SAFE_NOTE = ("as `taskiq`, plus `RedisStreamBroker(idle_timeout=10_000)` (ms): a killed "
             "worker's messages are claimed after 10 s idle; a task running longer than "
             "that would be claimed and run twice.")

# idle_timeout (ms) is the only redelivery knob; 10 s for the safe column.
broker = RedisStreamBroker(url=os.environ[REDIS_URL_ENV],
                           **({"idle_timeout": 10_000} if safe_settings() else {}))
_recorder = AsyncRecorder()


@broker.task
async def work(i: int) -> None:
    await _recorder.work(i)


def worker_cmd() -> list[str]:
    return [venv_bin("taskiq"), "worker", f"{__name__}:broker", "--workers", "1",
            "--max-async-tasks", "100", "--log-level", "WARNING"]


class Producer:
    async def start(self) -> None:
        await broker.startup()

    async def send(self, i: int) -> None:
        await work.kiq(i)

    async def close(self) -> None:
        await broker.shutdown()
