"""Reliability under SIGKILL: tasks lost, tasks run twice and time to re-run, per library.

Per library and round: FLUSHALL, two worker processes of the library's own CLI, a producer
in this process sending ``work(i)`` at a steady rate through the library's public client
API, and every ``kill_every`` seconds one of the two workers (alternating) SIGKILLed with
its whole process group and respawned at once. Each ``work(i)`` records itself in Redis
from inside the task (see :class:`AsyncRecorder`), so the figures come from what really
ran, not from any library's own bookkeeping. Method: benchmarks/RELIABILITY.md.

Library specifics live in ``benchmarks/peers/<lib>_reliability_tasks.py``: the task, the
worker command (``worker_cmd()``), a ``Producer`` class, ``MAX_RATE`` and ``NOTE`` (what
the library's redelivery defaults are). ``BENCH_RELIABILITY_SAFE=1`` in the environment of
both the worker and this process selects a module's opt-in safe settings, if it has any.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import math
import os
import random
import signal
import statistics
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from benchmarks._measure import WorkerProcess
from benchmarks.peers.base import REDIS_URL_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent

# The keys every task module writes (see AsyncRecorder); FLUSHALL clears them each round.
RUNS_KEY = "bench:runs"  # hash i -> executions started
DONE_KEY = "bench:done"  # hash i -> executions completed
STARTS_KEY = "bench:starts"  # list of "i pid time.time()" per start
FINISHES_KEY = "bench:finishes"  # list of "i pid time.time()" per completion
TASK_SECONDS = 0.05  # each work(i) sleeps this long, so a kill catches tasks in flight
SAFE_ENV = "BENCH_RELIABILITY_SAFE"
WARMUP_TASKS = 4  # ids -1..-4, excluded from the figures
WARMUP_TIMEOUT = 60.0

#: Column name -> (task module, safe settings on). The order is the table's column order.
LIBRARIES: dict[str, tuple[str, bool]] = {
    "aioqueue": ("benchmarks.peers.aioqueue_reliability_tasks", False),
    "arq": ("benchmarks.peers.arq_reliability_tasks", False),
    "saq": ("benchmarks.peers.saq_reliability_tasks", False),
    "taskiq": ("benchmarks.peers.taskiq_reliability_tasks", False),
    "celery": ("benchmarks.peers.celery_reliability_tasks", False),
    "dramatiq": ("benchmarks.peers.dramatiq_reliability_tasks", False),
    "streaq": ("benchmarks.peers.streaq_reliability_tasks", False),
    "docket": ("benchmarks.peers.docket_reliability_tasks", False),
}
#: Opt-in settings that make a peer re-run a killed worker's tasks within the bound
#: (the column is "<lib> (safe settings)"; each module's SAFE_NOTE says which settings).
SAFE_VARIANTS = ("arq", "saq", "taskiq", "celery", "docket")
LIBRARIES.update({f"{lib} (safe settings)": (LIBRARIES[lib][0], True) for lib in SAFE_VARIANTS})
#: What runs without --libs: the defaults, then the safe-settings columns.
DEFAULT_LIBS = tuple(LIBRARIES)


# ---------------------------------------------------------------- recording (in workers)


def _entry(i: int) -> str:
    return f"{i} {os.getpid()} {time.time():.6f}"


class AsyncRecorder:
    """What every asyncio task module's ``work(i)`` calls: its own plain redis client,
    created lazily in the process that runs the task (after any fork)."""

    def __init__(self) -> None:
        self._client: Redis[Any] | None = None

    def _redis(self) -> Redis[Any]:
        if self._client is None:
            self._client = Redis.from_url(os.environ[REDIS_URL_ENV])
        return self._client

    async def started(self, i: int) -> None:
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.hincrby(RUNS_KEY, str(i), 1)
            pipe.rpush(STARTS_KEY, _entry(i))
            await pipe.execute()

    async def finished(self, i: int) -> None:
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.hincrby(DONE_KEY, str(i), 1)
            pipe.rpush(FINISHES_KEY, _entry(i))
            await pipe.execute()

    async def work(self, i: int) -> None:
        await self.started(i)
        await asyncio.sleep(TASK_SECONDS)
        await self.finished(i)


class SyncRecorder:
    """The same for thread/prefork workers (Celery, Dramatiq): a client per process."""

    def __init__(self) -> None:
        self._client: SyncRedis[Any] | None = None
        self._pid = 0

    def _redis(self) -> SyncRedis[Any]:
        if self._client is None or self._pid != os.getpid():  # a forked child: reconnect
            self._client = SyncRedis.from_url(os.environ[REDIS_URL_ENV])
            self._pid = os.getpid()
        return self._client

    def work(self, i: int) -> None:
        with self._redis().pipeline(transaction=True) as pipe:
            pipe.hincrby(RUNS_KEY, str(i), 1)
            pipe.rpush(STARTS_KEY, _entry(i))
            pipe.execute()
        time.sleep(TASK_SECONDS)
        with self._redis().pipeline(transaction=True) as pipe:
            pipe.hincrby(DONE_KEY, str(i), 1)
            pipe.rpush(FINISHES_KEY, _entry(i))
            pipe.execute()


def safe_settings() -> bool:
    return os.environ.get(SAFE_ENV) == "1"


# ---------------------------------------------------------------- harness


@dataclass
class Kill:
    at: float  # time.time() just before the SIGKILL
    pids: list[int]  # the whole process tree: the CLI and any pool children it forked


@dataclass
class RoundResult:
    """One library, one round. ``error`` set means the figures are not to be used."""

    rate: float = 0.0  # tasks/s asked for
    sent: int = 0
    sent_rate: float = 0.0  # tasks/s achieved by the producer
    completed: int = 0
    completed_in_kill_phase: int = 0
    lost: int = 0  # sent, never completed within the bound
    lost_never_started: int = 0
    run_twice: int = 0  # tasks with >= 2 executions started
    completed_twice: int = 0  # tasks whose body ran to its end >= 2 times
    kills: int = 0
    in_flight_at_kill: int = 0  # (kill, task) pairs: started on the killed tree, not done
    rerun_s: list[float] = field(default_factory=list)  # kill -> next start elsewhere
    rerun_never: int = 0  # in-flight tasks not started again within the bound
    drain_s: float = 0.0  # last kill -> all done (or the bound)
    starts_on_killed: int = 0  # task starts on pids that were killed later (sanity)
    #: For tasks completed twice: (i, s from the end of a run to the kill of its pid),
    #: i.e. a run that completed but was killed before the library acknowledged it.
    completed_twice_detail: list[tuple[int, float]] = field(default_factory=list)
    lost_ids: list[int] = field(default_factory=list)
    twice_ids: list[int] = field(default_factory=list)
    error: str = ""


def _tree_pids(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return [pid]


def sigkill(worker: WorkerProcess) -> Kill:
    """SIGKILL the worker's whole process group (no chance to clean up), then reap it."""
    kill = Kill(time.time(), _tree_pids(worker.pid))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(worker.pid, signal.SIGKILL)
    assert worker.proc is not None
    with contextlib.suppress(subprocess.TimeoutExpired):
        worker.proc.wait(timeout=5)
    worker.stop(grace=0)  # already dead: only reaps leftovers and unregisters it
    return kill


class LibraryRun:
    """One library's round: workers, producer, killer, then the analysis."""

    def __init__(self, name: str, server_url: str, logdir: Path, duration: float,
                 kill_every: float, bound: float, rate: float) -> None:
        self.name = name
        module_name, self.safe = LIBRARIES[name]
        self.url = server_url
        self.logdir = logdir
        logdir.mkdir(parents=True, exist_ok=True)
        self.duration = duration
        self.kill_every = kill_every
        self.bound = bound
        self._set_env()
        self.mod: Any = importlib.import_module(module_name)
        self.mod = importlib.reload(self.mod)  # fresh app/broker objects every round
        self.rate = min(rate, float(self.mod.MAX_RATE))
        self.spawned = 0
        self.workers: list[WorkerProcess] = []

    def _set_env(self) -> None:
        # Task modules read both at import, in the workers and here (the producer).
        os.environ[REDIS_URL_ENV] = self.url
        os.environ[SAFE_ENV] = "1" if self.safe else "0"

    def spawn(self) -> WorkerProcess:
        self.spawned += 1
        slug = self.name.replace(" ", "_").replace("(", "").replace(")", "")
        log = self.logdir / f"{slug}-worker{self.spawned}.log"
        env = {**os.environ, REDIS_URL_ENV: self.url, SAFE_ENV: "1" if self.safe else "0"}
        return WorkerProcess(self.name, self.mod.worker_cmd(), env, log).start(REPO_ROOT)

    def stop_all(self) -> None:
        for w in self.workers:
            w.stop(grace=3)

    async def run(self, redis: Redis[Any]) -> RoundResult:
        res = RoundResult(rate=self.rate)
        self.workers = [self.spawn(), self.spawn()]
        producer = self.mod.Producer()
        try:
            await producer.start()
            await self._warm_up(redis, producer)
            kills, sent, sent_s = await self._load_and_kill(producer)
            kill_end = kills[-1].at if kills else time.time()
            res.completed_in_kill_phase = int(await redis.hlen(DONE_KEY)) - WARMUP_TASKS
            res.drain_s = await self._drain(redis, sent, kill_end)
            res.sent, res.sent_rate, res.kills = sent, sent / sent_s, len(kills)
            # Read the records before stopping the workers: what they do while stopping
            # is past the bound and must not count.
            await analyse(redis, res, kills, kill_end + res.drain_s)
        finally:
            # asyncio.timeout, not wait_for: the close must run in the task that
            # started the producer (streaq's anyio cancel scopes insist on it).
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await producer.close()
            self.stop_all()
        return res

    async def _warm_up(self, redis: Redis[Any], producer: Any) -> None:
        """Untimed: a worker is up and the task path works before the first kill."""
        for i in range(1, WARMUP_TASKS + 1):
            await producer.send(-i)
        deadline = time.monotonic() + WARMUP_TIMEOUT
        while int(await redis.hlen(DONE_KEY)) < WARMUP_TASKS:
            for w in self.workers:
                w.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"warm-up tasks not done in {WARMUP_TIMEOUT:.0f}s")
            await asyncio.sleep(0.1)

    async def _load_and_kill(self, producer: Any) -> tuple[list[Kill], int, float]:
        kills: list[Kill] = []
        killer = asyncio.create_task(self._killer(kills))
        sent, elapsed = await self._produce(producer)
        await killer
        return kills, sent, elapsed

    async def _produce(self, producer: Any) -> tuple[int, float]:
        """Send task i at t0 + i/rate; a late send is not made up by a burst later."""
        t0 = time.monotonic()
        n = int(self.duration * self.rate)
        for i in range(n):
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.send(i)
        return n, max(time.monotonic() - t0, 1e-9)

    def kill_schedule(self) -> list[float]:
        """Kill times (s from the start of the load): every ``kill_every`` on average,
        each interval jittered by up to +-30 %. Without jitter, kills phase-lock with a
        polling worker: a respawned worker starts in the same time each time, so with
        arq's 0.5 s poll every kill fell between two polls and never caught a task."""
        rng = random.Random()
        times: list[float] = []
        t = 0.0
        while True:
            t += self.kill_every * rng.uniform(0.7, 1.3)
            if t > self.duration:
                return times
            times.append(t)

    async def _killer(self, kills: list[Kill]) -> None:
        t0 = time.monotonic()
        for k, at in enumerate(self.kill_schedule(), start=1):
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            slot = k % 2  # alternate, so one of the two is always up (or starting)
            # Blocking calls of a few ms: a kill must not wait behind the producer.
            kills.append(sigkill(self.workers[slot]))
            self.workers[slot] = self.spawn()

    async def _drain(self, redis: Redis[Any], sent: int, kill_end: float) -> float:
        """Both workers up; wait until every sent task completed, at most ``bound``."""
        while time.time() - kill_end < self.bound:
            if await _all_done(redis, sent):
                break
            for i, w in enumerate(self.workers):
                if w.proc is not None and w.proc.poll() is not None:
                    self.workers[i] = self.spawn()  # died on its own: keep two up
            await asyncio.sleep(0.25)
        return time.time() - kill_end


async def _all_done(redis: Redis[Any], sent: int) -> bool:
    return int(await redis.hlen(DONE_KEY)) >= sent + WARMUP_TASKS


def _parse(entries: Sequence[bytes | str]) -> list[tuple[int, int, float]]:
    out = []
    for raw in entries:
        i, pid, t = (raw.decode() if isinstance(raw, bytes) else raw).split()
        out.append((int(i), int(pid), float(t)))
    return out


async def analyse(redis: Redis[Any], res: RoundResult, kills: list[Kill], end: float) -> None:
    runs = {int(k): int(v) for k, v in (await redis.hgetall(RUNS_KEY)).items()}
    done = {int(k): int(v) for k, v in (await redis.hgetall(DONE_KEY)).items()}
    starts = _parse(await redis.lrange(STARTS_KEY, 0, -1))
    finishes = _parse(await redis.lrange(FINISHES_KEY, 0, -1))
    ids = range(res.sent)
    res.completed = sum(1 for i in ids if done.get(i, 0) > 0)
    res.lost_ids = [i for i in ids if done.get(i, 0) == 0]
    res.lost = len(res.lost_ids)
    res.lost_never_started = sum(1 for i in res.lost_ids if runs.get(i, 0) == 0)
    res.twice_ids = [i for i in ids if runs.get(i, 0) >= 2]
    res.run_twice = len(res.twice_ids)
    res.completed_twice = sum(1 for i in ids if done.get(i, 0) >= 2)
    started_on = Counter((i, pid) for i, pid, _ in starts)
    finished_on = Counter((i, pid) for i, pid, _ in finishes)
    start_times: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for i, pid, t in starts:
        start_times[i].append((t, pid))
    killed_at = {pid: k.at for k in kills for pid in k.pids}
    res.starts_on_killed = sum(1 for i, pid, _ in starts if i >= 0 and pid in killed_at)
    twice_done = {i for i in ids if done.get(i, 0) >= 2}
    res.completed_twice_detail = sorted(
        (i, round(killed_at[pid] - t, 4)) for i, pid, t in finishes
        if i in twice_done and pid in killed_at)
    for kill in kills:
        pids = set(kill.pids)
        # Started on the killed tree and not completed there: in flight at the kill
        # (a pid is never reused within a round, so "there" is unambiguous).
        in_flight = {i for (i, pid), n in started_on.items()
                     if i >= 0 and pid in pids and n > finished_on[(i, pid)]}
        for i in in_flight:
            res.in_flight_at_kill += 1
            # Elsewhere: a start on the killed tree itself may be stamped between
            # kill.at and the signal landing.
            later = [t for t, pid in start_times[i] if kill.at < t <= end and pid not in pids]
            if later:
                res.rerun_s.append(min(later) - kill.at)
            else:
                res.rerun_never += 1


# ---------------------------------------------------------------- rounds and summaries


async def run_round(server: Any, libs: Sequence[str], logdir: Path, duration: float,
                    kill_every: float = 1.0, bound: float = 60.0, rate: float = 200.0,
                    progress: Callable[[str, RoundResult], None] | None = None,
                    ) -> dict[str, RoundResult]:
    """One round over ``libs`` against ``server`` (a running RedisServer);
    ``progress(lib, result)`` is called as each library finishes."""
    out: dict[str, RoundResult] = {}
    redis: Redis[Any] = Redis.from_url(server.url)
    try:
        for name in libs:
            await redis.flushall()
            try:
                run = LibraryRun(name, server.url, logdir, duration, kill_every, bound, rate)
                out[name] = await run.run(redis)
            except Exception as exc:  # one broken library must not stop the others
                out[name] = RoundResult(error=f"{type(exc).__name__}: {exc}"[:300])
            if progress is not None:
                progress(name, out[name])
    finally:
        await redis.aclose()
    return out


METRICS = ("sent", "sent_rate", "completed", "completed_in_kill_phase", "lost",
           "lost_never_started", "run_twice", "completed_twice", "kills", "in_flight_at_kill",
           "rerun_s_p50", "rerun_s_max", "rerun_never", "drain_s")


def _round_figures(r: RoundResult) -> dict[str, float]:
    fig = {k: float(v) for k, v in asdict(r).items() if k in METRICS}
    fig["rerun_s_p50"] = statistics.median(r.rerun_s) if r.rerun_s else math.nan
    fig["rerun_s_max"] = max(r.rerun_s) if r.rerun_s else math.nan
    return fig


def summarize(rounds: Sequence[dict[str, RoundResult]], libs: Sequence[str]) -> dict[str, Any]:
    """The JSON document: per library and metric, the median of the rounds and samples."""
    results: dict[str, Any] = {}
    for lib in libs:
        ok = [r[lib] for r in rounds if lib in r and not r[lib].error]
        errors = [r[lib].error for r in rounds if lib in r and r[lib].error]
        entry: dict[str, Any] = {"errors": errors, "note": _note(lib)}
        figs = [_round_figures(r) for r in ok]
        for m in METRICS:
            samples = [f[m] for f in figs]
            finite = [s for s in samples if not math.isnan(s)]
            entry[m] = {"median": statistics.median(finite) if finite else None,
                        "samples": [None if math.isnan(s) else s for s in samples]}
        entry["rate"] = ok[0].rate if ok else None
        entry["starts_on_killed"] = [r.starts_on_killed for r in ok]
        entry["completed_twice_detail"] = [r.completed_twice_detail[:50] for r in ok]
        entry["lost_ids"] = [r.lost_ids[:50] for r in ok]
        entry["twice_ids"] = [r.twice_ids[:50] for r in ok]
        results[lib] = entry
    return {"libs": list(libs), "results": results}


def _note(lib: str) -> str:
    module_name, safe = LIBRARIES[lib]
    with contextlib.suppress(Exception):
        mod = importlib.import_module(module_name)
        return str(mod.SAFE_NOTE if safe else mod.NOTE)
    return ""


ROWS = (
    ("sent (tasks/s)", "sent"),
    ("completed in the kill phase", "completed_in_kill_phase"),
    ("**lost** (not completed within the bound)", "lost"),
    ("… of which never started", "lost_never_started"),
    ("**run twice** (started >= 2 times)", "run_twice"),
    ("… completed twice", "completed_twice"),
    ("in flight at a kill", "in_flight_at_kill"),
    ("**re-run after kill, p50 s**", "rerun_s_p50"),
    ("**re-run after kill, max s**", "rerun_s_max"),
    ("in flight, not re-run within the bound", "rerun_never"),
    ("last kill → all done, s", "drain_s"),
)


def _cell(entry: dict[str, Any], key: str) -> str:
    if entry["errors"] and entry[key]["median"] is None:
        return "error"
    med = entry[key]["median"]
    if med is None:
        return "-"
    if key == "sent":
        return f"{med:.0f} ({entry['sent_rate']['median']:.0f}/s)"
    if key.startswith(("rerun_s", "drain")):
        return f"{med:.1f}"
    return f"{med:g}"


def markdown(doc: dict[str, Any]) -> str:
    """A table of medians over rounds, one column per library, then each one's notes."""
    libs = doc["libs"]
    res = doc["results"]
    lines = ["| medians over rounds | " + " | ".join(libs) + " |",
             "|---|" + "---|" * len(libs)]
    for label, key in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(res[lib], key) for lib in libs) + " |")
    lines.append("")
    for lib in libs:
        lines.append(f"- **{lib}**: {res[lib]['note']}")
        for err in res[lib]["errors"]:
            lines.append(f"  - error: {err}")
    return "\n".join(lines) + "\n"
