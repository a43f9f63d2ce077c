"""The "Flow control costs" section: aioqueue's worker throughput with flow control on,
as a ratio to the plain no-op measured the same way in the same round.

Each row is a pre-filled drain (as ``benchmarks/scaling.py``): with no worker running,
fill the queue with N tasks of one variant through ``delay_many`` (then close the
producer), start one default ``aioqueue worker`` on ``aioqueue_flow_tasks``, and time the
streams draining from the first entry settled to the last (XLEN of the queue's ten
priority streams, polled every 5 ms). So neither the enqueue nor the worker's start-up is
in the window, and the rows differ only in what the worker does per task. Afterwards
(untimed) every task's result record must exist: a run that was parked instead of run
would empty the stream too, and would make the row wrong rather than fast.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._measure import WorkerProcess, proc_cpu_seconds

DRAIN_POLL = 0.005  # s between two XLEN polls while draining (≤ 1 % of a 1 s drain)
CHECK_CHUNK = 500  # result keys per EXISTS in the completeness check


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    #: Fills the queue with ``n`` tasks (the tasks module, n) -> the task ids.
    fill: Callable[[Any, int], Awaitable[list[str]]]


async def _ids(handles: Awaitable[list[Any]]) -> list[str]:
    return [h.id for h in await handles]


async def fill_plain(tasks: Any, n: int) -> list[str]:
    return await _ids(tasks.noop.delay_many([() for _ in range(n)]))


async def fill_rated(tasks: Any, n: int) -> list[str]:
    return await _ids(tasks.noop_rated.delay_many([() for _ in range(n)]))


async def fill_keyed(tasks: Any, n: int) -> list[str]:
    keys = tasks.KEYS
    return await _ids(tasks.noop_keyed.delay_many([(f"k{i % keys}",) for i in range(n)]))


async def fill_priorities(tasks: Any, n: int) -> list[str]:
    # Task i at priority i % 10, i.e. n/10 per lane, each lane with one delay_many.
    lanes = len(tasks.noop_by_priority)
    ids: list[str] = []
    for p, task in enumerate(tasks.noop_by_priority):
        count = len(range(p, n, lanes))
        ids += await _ids(task.delay_many([() for _ in range(count)]))
    return ids


# The first is the baseline; the order is rotated by one each round (see rotation()).
VARIANTS: tuple[Variant, ...] = (
    Variant("plain", "plain no-op (baseline)", fill_plain),
    Variant("rate_limit", "rate limit far above the rate", fill_rated),
    Variant("per_key", "per-key limits, 100 keys", fill_keyed),
    Variant("priorities", "priorities 0-9", fill_priorities),
)
BASELINE = VARIANTS[0].key


def rotation(rnd: int) -> list[Variant]:
    """Round ``rnd`` (1-based) runs the variants starting at a different one each round,
    so no row is always the first (or last) after a worker switch or a library's run."""
    i = (rnd - 1) % len(VARIANTS)
    return [*VARIANTS[i:], *VARIANTS[:i]]


def stream_keys(app: Any, queue: str = "default") -> list[str]:
    """Every priority stream of ``queue`` (lane 0 is the plain stream)."""
    from aioqueue._keys import Keys

    keys = Keys(app.conf.key_prefix)
    return [keys.stream(queue, p) for p in range(10)]


def result_keys(app: Any, task_ids: Sequence[str]) -> list[str]:
    from aioqueue._keys import Keys

    keys = Keys(app.conf.key_prefix)
    return [keys.result(t) for t in task_ids]


@dataclass(frozen=True)
class Drain:
    rate: float  # tasks/s from the first entry settled to the last
    worker_cpu: float  # worker CPU s per 10k tasks over the same window
    redis_cpu: float  # redis-server CPU s per 10k tasks over the same window


async def drain(redis: Any, streams: Sequence[str], n: int, worker: WorkerProcess,
                redis_pid: int, timeout: float) -> Drain:
    """Wait for the worker to empty ``streams`` (holding ``n`` entries) and time it."""

    async def left() -> int:
        pipe = redis.pipeline(transaction=False)
        for s in streams:
            pipe.xlen(s)
        return int(sum(await pipe.execute()))

    started: float | None = None
    first = n
    cpu_w = cpu_r = 0.0
    deadline = time.perf_counter() + timeout
    while True:
        remaining = await left()
        now = time.perf_counter()
        if started is None and remaining < n:
            started, first = now, remaining
            cpu_w, cpu_r = worker.cpu_seconds(), proc_cpu_seconds(redis_pid)
        if started is not None and remaining == 0:
            elapsed = now - started
            done = max(first, 1)
            return Drain(first / elapsed,
                         (worker.cpu_seconds() - cpu_w) * 10_000 / done,
                         (proc_cpu_seconds(redis_pid) - cpu_r) * 10_000 / done)
        worker.check_alive()
        if now > deadline:
            raise TimeoutError(f"{n - remaining} of {n} tasks drained in {timeout:.0f}s")
        await asyncio.sleep(DRAIN_POLL)


async def missing_results(redis: Any, keys: Sequence[str], wait: float = 5.0) -> int:
    """How many of ``keys`` (result records) do not exist, after up to ``wait`` seconds
    (the last settle's reply can trail the XLEN that saw the stream empty)."""
    remaining = list(keys)
    deadline = time.perf_counter() + wait
    while True:
        missing: list[str] = []
        for i in range(0, len(remaining), CHECK_CHUNK):
            chunk = remaining[i:i + CHECK_CHUNK]
            pipe = redis.pipeline(transaction=False)
            for k in chunk:
                pipe.exists(k)
            missing += [k for k, found in zip(chunk, await pipe.execute(), strict=True)
                        if not found]
        if not missing or time.perf_counter() > deadline:
            return len(missing)
        remaining = missing
        await asyncio.sleep(0.1)
