"""Dramatiq adapter: ``actor.send()`` and ``message.get_result(block=True)``.

Dramatiq's client is synchronous (like Celery's), so calls run on one dedicated thread;
the paced background producers use a second thread and the closed-loop row a pool of as
many threads as producers. ``get_result(block=True)`` is a BRPOPLPUSH on the result key:
Redis hands the result over the moment the worker stores it (no polling).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from redis.asyncio import Redis

from benchmarks._measure import wait_until
from benchmarks.peers.base import DaemonThreads, Peer, fresh_import, venv_bin

T = TypeVar("T")
CLOSED_LOOP_THREADS = 100


class DramatiqPeer(Peer):
    name = "dramatiq"
    memory_handles = None  # get_result(block=True) blocks a thread per waiting result

    def worker_cmd(self, concurrency: int | None) -> tuple[list[str], dict[str, str]]:
        # One worker process (the harness compares one process per library; Dramatiq's
        # default is one per CPU) with `concurrency` threads (default 8 per process).
        threads = concurrency or 100
        cmd = [venv_bin("dramatiq"), "benchmarks.peers.dramatiq_tasks",
               "--processes", "1", "--threads", str(threads)]
        return cmd, {}

    def concurrency_note(self, requested: int | None) -> str:
        return (f"--processes 1 --threads {requested or 100} "
                "(Dramatiq's default: one process per CPU x 8 threads)")

    async def _call(self, fn: Callable[[], T], pool: DaemonThreads | None = None) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool or self._thread, fn)

    async def connect(self) -> None:
        self.tasks: Any = fresh_import("benchmarks.peers.dramatiq_tasks")
        self._thread = DaemonThreads(1, "dramatiq-client")
        self._send_thread = DaemonThreads(1, "dramatiq-send")
        self._pool: DaemonThreads | None = None
        self.redis: Redis[Any] = Redis.from_url(self.redis_url)  # completion polling only

    async def close(self) -> None:
        await self._call(self.tasks.broker.close)
        for pool in (self._thread, self._send_thread, self._pool):
            if pool is not None:
                pool.shutdown(wait=True)
        await self.redis.aclose()

    async def remaining(self) -> int:
        # The Redis broker keeps every message in the queue's ".msgs" hash until its ack
        # (after the actor ran and the Results middleware stored its result), and removes
        # it in the same script as the ack: HLEN == 0 means every message is done.
        return int(await self.redis.hlen(f"{self.tasks.broker.namespace}:default.msgs"))

    async def _drained(self) -> bool:
        return await self.remaining() == 0

    def _send_loop(self, task: str, n: int, payload: str | None = None) -> None:
        actor = getattr(self.tasks, task)
        args = () if payload is None else (payload,)
        for _ in range(n):
            actor.send(*args)

    async def enqueue(self, n: int) -> None:
        await self._call(lambda: self._send_loop("noop", n))

    async def run_noops(self, n: int, timeout: float) -> None:
        await self._call(lambda: self._send_loop("noop", n))  # no batch send API
        await wait_until(self._drained, timeout, "dramatiq queue to drain", self.alive)

    def _add(self, timeout: float) -> int:
        message = self.tasks.add.send(1, 2)
        # Results are in ms; the Redis backend rounds the wait down to whole seconds.
        return int(message.get_result(block=True, timeout=max(1000, int(timeout * 1000))))

    async def round_trip(self, timeout: float) -> None:
        result = await self._call(lambda: self._add(timeout))
        assert result == 3, result

    async def concurrent_round_trip(self, timeout: float) -> None:
        if self._pool is None:
            self._pool = DaemonThreads(CLOSED_LOOP_THREADS, "dramatiq-cl")
        result = await self._call(lambda: self._add(timeout), self._pool)
        assert result == 3, result

    async def send_noop(self) -> None:
        await self._call(self.tasks.noop.send, self._send_thread)

    async def run_sleepy(self, n: int, timeout: float) -> None:
        await self._call(lambda: self._send_loop("sleepy", n))
        await wait_until(self._drained, timeout, "dramatiq queue to drain", self.alive)

    async def fill(self, task: str, n: int, payload: str | None = None) -> None:
        await self._call(lambda: self._send_loop(task, n, payload))
