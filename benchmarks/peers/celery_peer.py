"""Celery adapter: ``task.delay()`` and ``AsyncResult.get()`` (Celery's sync client API).

Celery's client is synchronous, so every call runs on one dedicated thread (Celery's
result backend is thread-local; one thread keeps one connection and one result consumer);
the paced background producers use a second thread, and the closed-loop row a pool of as
many threads as producers.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable
from typing import Any, TypeVar

from redis.asyncio import Redis

from benchmarks._measure import KeysPresent, KeysRemaining, wait_until
from benchmarks.peers.base import DaemonThreads, Peer, fresh_import, venv_bin

#: Threads of the closed-loop row's pool: one per producer coroutine of that row.
CLOSED_LOOP_THREADS = 100
#: The sleep test's pool. Celery tasks are sync functions and prefork would need 500
#: processes. Of the two I/O pools, threads ran the sleep test faster and more steadily
#: here than gevent (500 x 50 ms: ~1.2-1.5 s vs ~2.5-3.1 s; gevent also ran no-ops at
#: ~120/s against ~600/s), so the sleep test runs `-P threads -c 500`.
SLEEP_POOL = "threads"

T = TypeVar("T")


class CeleryPeer(Peer):
    name = "celery"
    memory_handles = None  # AsyncResult.get() blocks a thread per waiting result

    def worker_cmd(self, concurrency: int | None) -> tuple[list[str], dict[str, str]]:
        cmd = [
            venv_bin("celery"),
            "-A",
            "benchmarks.peers.celery_tasks",
            "worker",
            "--loglevel",
            "WARNING",
        ]
        # Default-worker phases: Celery's default prefork pool, one process per CPU (its
        # fastest configuration for no-ops here; see README). Sleep test: threads, -c 500.
        if concurrency:
            cmd += ["-P", SLEEP_POOL, "-c", str(concurrency)]
        return cmd, {}

    def concurrency_note(self, requested: int | None) -> str:
        if requested:
            return f"-P {SLEEP_POOL} -c {requested}"
        return f"prefork -c {os.cpu_count() or 1} (default = nproc)"

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def connect(self) -> None:
        self.tasks: Any = fresh_import("benchmarks.peers.celery_tasks")
        self._thread = DaemonThreads(1, "celery-client")
        self._send_thread = DaemonThreads(1, "celery-send")
        self._pool: DaemonThreads | None = None
        self._held: list[Any] = []  # every waited-on AsyncResult of this round (_trip)
        self.redis: Redis[Any] = Redis.from_url(self.redis_url)

    async def close(self) -> None:
        # AsyncResult objects sit in reference cycles; their __del__ unsubscribes from
        # redis, so collect them now, while redis is still up, not at interpreter exit.
        await self._call(self._detach)
        await self._call(self.tasks.app.close)
        self._thread.shutdown(wait=True)
        self._send_thread.shutdown(wait=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        await self.redis.aclose()

    def _detach(self) -> None:
        self._held.clear()
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

    def _trip(self, timeout: float) -> Any:
        handle = self.tasks.add.delay(1, 2)
        # Kept alive until close() (list.append is atomic): an AsyncResult that was
        # waited on unsubscribes in its __del__; run by the cyclic GC in the middle of
        # another pub/sub call of the same thread, that deadlocks the thread for good.
        self._held.append(handle)
        return handle.get(timeout=timeout)

    async def round_trip(self, timeout: float) -> None:
        result = await self._call(lambda: self._trip(timeout))
        assert result == 3, result

    async def run_sleepy(self, n: int, timeout: float) -> None:
        await self._run_all(self.tasks.sleepy, n, timeout)

    async def concurrent_round_trip(self, timeout: float) -> None:
        if self._pool is None:
            self._pool = DaemonThreads(CLOSED_LOOP_THREADS, "celery-cl")

        result = await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: self._trip(timeout))
        assert result == 3, result

    async def send_noop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._send_thread, self.tasks.noop.delay)

    async def fill(self, task: str, n: int, payload: str | None = None) -> None:
        fn = getattr(self.tasks, task)
        args = () if payload is None else (payload,)
        ids = await self._call(lambda: [fn.delay(*args).id for _ in range(n)])
        self._left = KeysRemaining(self.redis, [f"celery-task-meta-{i}" for i in ids])

    async def remaining(self) -> int:
        return await self._left.count()
