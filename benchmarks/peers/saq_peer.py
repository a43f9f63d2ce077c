"""SAQ adapter: ``queue.enqueue`` and ``queue.apply`` (SAQ's documented client API)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from saq import Queue

from benchmarks._measure import wait_until
from benchmarks.peers.base import CONCURRENCY_ENV, DEFAULT_CONCURRENCY, Peer, venv_bin


class SaqPeer(Peer):
    name = "saq"

    def worker_cmd(self, concurrency: int | None) -> tuple[list[str], dict[str, str]]:
        # One worker process is SAQ's default (--workers 1); its default log level is ERROR.
        cmd = [venv_bin("saq"), "benchmarks.peers.saq_tasks.settings"]
        return cmd, {CONCURRENCY_ENV: str(concurrency or DEFAULT_CONCURRENCY)}

    def concurrency_note(self, requested: int | None) -> str:
        return f"concurrency={requested or DEFAULT_CONCURRENCY} (SAQ's default: 10)"

    async def connect(self) -> None:
        self.queue = Queue.from_url(self.redis_url)
        await self.queue.connect()

    async def close(self) -> None:
        await self.queue.disconnect()

    async def enqueue(self, n: int) -> None:
        for _ in range(n):
            await self.queue.enqueue("noop")

    async def _drained(self) -> bool:
        # SAQ removes a job from its "incomplete" sorted set in the same pipeline that
        # stores the job's final status and result.
        return await self.queue.count("incomplete") == 0

    async def run_noops(self, n: int, timeout: float) -> None:
        await self.enqueue(n)  # SAQ has no batch enqueue (map() also waits for results)
        await wait_until(self._drained, timeout, "SAQ queue to drain", self.alive)

    async def round_trip(self, timeout: float) -> None:
        # Default poll_interval (0.5 s): apply() polls the job's status.
        result = await self.queue.apply("add", timeout=timeout, x=1, y=2)
        assert result == 3, result

    async def run_sleepy(self, n: int, timeout: float) -> None:
        for _ in range(n):
            await self.queue.enqueue("sleepy")
        await wait_until(self._drained, timeout, "SAQ queue to drain", self.alive)

    async def fill(self, task: str, n: int, payload: str | None = None) -> None:
        kwargs = {} if payload is None else {"payload": payload}
        for _ in range(n):  # no batch enqueue API
            await self.queue.enqueue(task, **kwargs)

    async def remaining(self) -> int:
        return int(await self.queue.count("incomplete"))

    async def waiting_handles(self, n: int, timeout: float) -> list[Awaitable[Any]]:
        jobs = [await self.queue.enqueue("noop") for _ in range(n)]
        # What apply() does after enqueueing: refresh(until_complete), polling every 0.5 s.
        return [j.refresh(until_complete=timeout) for j in jobs if j]
