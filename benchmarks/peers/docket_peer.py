"""docket adapter: ``await docket.add(fn)(...)``, ``docket.add_many`` and
``execution.get_result()`` (pushed over pub/sub, no polling)."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis

from benchmarks._measure import wait_until
from benchmarks.peers.base import DEFAULT_CONCURRENCY, Peer, fresh_import, venv_bin


class DocketPeer(Peer):
    name = "docket"
    has_batch = True  # Docket.add_many: pipelined chunks of 1,000

    def worker_cmd(self, concurrency: int | None) -> tuple[list[str], dict[str, str]]:
        from benchmarks.peers.docket_tasks import DOCKET_NAME

        cmd = [venv_bin("docket"), "worker",
               "--tasks", "benchmarks.peers.docket_tasks:tasks",
               "--docket", DOCKET_NAME, "--url", self.redis_url,
               "--concurrency", str(concurrency or DEFAULT_CONCURRENCY),
               "--logging-level", "WARNING"]
        return cmd, {}

    def concurrency_note(self, requested: int | None) -> str:
        return f"--concurrency {requested or DEFAULT_CONCURRENCY} (docket's default: 10)"

    async def connect(self) -> None:
        from docket import Docket

        self.tasks: Any = fresh_import("benchmarks.peers.docket_tasks")
        self.docket = Docket(name=self.tasks.DOCKET_NAME, url=self.redis_url)
        await self.docket.__aenter__()
        for fn in self.tasks.tasks:
            self.docket.register(fn)
        self.redis: Redis[Any] = Redis.from_url(self.redis_url)  # completion polling only

    async def close(self) -> None:
        await self.docket.__aexit__(None, None, None)
        await self.redis.aclose()

    async def remaining(self) -> int:
        # A finished run is XACKed and XDELed from the stream in the same script that
        # marks it completed; not-yet-due tasks would wait in the queue zset.
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(self.docket.stream_key)
        pipe.zcard(self.docket.queue_key)
        return int(sum(await pipe.execute()))

    async def _drained(self) -> bool:
        return await self.remaining() == 0

    async def enqueue(self, n: int) -> None:
        # One add() per task: add() picks the task's key, and a scheduler called twice
        # schedules one task (the second call is ALREADY_SCHEDULED, silently).
        add, noop = self.docket.add, self.tasks.noop
        for _ in range(n):
            await add(noop)()

    async def _add_many(self, task: str, n: int, payload: str | None = None) -> None:
        fn = getattr(self.tasks, task)
        args = () if payload is None else (payload,)
        await self.docket.add_many([self.docket.call(fn)(*args) for _ in range(n)])

    async def enqueue_batch(self, n: int) -> None:
        await self._add_many("noop", n)

    async def run_noops(self, n: int, timeout: float) -> None:
        await self._add_many("noop", n)
        await wait_until(self._drained, timeout, "docket stream to drain", self.alive)

    async def round_trip(self, timeout: float) -> None:
        execution = await self.docket.add(self.tasks.add)(1, 2)
        result = await execution.get_result(timeout=timedelta(seconds=timeout))
        assert result == 3, result

    async def run_sleepy(self, n: int, timeout: float) -> None:
        await self._add_many("sleepy", n)
        await wait_until(self._drained, timeout, "docket stream to drain", self.alive)

    async def fill(self, task: str, n: int, payload: str | None = None) -> None:
        await self._add_many(task, n, payload)

    async def waiting_handles(self, n: int, timeout: float) -> list[Awaitable[Any]]:
        add, noop = self.docket.add, self.tasks.noop
        executions = [await add(noop)() for _ in range(n)]  # one key each (see enqueue)
        return [e.get_result(timeout=timedelta(seconds=timeout)) for e in executions]
