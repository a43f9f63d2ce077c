"""Celery adapter: ``task.delay()`` and ``AsyncResult.get()`` (Celery's sync client API).

Celery's client is synchronous, so every call runs on one dedicated thread (Celery's
result backend is thread-local; one thread keeps one connection and one result consumer).
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from redis.asyncio import Redis

from benchmarks._measure import KeysPresent, wait_until
from benchmarks.peers.base import Peer, fresh_import, venv_bin

T = TypeVar("T")


class CeleryPeer(Peer):
    name = "celery"

    def worker_cmd(self, concurrency: int | None) -> tuple[list[str], dict[str, str]]:
        cmd = [
            venv_bin("celery"),
            "-A",
            "benchmarks.peers.celery_tasks",
            "worker",
            "--loglevel",
            "WARNING",
        ]
        # The requested concurrency is deliberately ignored: the sleep test asks for 500,
        # which for the default prefork pool means 500 processes (gevent/eventlet pools are
        # out of scope). Celery always runs its default: prefork, one process per CPU.
        del concurrency
        return cmd, {}

    def concurrency_note(self, requested: int | None) -> str:
        return f"prefork -c {os.cpu_count() or 1} (default = nproc; not configurable here)"

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def connect(self) -> None:
        self.tasks: Any = fresh_import("benchmarks.peers.celery_tasks")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-client")
        self.redis: Redis[Any] = Redis.from_url(self.redis_url)

    async def close(self) -> None:
        # AsyncResult objects sit in reference cycles; their __del__ unsubscribes from
        # redis, so collect them now, while redis is still up, not at interpreter exit.
        await self._call(self._detach)
        await self._call(self.tasks.app.close)
        self._thread.shutdown(wait=True)
        await self.redis.aclose()

    def _detach(self) -> None:
        gc.collect()
        # Results never .get() stay registered with the backend's pub/sub consumer and
        # would try to UNSUBSCRIBE from a stopped redis at interpreter exit; stopping the
        # consumer and dropping its pubsub handle makes those late calls no-ops.
        consumer = self.tasks.app.backend.result_consumer
        consumer.stop()
        consumer._pubsub = None

    def _delay_loop(self, task: Any, n: int) -> list[str]:
        return [task.delay().id for _ in range(n)]

    async def enqueue(self, n: int) -> None:
        await self._call(lambda: self._delay_loop(self.tasks.noop, n))

    async def _run_all(self, task: Any, n: int, timeout: float) -> None:
        ids = await self._call(lambda: self._delay_loop(task, n))  # no batch API
        keys = [f"celery-task-meta-{i}" for i in ids]  # the redis backend's result keys
        await wait_until(KeysPresent(self.redis, keys), timeout, "celery results", self.alive)

    async def run_noops(self, n: int, timeout: float) -> None:
        await self._run_all(self.tasks.noop, n, timeout)

    async def round_trip(self, timeout: float) -> None:
        result = await self._call(lambda: self.tasks.add.delay(1, 2).get(timeout=timeout))
        assert result == 3, result

    async def run_sleepy(self, n: int, timeout: float) -> None:
        await self._run_all(self.tasks.sleepy, n, timeout)
