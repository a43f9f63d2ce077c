"""Dramatiq's task module for the SIGKILL reliability test (benchmarks/_reliability.py).

Worker: ``dramatiq benchmarks.peers.dramatiq_reliability_tasks --processes 1 --threads 100``.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks._reliability import SyncRecorder
from benchmarks.peers.base import REDIS_URL_ENV, venv_bin

MAX_RATE = 200.0
NOTE = ("`--processes 1 --threads 100` (default: one process per CPU x 8 threads), "
        "`RedisBroker` defaults otherwise: a message is acknowledged after its actor ran; "
        "a worker's unacknowledged messages are requeued by another worker's maintenance "
        "once its heartbeat is older than `heartbeat_timeout` (default 60,000 ms); "
        "maintenance runs on a random 1 in 1,000 of the broker's script calls "
        "(`maintenance_chance`).")
SAFE_NOTE = NOTE

broker = RedisBroker(url=os.environ[REDIS_URL_ENV])
dramatiq.set_broker(broker)
_recorder = SyncRecorder()


@dramatiq.actor
def work(i: int) -> None:
    _recorder.work(i)


def worker_cmd() -> list[str]:
    return [venv_bin("dramatiq"), __name__, "--processes", "1", "--threads", "100"]


class Producer:
    """Dramatiq's client (``actor.send``) is synchronous: calls on one dedicated thread."""

    async def start(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dramatiq-client")

    async def send(self, i: int) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, work.send, i)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, broker.close)
        self._thread.shutdown(wait=True)
