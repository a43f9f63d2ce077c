"""taskiq adapter: ``task.kiq()`` and ``wait_result()`` (taskiq's documented client API)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from redis.asyncio import Redis

from benchmarks._measure import KeysPresent, KeysRemaining, wait_until
from benchmarks.peers.base import Peer, fresh_import, venv_bin


class TaskiqPeer(Peer):
    name = "taskiq"

    def worker_cmd(self, concurrency: int | None) -> tuple[list[str], dict[str, str]]:
        # taskiq's CLI defaults to 2 worker processes; the harness compares one worker
        # process per library, so --workers 1 (everything else stays default).
        cmd = [
            venv_bin("taskiq"),
            "worker",
            "benchmarks.peers.taskiq_tasks:broker",
            "--workers",
            "1",
            "--log-level",
            "WARNING",
        ]
        if concurrency:
            cmd += ["--max-async-tasks", str(concurrency)]
        return cmd, {}

    def concurrency_note(self, requested: int | None) -> str:
        if requested is None:
            return "--max-async-tasks 100 (default), --workers 1"
        return f"--max-async-tasks {requested}, --workers 1"

    async def connect(self) -> None:
        self.tasks: Any = fresh_import("benchmarks.peers.taskiq_tasks")
        await self.tasks.broker.startup()
        # Plain client only for the harness's completion polling.
        self.redis: Redis[Any] = Redis.from_url(self.redis_url)

    async def close(self) -> None:
        await self.tasks.broker.shutdown()
        await self.redis.aclose()

    async def enqueue(self, n: int) -> None:
        for _ in range(n):
            await self.tasks.noop.kiq()

    async def _run_all(self, task: Any, n: int, timeout: float) -> None:
        ids = [(await task.kiq()).task_id for _ in range(n)]  # no batch kiq API
        # RedisAsyncResultBackend stores each result under the bare task id.
        await wait_until(KeysPresent(self.redis, ids), timeout, "taskiq results", self.alive)

    async def run_noops(self, n: int, timeout: float) -> None:
        await self._run_all(self.tasks.noop, n, timeout)

    async def round_trip(self, timeout: float) -> None:
        handle = await self.tasks.add.kiq(1, 2)
        # Default check_interval (0.2 s): wait_result() polls the result backend.
        result = await handle.wait_result(timeout=timeout)
        assert result.return_value == 3, result

    async def run_sleepy(self, n: int, timeout: float) -> None:
        await self._run_all(self.tasks.sleepy, n, timeout)

    async def before_fill(self) -> None:
        # The worker creates its consumer group at "$" (new messages only) when it starts,
        # so tasks sent before it exists would be skipped: create it now, as the driver's
        # broker.startup() did before the harness's FLUSHALL.
        await self.tasks.broker.startup()

    async def fill(self, task: str, n: int, payload: str | None = None) -> None:
        args = () if payload is None else (payload,)
        fn = getattr(self.tasks, task)
        ids = [(await fn.kiq(*args)).task_id for _ in range(n)]  # no batch kiq API
        self._left = KeysRemaining(self.redis, ids)

    async def remaining(self) -> int:
        return await self._left.count()

    async def waiting_handles(self, n: int, timeout: float) -> list[Awaitable[Any]]:
        handles = [await self.tasks.noop.kiq() for _ in range(n)]
        # wait_result() polls the result backend every 0.2 s (default check_interval).
        return [h.wait_result(timeout=timeout) for h in handles]
