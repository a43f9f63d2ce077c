"""arq adapter: ``pool.enqueue_job`` and ``job.result()`` (arq's documented client API)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.constants import default_queue_name

from benchmarks._measure import wait_until
from benchmarks.peers.base import CONCURRENCY_ENV, DEFAULT_CONCURRENCY, Peer, venv_bin


class ArqPeer(Peer):
    name = "arq"

    def worker_cmd(self, concurrency: int | None) -> tuple[list[str], dict[str, str]]:
        cmd = [
            venv_bin("arq"),
            "benchmarks.peers.arq_tasks.WorkerSettings",
            "--custom-log-dict",
            "benchmarks.peers.arq_tasks.LOG_CONFIG",
        ]
        return cmd, {CONCURRENCY_ENV: str(concurrency or DEFAULT_CONCURRENCY)}

    def concurrency_note(self, requested: int | None) -> str:
        return f"max_jobs={requested or DEFAULT_CONCURRENCY} (arq's default: 10)"

    async def connect(self) -> None:
        self.pool: ArqRedis = await create_pool(RedisSettings.from_dsn(self.redis_url))

    async def close(self) -> None:
        await self.pool.aclose()

    async def enqueue(self, n: int) -> None:
        for _ in range(n):
            await self.pool.enqueue_job("noop")

    async def _queue_empty(self) -> bool:
        # arq keeps a job in the queue sorted set until it finishes and removes it in the
        # same MULTI that stores the result, so ZCARD == 0 means "all results stored".
        return int(await self.pool.zcard(default_queue_name)) == 0

    async def run_noops(self, n: int, timeout: float) -> None:
        await self.enqueue(n)  # arq has no batch enqueue API
        await wait_until(self._queue_empty, timeout, "arq queue to drain", self.alive)

    async def round_trip(self, timeout: float) -> None:
        job = await self.pool.enqueue_job("add", 1, 2)
        assert job is not None
        # Default poll_delay (0.5 s): arq's result() polls redis, there is no push.
        result = await job.result(timeout=timeout)
        assert result == 3, result

    async def run_sleepy(self, n: int, timeout: float) -> None:
        for _ in range(n):
            await self.pool.enqueue_job("sleepy")
        await wait_until(self._queue_empty, timeout, "arq queue to drain", self.alive)

    async def fill(self, task: str, n: int, payload: str | None = None) -> None:
        args = () if payload is None else (payload,)
        for _ in range(n):  # no batch enqueue API
            await self.pool.enqueue_job(task, *args)

    async def remaining(self) -> int:
        return int(await self.pool.zcard(default_queue_name))

    async def waiting_handles(self, n: int, timeout: float) -> list[Awaitable[Any]]:
        jobs = [await self.pool.enqueue_job("noop") for _ in range(n)]
        # job.result() polls the result key every 0.5 s (its default poll_delay).
        return [j.result(timeout=timeout) for j in jobs if j]
