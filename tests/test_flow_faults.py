"""Flow control across real worker processes: a global rate limit held by three workers
together, and per-key concurrency never exceeded while workers are SIGKILLed.

The workers run ``tests/fault_app.py``; its flow-control tasks note their runs in the
Redis list ``fault:spans``. Each test prints its figures (run with ``-s``).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from aioqueue import AioQueue, State
from tests.test_faults import CliWorkers, collect, wait_ready, workers  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

SPANS = "fault:spans"


def producer(url: str) -> AioQueue:
    app = AioQueue("producer", broker=url)

    @app.task(name="fault.limited")
    async def limited(n: int) -> int:
        raise NotImplementedError

    @app.task(name="fault.per_key")
    async def per_key(key: str, seconds: float) -> str:
        raise NotImplementedError

    return app


async def spans(client: Any) -> list[list[str]]:
    return [entry.decode().split("|") for entry in await client.lrange(SPANS, 0, -1)]


async def test_a_global_rate_limit_is_held_by_three_workers_together(
    workers: CliWorkers, redis_url: str,  # noqa: F811
) -> None:
    rate, window, sent = 50, 5.0, 300
    client = aioredis.Redis.from_url(redis_url)
    app = producer(redis_url)
    try:
        for name in ("r1", "r2", "r3"):
            workers.start(name, FAULT_RATE=f"{rate}/s")
        for name in ("r1", "r2", "r3"):
            await wait_ready(workers, name)
        limited = app.tasks["fault.limited"]
        handles = [await limited.delay(n) for n in range(sent)]
        done = await collect(handles, timeout=sent / rate + 15)
        starts = sorted(float(s[3]) for s in await spans(client) if s[0] == "start")
        first = starts[0]
        in_window = sum(1 for t in starts if t < first + window)
        by_pid = {s[2] for s in await spans(client)}
        print(f"\nrate limit {rate}/s, {len(by_pid)} workers: {in_window} started in the "
              f"first {window:g}s ({in_window / window:.1f}/s); {len(done)}/{sent} done")
        assert len(by_pid) == 3  # all three took part
        assert abs(in_window - rate * window) <= 0.1 * rate * window
        assert sorted(done.values()) == list(range(sent))  # nothing lost, nothing failed
        assert len(starts) == sent  # nothing ran twice
        assert [await h.state() for h in handles] == [State.SUCCESS] * sent
    finally:
        await app.close()
        await client.aclose()


async def test_per_key_concurrency_holds_under_sigkill_and_slots_come_back(
    workers: CliWorkers, redis_url: str,  # noqa: F811
) -> None:
    rng = random.Random(11)
    client = aioredis.Redis.from_url(redis_url)
    app = producer(redis_url)
    names = ["k1", "k2", "k3"]
    try:
        for name in names:
            workers.start(name, FAULT_VT="1.0")
        for name in names:
            await wait_ready(workers, name)
        per_key = app.tasks["fault.per_key"]
        keys = ["red", "green", "blue"]
        handles = [await per_key.delay(keys[i % 3], 0.15) for i in range(60)]
        killed_at: dict[str, float] = {}  # pid -> when it was killed
        for round_ in range(3):
            await anyio.sleep(0.6)
            name = rng.choice(names)
            pid = workers.procs[name].pid
            workers.kill(name)
            killed_at[str(pid)] = time.time()
            workers.start(f"{name}-{round_}", FAULT_VT="1.0")
            names[names.index(name)] = f"{name}-{round_}"
        done = await collect(handles, timeout=40)
        assert len(done) == 60, "every task ran to the end, kills or not"
        # Spans by task id: start..end, or start..the kill of its process.
        opened: dict[tuple[str, str], tuple[str, float]] = {}
        intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for entry in await spans(client):
            kind, task_id, key, pid, at = entry[0], entry[1], entry[2], entry[3], float(entry[4])
            if kind == "start":
                opened[task_id, pid] = (key, at)
            else:
                key, start = opened.pop((task_id, pid))
                intervals[key].append((start, at))
        for (_task_id, pid), (key, start) in opened.items():
            assert pid in killed_at, "only a killed worker leaves a run unfinished"
            intervals[key].append((start, killed_at[pid]))
        peaks = {}
        for key, spans_ in intervals.items():
            edges = sorted([(s, 1) for s, _ in spans_] + [(e, -1) for _, e in spans_],
                           key=lambda edge: (edge[0], edge[1]))
            now = peak = 0
            for _, step in edges:
                now += step
                peak = max(peak, now)
            peaks[key] = peak
        print(f"\nper-key peaks with max_concurrency=2 and 3 SIGKILLs: {peaks}; "
              f"{len(opened)} runs cut by a kill")
        assert peaks and max(peaks.values()) <= 2
        # The killed workers' slots came back: nothing is held or parked at the end.
        for key in keys:
            assert await client.zcard(f"aioqueue:slots:{{fault.per_key:{key}}}") == 0
            assert await client.llen(f"aioqueue:slots:{{fault.per_key:{key}}}:waiting") == 0
    finally:
        await app.close()
        await client.aclose()
