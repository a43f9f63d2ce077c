"""aioqueue adapter: ``task.delay``, ``task.delay_many`` and awaiting the handles."""

from __future__ import annotations

import asyncio
import os
import shutil
from typing import Any

from benchmarks.peers.base import REDIS_URL_ENV, Peer, fresh_import, venv_bin


class AioqueuePeer(Peer):
    name = "aioqueue"
    has_batch = True
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


class AioqueueEventsPeer(AioqueuePeer):
    """aioqueue with task events recorded (``-E``): what monitoring costs."""

    name = "aioqueue -E"

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
