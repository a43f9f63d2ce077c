"""aioqueue adapter: ``task.delay``, ``task.delay_many`` and awaiting the handles."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable
from typing import Any

from benchmarks.peers.base import REDIS_URL_ENV, Peer, fresh_import, venv_bin


class AioqueuePeer(Peer):
    name = "aioqueue"
    has_batch = True
    memory_handles = 100_000  # the full run's H (--short: _scenarios.SHORT.memory_home)
    #: The task module the worker loads (``<module>:app``) and the driver imports.
    tasks_module = "benchmarks.peers.aioqueue_tasks"

    def worker_cmd(self, concurrency: int | None) -> tuple[list[str], dict[str, str]]:
        script = venv_bin("aioqueue")
        # Fall back to `python -m aioqueue` if the console script is not installed (yet).
        prefix = [script] if shutil.which(script) else [venv_bin("python"), "-m", "aioqueue"]
        cmd = [*prefix, "worker", f"{self.tasks_module}:app", "-l", "warning"]
        if concurrency:
            cmd += ["-c", str(concurrency)]
        return cmd, {}

    async def connect(self) -> None:
        self.tasks: Any = fresh_import(self.tasks_module)

    async def close(self) -> None:
        await self.tasks.app.close()
        if getattr(self, "_redis", None) is not None:
            await self._redis.aclose()
            self._redis = None

    async def enqueue(self, n: int) -> None:
        for _ in range(n):
            await self.tasks.noop.delay()

    async def enqueue_batch(self, n: int) -> None:
        await self.tasks.noop.delay_many([() for _ in range(n)])

    async def _run_all(self, task: Any, n: int, timeout: float) -> None:
        handles = await task.delay_many([() for _ in range(n)])  # one pipeline
        # Awaiting every handle is how an aioqueue user waits for results.
        await asyncio.wait_for(asyncio.gather(*handles), timeout)

    async def run_noops(self, n: int, timeout: float) -> None:
        await self._run_all(self.tasks.noop, n, timeout)

    async def round_trip(self, timeout: float) -> None:
        handle = await self.tasks.add.delay(1, 2)
        result = await asyncio.wait_for(handle, timeout)  # `await handle` -> 3
        assert result == 3, result

    async def run_sleepy(self, n: int, timeout: float) -> None:
        await self._run_all(self.tasks.sleepy, n, timeout)

    async def fill(self, task: str, n: int, payload: str | None = None) -> None:
        args = [(payload,) if payload is not None else () for _ in range(n)]
        await getattr(self.tasks, task).delay_many(args)  # one pipeline, nobody awaits

    async def remaining(self) -> int:
        # A settled task leaves its priority stream in the same script that stores its
        # result: XLEN of the queue's ten streams (benchmarks/_flow.py's drain signal).
        from benchmarks import _flow

        pipe = self._poll_client().pipeline(transaction=False)
        for s in _flow.stream_keys(self.tasks.app):
            pipe.xlen(s)
        return int(sum(await pipe.execute()))

    def _poll_client(self) -> Any:
        if getattr(self, "_redis", None) is None:
            from redis.asyncio import Redis

            # A plain client of the harness's own, only for polling.
            self._redis = Redis.from_url(self.redis_url)
        return self._redis

    async def waiting_handles(self, n: int, timeout: float) -> list[Awaitable[Any]]:
        # The handles themselves are awaitable; delay_many creates them in one pipeline.
        return list(await self.tasks.noop.delay_many([() for _ in range(n)]))


class AioqueueEventsPeer(AioqueuePeer):
    """aioqueue with task events recorded (``-E``): what monitoring costs."""

    name = "aioqueue -E"
    # -E changes the worker, not the producer: the memory row would repeat aioqueue's.
    memory_handles = None
    memory_note = "same producer as aioqueue (-E only changes the worker)"

    def worker_cmd(self, concurrency: int | None) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().worker_cmd(concurrency)
        return [*cmd, "-E"], env


class AioqueueFlowPeer(AioqueuePeer):
    """The worker and tasks of the "Flow control costs" section (``benchmarks/_flow.py``):
    aioqueue's default worker on ``aioqueue_flow_tasks``, which adds the flow-control
    variants of the no-op. Not a column of the main table."""

    name = "aioqueue (flow control)"
    tasks_module = "benchmarks.peers.aioqueue_flow_tasks"


class AioqueueUrlPeer(AioqueuePeer):
    """The main table's aioqueue tasks and worker on a broker URL of its own
    (``redis_url``, e.g. ``redis+cluster://...``): the "Redis Cluster vs single server"
    section (``benchmarks/_cluster.py``). Not a column of the main table."""

    name = "aioqueue (cluster section)"

    def worker_cmd(self, concurrency: int | None) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().worker_cmd(concurrency)
        return cmd, {**env, REDIS_URL_ENV: self.redis_url}

    async def connect(self) -> None:
        # The task module reads the URL from the environment at import.
        before = os.environ.get(REDIS_URL_ENV)
        os.environ[REDIS_URL_ENV] = self.redis_url
        try:
            await super().connect()
        finally:
            if before is None:
                os.environ.pop(REDIS_URL_ENV, None)
            else:
                os.environ[REDIS_URL_ENV] = before
