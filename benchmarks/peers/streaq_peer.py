"""streaq adapter: ``await task.enqueue()``, ``worker.enqueue_many`` and ``task.result()``.

streaq's client is its ``Worker`` object used as an async context manager (the docs'
``async with worker: await task.enqueue(...)``); ``result()`` waits on a pub/sub channel
per task (pushed, no polling).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from redis.asyncio import Redis

from benchmarks._measure import KeysPresent, KeysRemaining, wait_until
from benchmarks.peers.base import CONCURRENCY_ENV, DEFAULT_CONCURRENCY, Peer, fresh_import, venv_bin


class StreaqPeer(Peer):
    name = "streaq"
    has_batch = True  # Worker.enqueue_many: one pipeline
    # Each waiting result() holds one pub/sub connection of the pool (256, streaq_tasks.py):
    # more waiters than connections would stall, so the memory row uses 200 handles.
    memory_handles = 200

    def worker_cmd(self, concurrency: int | None) -> tuple[list[str], dict[str, str]]:
        cmd = [venv_bin("streaq"), "run", "benchmarks.peers.streaq_tasks:worker"]
        return cmd, {CONCURRENCY_ENV: str(concurrency or DEFAULT_CONCURRENCY)}

    def concurrency_note(self, requested: int | None) -> str:
        return f"concurrency={requested or DEFAULT_CONCURRENCY} (streaq's default: 16)"

    async def connect(self) -> None:
        self.tasks: Any = fresh_import("benchmarks.peers.streaq_tasks")
        self._ready, self._closing = asyncio.Event(), asyncio.Event()
        self._holder = asyncio.create_task(self._hold())
        await asyncio.wait_for(self._ready.wait(), 30)
        self.redis: Redis[Any] = Redis.from_url(self.redis_url)  # completion polling only

    async def _hold(self) -> None:
        # `async with worker:` (the documented client usage) holds anyio cancel scopes,
        # which must be entered and exited in the same task: one task of its own does both.
        async with self.tasks.worker:
            self._ready.set()
            await self._closing.wait()

    async def close(self) -> None:
        self._closing.set()
        await self._holder
        await self.redis.aclose()

    def _result_keys(self, ids: list[str]) -> list[str]:
        # finish_task SETs the result under <results_key><task id> (ttl 5 min by default).
        return [self.tasks.worker.results_key + i for i in ids]

    async def _send_all(self, task: str, n: int, payload: str | None = None) -> list[str]:
        fn = getattr(self.tasks, task)
        args = () if payload is None else (payload,)
        batch = [fn.enqueue(*args) for _ in range(n)]
        await self.tasks.worker.enqueue_many(batch)
        return [t.id for t in batch]

    async def enqueue(self, n: int) -> None:
        for _ in range(n):
            await self.tasks.noop.enqueue()

    async def enqueue_batch(self, n: int) -> None:
        await self._send_all("noop", n)

    async def _run_all(self, task: str, n: int, timeout: float) -> None:
        ids = await self._send_all(task, n)
        await wait_until(KeysPresent(self.redis, self._result_keys(ids)), timeout,
                         "streaq results", self.alive)

    async def run_noops(self, n: int, timeout: float) -> None:
        await self._run_all("noop", n, timeout)

    async def round_trip(self, timeout: float) -> None:
        task = await self.tasks.add.enqueue(1, 2)
        result = await task.result(timeout=int(timeout) or 1)
        assert result.result == 3, result

    async def run_sleepy(self, n: int, timeout: float) -> None:
        await self._run_all("sleepy", n, timeout)

    async def fill(self, task: str, n: int, payload: str | None = None) -> None:
        ids = await self._send_all(task, n, payload)
        self._left = KeysRemaining(self.redis, self._result_keys(ids))

    async def remaining(self) -> int:
        return await self._left.count()

    async def waiting_handles(self, n: int, timeout: float) -> list[Awaitable[Any]]:
        tasks = [await self.tasks.noop.enqueue() for _ in range(n)]
        return [t.result(timeout=int(timeout)) for t in tasks]
