"""The main table's scenario rows, library-agnostic (every call goes through a Peer).

- closed loop: P producer coroutines each repeating a round trip for a fixed time;
- round trip under load: K sequential round trips while a paced producer sends no-ops;
- drain: a pre-filled queue emptied by a freshly started worker (as _flow.drain, but the
  "left" signal is the peer's own ``remaining()``);
- worker CPU per task at low load: paced no-ops, worker CPU over the window / tasks sent;
- start-up: Popen the worker with one task already queued, until that task records the time;
- 1 MB argument: enqueue/s with no worker, then a drain; beside it redis-py SET/GET of the
  same value on the same server (the reference: what Redis itself moves).

The producer-memory row runs in a subprocess of its own (benchmarks/_memory_probe.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from benchmarks._flow import Drain
from benchmarks._measure import WorkerProcess, percentile, proc_cpu_seconds
from benchmarks.peers.base import Peer

DRAIN_POLL = 0.005  # s between two "remaining" polls in a drain (as _flow.DRAIN_POLL)
PACE_TICK = 0.01  # s between two bursts of a paced producer
PACE_MAX_BURST_S = 0.05  # a producer that falls behind catches up at most 50 ms of sends
FIRST_RUN_KEY = "bench:first_run"  # benchmarks/peers/_first_run.py writes it
BIG_BYTES = 1_000_000  # the 1 MB argument (ASCII, so every serializer can carry it)


@dataclass(frozen=True)
class Sizes:
    """Per-mode sizes of the scenario rows (README: "Sizes")."""

    #: The round-trip row (step 3) stops after K trips or this many seconds, whichever
    #: comes first: SAQ's ~1 s polls would otherwise take K seconds a round.
    rt_budget: float = 20.0
    producers: int = 100
    closed_warmup: float = 1.0
    closed_duration: float = 4.0
    load_rate: float = 8000.0
    load_k: int = 200
    load_budget: float = 8.0
    low_rate: float = 4000.0
    low_duration: float = 4.0
    drain_n: int = 30_000
    #: ... or this many seconds of the library's own worker tasks/s if that is fewer tasks
    #: (at least DRAIN_MIN): a 1,000 tasks/s library does not drain for 30 s a round.
    drain_seconds: float = 4.0
    big_m: int = 200
    startup_spawns: int = 2
    memory_home: int = 100_000
    memory_peer: int = 1_000


DRAIN_MIN = 2_000

SHORT = Sizes(rt_budget=10.0, closed_warmup=0.5, closed_duration=2.0, load_k=50, load_budget=4.0,
              low_duration=2.0, drain_n=10_000, drain_seconds=3.0, big_m=100,
              startup_spawns=1, memory_home=20_000, memory_peer=500)


def drain_size(sizes: Sizes, throughput: float | None) -> int:
    if throughput is None or not math.isfinite(throughput) or throughput <= 0:
        return sizes.drain_n
    return max(DRAIN_MIN, min(sizes.drain_n, int(throughput * sizes.drain_seconds)))
FULL = Sizes()


def paced_rate(target: float, throughput: float | None) -> float:
    """The target rate, or half the library's measured no-op throughput if that is lower
    (so the worker is loaded, not swamped: the queue must not grow without bound)."""
    if throughput is None or not math.isfinite(throughput) or throughput <= 0:
        return target
    return min(target, throughput / 2)


class PacedProducer:
    """Sends no-ops at ``rate``/s in bursts every PACE_TICK until stopped; records the
    rate it really achieved (a slow client cannot always keep up)."""

    def __init__(self, send: Callable[[], Awaitable[None]], rate: float) -> None:
        self.send = send
        self.rate = rate
        self.sent = 0
        self.elapsed = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        t0 = time.perf_counter()
        max_burst = max(1, int(self.rate * PACE_MAX_BURST_S))
        while not self._stop.is_set():
            due = min(int((time.perf_counter() - t0) * self.rate) - self.sent, max_burst)
            if due > 0:
                # Concurrent sends: each library may overlap them as its client allows.
                await asyncio.gather(*(self.send() for _ in range(due)))
                self.sent += due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), PACE_TICK)
        self.elapsed = time.perf_counter() - t0

    def start(self) -> PacedProducer:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> float:
        """Stop; returns the achieved rate (tasks/s). Re-raises a send's failure."""
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 30)
        return self.sent / self.elapsed if self.elapsed else math.nan


def distribution(samples: list[float]) -> dict[str, Any]:
    """Deciles, p99, max and a coarse histogram (ms): enough to see a bimodal shape."""
    if not samples:
        return {}
    edges = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]
    counts = [0] * (len(edges) + 1)
    for s in samples:
        counts[next((i for i, e in enumerate(edges) if s <= e), len(edges))] += 1
    labels = [f"<={e:g}" for e in edges] + [f">{edges[-1]:g}"]
    return {
        "n": len(samples),
        "deciles": [percentile(samples, p) for p in range(10, 100, 10)],
        "p99": percentile(samples, 99),
        "max": max(samples),
        "histogram_ms": {lab: c for lab, c in zip(labels, counts, strict=True) if c},
    }


def histogram_text(dist: dict[str, Any]) -> str:
    """One line for the md: `<=1: 40 · <=500: 10 · ...` (ms buckets, counts)."""
    return " · ".join(f"{k} ms: {v}" for k, v in dist.get("histogram_ms", {}).items())


# -- the rows -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClosedLoop:
    rate: float  # round trips completed per second inside the window
    samples_ms: list[float]  # latencies of the round trips that started in the window


async def closed_loop(peer: Peer, sizes: Sizes, timeout: float) -> ClosedLoop:
    """``producers`` coroutines, each repeating a round trip; after ``closed_warmup``
    seconds the window of ``closed_duration`` seconds opens. A trip counts for the rate if
    it finished in the window, for the latencies if it started in it."""
    t0 = time.perf_counter()
    start, end = t0 + sizes.closed_warmup, t0 + sizes.closed_warmup + sizes.closed_duration
    done_in_window = 0
    samples: list[float] = []

    async def producer() -> None:
        nonlocal done_in_window
        while (t := time.perf_counter()) < end:
            await peer.concurrent_round_trip(timeout)
            now = time.perf_counter()
            if start <= now <= end:
                done_in_window += 1
            if start <= t:
                samples.append((now - t) * 1000)

    await asyncio.gather(*(producer() for _ in range(sizes.producers)))
    return ClosedLoop(done_in_window / sizes.closed_duration, samples)


@dataclass(frozen=True)
class UnderLoad:
    samples_ms: list[float]
    rate: float  # achieved background send rate (tasks/s)


async def round_trips_under_load(peer: Peer, rate: float, sizes: Sizes,
                                 timeout: float) -> UnderLoad:
    """K sequential round trips (or as many as fit in ``load_budget`` seconds: pollers
    take 0.2-1 s each) while a PacedProducer sends no-ops at ``rate``."""
    producer = PacedProducer(peer.send_noop, rate).start()
    samples: list[float] = []
    try:
        await asyncio.sleep(0.2)  # let the producer reach its pace first
        deadline = time.perf_counter() + sizes.load_budget
        while len(samples) < sizes.load_k and time.perf_counter() < deadline:
            t = time.perf_counter()
            await peer.round_trip(timeout)
            samples.append((time.perf_counter() - t) * 1000)
    finally:
        achieved = await producer.stop()
    return UnderLoad(samples, achieved)


@dataclass(frozen=True)
class LowLoad:
    worker_us_per_task: float
    rate: float  # achieved send rate


async def cpu_at_low_load(peer: Peer, worker: WorkerProcess, rate: float,
                          sizes: Sizes) -> LowLoad:
    """Worker CPU (process tree, user+sys) over a paced window / tasks sent in it."""
    cpu0 = worker.cpu_seconds()
    producer = PacedProducer(peer.send_noop, rate).start()
    try:
        await asyncio.sleep(sizes.low_duration)
    finally:
        achieved = await producer.stop()
    cpu = worker.cpu_seconds() - cpu0
    return LowLoad(cpu * 1e6 / max(producer.sent, 1), achieved)


async def drain(peer: Peer, n: int, worker: WorkerProcess, redis_pid: int,
                timeout: float) -> Drain:
    """Time a started worker emptying a pre-filled queue of ``n`` tasks: from the last
    poll that still sees all ``n`` queued to the first that sees none (polled every 5 ms).

    Unlike _flow.drain (which starts at the first poll that sees one gone), the window
    includes the first fetched batch: a worker that settles in batches may empty a small
    queue (the 1 MB row) between two polls."""
    full_at = time.perf_counter()
    cpu_w, cpu_r = worker.cpu_seconds(), proc_cpu_seconds(redis_pid)
    deadline = full_at + timeout
    while True:
        left = await peer.remaining()
        now = time.perf_counter()
        if left >= n:  # nothing done yet: the window can still only start here
            full_at = now
            cpu_w, cpu_r = worker.cpu_seconds(), proc_cpu_seconds(redis_pid)
        elif left == 0:
            elapsed = max(now - full_at, 1e-9)
            return Drain(n / elapsed,
                         (worker.cpu_seconds() - cpu_w) * 10_000 / n,
                         (proc_cpu_seconds(redis_pid) - cpu_r) * 10_000 / n)
        worker.check_alive()
        if now > deadline:
            raise TimeoutError(f"{n - left} of {n} tasks drained in {timeout:.0f}s")
        await asyncio.sleep(DRAIN_POLL)


async def wait_first_run(redis: Any, worker: WorkerProcess, timeout: float) -> float:
    """The time.time() the first_run task stored, polled every 5 ms."""
    deadline = time.perf_counter() + timeout
    while (raw := await redis.get(FIRST_RUN_KEY)) is None:
        worker.check_alive()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the queued task did not run within {timeout:.0f}s")
        await asyncio.sleep(DRAIN_POLL)
    return float(raw)


def big_payload() -> str:
    return "x" * BIG_BYTES


@dataclass(frozen=True)
class RedisReference:
    set_rate: float  # sequential SET key <1 MB> per second
    get_rate: float  # sequential GET key per second


async def redis_reference(redis: Any, m: int) -> RedisReference:
    """What Redis itself moves: M sequential SETs of the 1 MB value, then M GETs."""
    value = big_payload()
    t0 = time.perf_counter()
    for i in range(m):
        await redis.set(f"bench:big:{i % 4}", value)
    set_rate = m / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(m):
        got = await redis.get(f"bench:big:{i % 4}")
        assert got is not None and len(got) == BIG_BYTES
    get_rate = m / (time.perf_counter() - t0)
    await redis.delete(*(f"bench:big:{i}" for i in range(4)))
    return RedisReference(set_rate, get_rate)
