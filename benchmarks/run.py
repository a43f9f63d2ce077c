"""Benchmark driver: ``python -m benchmarks.run [--short] [--only aioqueue,arq,flow,cluster]``.

One redis-server, one worker process per library at a time, libraries interleaved round
by round so that slow drifts of the machine hit every library alike; then, each round,
aioqueue's flow-control costs (``flow``, see _flow.py) and aioqueue on a 3-master Redis
Cluster vs the single server (``cluster``, see _cluster.py). See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import uvloop
from redis.asyncio import Redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks import _cluster, _flow, _readme, _scenarios
from benchmarks._flow import Drain
from benchmarks._measure import WorkerProcess, kill_all_workers, percentile, proc_cpu_seconds
from benchmarks._redis import RedisServer
from benchmarks._report import HOME, Results, machine_info, write_outputs
from benchmarks.peers import ADAPTERS, load_peer
from benchmarks.peers.aioqueue_peer import AioqueueFlowPeer, AioqueueUrlPeer
from benchmarks.peers.base import REDIS_URL_ENV, NotSupported, Peer

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
PHASES = ("enqueue", "round trip", "throughput", "closed loop", "under load", "low load",
          "drain", "start-up", "1 MB argument", "sleep test", "memory")
DEFAULT_WORKER_PHASES = ("round trip", "throughput", "closed loop", "under load", "low load")
FLOW = "flow"  # the --only name of the "Flow control costs" section
CLUSTER = "cluster"  # the --only name of the "Redis Cluster vs single server" section
SECTIONS = (FLOW, CLUSTER)
WARMUP_TIMEOUT = 60.0  # total time a worker gets to become ready
WARMUP_ATTEMPT = 10.0  # per warm-up round trip; a lost first task must not eat it all
TRIP_TIMEOUT = 10.0  # per round trip in the closed-loop and under-load rows (pollers: <= 1 s)
T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    n: int
    k: int
    sleep_n: int
    sleep_concurrency: int
    rounds: int
    libs: tuple[str, ...]
    mode: str
    flow: bool = True
    flow_n: int = 50_000
    flow_rounds: int = 3
    cluster: bool = True
    cluster_n: int = 200_000
    cluster_k: int = 500
    cluster_rounds: int = 3
    out: str = ""
    sizes: _scenarios.Sizes = _scenarios.FULL

    @property
    def throughput_timeout(self) -> float:
        return 60 + self.n / 50  # generous: even 50 tasks/s finishes

    @property
    def sleep_timeout(self) -> float:
        return 60 + self.sleep_n * 0.05  # as if fully serial (concurrency 1)

    @property
    def drain_timeout(self) -> float:
        return 60 + self.sizes.drain_n / 50

    @property
    def flow_timeout(self) -> float:
        return 60 + self.flow_n / 50

    @property
    def cluster_timeout(self) -> float:
        return 60 + self.cluster_n / 50

    @property
    def total_rounds(self) -> int:
        return max(self.rounds if self.libs else 0, self.flow_rounds if self.flow else 0,
                   self.cluster_rounds if self.cluster else 0)


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--short", action="store_true", help="small N, 2 rounds (a few minutes)")
    p.add_argument("--only", default="",
                   help=f"comma list out of {','.join([*ADAPTERS, *SECTIONS])} "
                        f"({FLOW}: aioqueue's flow-control costs; {CLUSTER}: aioqueue on "
                        "a 3-master Redis Cluster vs the single server); default: all")
    p.add_argument("--n", type=int, help="tasks per enqueue/throughput run")
    p.add_argument("--k", type=int, help="sequential round trips per round")
    p.add_argument("--sleep-n", type=int, help="tasks in the sleep test")
    p.add_argument("--sleep-concurrency", type=int, default=500)
    p.add_argument("--rounds", type=int)
    p.add_argument("--flow-n", type=int, help="tasks per flow-control drain")
    p.add_argument("--flow-rounds", type=int,
                   help="flow-control rounds (default: --rounds, at least 3)")
    p.add_argument("--cluster-n", type=int, help="tasks per drain in the cluster section")
    p.add_argument("--cluster-k", type=int,
                   help="sequential round trips per broker and round in the cluster section")
    p.add_argument("--cluster-rounds", type=int,
                   help="cluster-section rounds (default: --rounds, at least 3)")
    p.add_argument("--out", default="",
                   help="directory for results.json/results.md (default: benchmarks/)")
    a = p.parse_args(argv)
    chosen = tuple(x.strip() for x in a.only.split(",") if x.strip()) or (*ADAPTERS, *SECTIONS)
    unknown = [x for x in chosen if x not in ADAPTERS and x not in SECTIONS]
    if unknown:
        p.error(f"unknown libraries: {', '.join(unknown)}")
    libs = tuple(x for x in chosen if x not in SECTIONS)
    short = {"n": 2000, "k": 20, "sleep_n": 500, "rounds": 2, "flow_n": 20000,
             "cluster_n": 50000, "cluster_k": 300}
    # N and sleep-n were 20,000 and 5,000 before the scenario rows: with 9 columns and 13
    # more rows the full main table must stay near 25 minutes on 2 cores (README: Sizes).
    full = {"n": 10000, "k": 100, "sleep_n": 2000, "rounds": 3, "flow_n": 50000,
            "cluster_n": 200000, "cluster_k": 500}
    base = short if a.short else full
    rounds = a.rounds or base["rounds"]
    return Config(
        n=a.n or base["n"],
        k=a.k or base["k"],
        sleep_n=a.sleep_n or base["sleep_n"],
        sleep_concurrency=a.sleep_concurrency,
        rounds=rounds,
        libs=libs,
        mode="short" if a.short else "full",
        flow=FLOW in chosen,
        flow_n=a.flow_n or base["flow_n"],
        flow_rounds=a.flow_rounds or max(3, rounds),
        cluster=CLUSTER in chosen,
        cluster_n=a.cluster_n or base["cluster_n"],
        cluster_k=a.cluster_k or base["cluster_k"],
        cluster_rounds=a.cluster_rounds or max(3, rounds),
        out=a.out,
        sizes=_scenarios.SHORT if a.short else _scenarios.FULL,
    )


async def guarded(aw: Awaitable[T], worker: WorkerProcess | None, timeout: float) -> T:
    """Await ``aw`` but fail fast if the worker dies, and never wait past ``timeout``."""
    task = asyncio.ensure_future(aw)
    deadline = time.perf_counter() + timeout
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if worker is not None:
                worker.check_alive()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no result within {timeout:.0f}s")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class Bench:
    def __init__(self, cfg: Config, server: RedisServer, logdir: Path, progress: Progress,
                 cluster: _cluster.LocalCluster | None = None,
                 cluster_failure: BaseException | None = None) -> None:
        self.cfg = cfg
        self.server = server
        self.logdir = logdir
        self.progress = progress
        flow_steps = cfg.flow_rounds * len(_flow.VARIANTS) if cfg.flow else 0
        cluster_steps = cfg.cluster_rounds * len(_cluster.TARGETS) if cfg.cluster else 0
        self.bar = progress.add_task(
            "starting",
            total=cfg.rounds * len(cfg.libs) * len(PHASES) + flow_steps + cluster_steps)
        self.res = Results(list(cfg.libs))
        if cfg.flow:
            self.res.flow_variants = [(v.key, v.label) for v in _flow.VARIANTS]
        if cfg.cluster:
            self.res.cluster_targets = list(_cluster.TARGETS)
        self.redis: Redis[Any] = Redis.from_url(server.url)
        self.cluster = cluster
        self.cluster_failure = cluster_failure
        # One client per master (FLUSHALL) and one on the master that owns the app's slot
        # (XLEN of its streams, as self.redis on the single server).
        self.cluster_masters: list[Redis[Any]] = []
        self.cluster_owner: Redis[Any] | None = None
        if cluster is not None and cluster_failure is None:
            self.cluster_masters = [Redis(host="127.0.0.1", port=p) for p in cluster.ports]
            self.cluster_owner = Redis(host="127.0.0.1", port=cluster.owner_port)

    def _step(self, text: str) -> None:
        self.progress.update(self.bar, description=text)

    def worker_env(self, extra_env: dict[str, str]) -> dict[str, str]:
        return {
            **os.environ,
            REDIS_URL_ENV: self.server.url,
            # Console scripts do not put the cwd on sys.path; the task modules live here.
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }

    @contextlib.asynccontextmanager
    async def worker(
        self, peer: Peer, concurrency: int | None, tag: str
    ) -> AsyncIterator[WorkerProcess]:
        cmd, extra_env = peer.worker_cmd(concurrency)
        env = self.worker_env(extra_env)
        w = WorkerProcess(peer.name, cmd, env, self.logdir / f"{peer.name}-{tag}.log")
        w.start(REPO_ROOT)
        peer.alive = w.check_alive
        try:
            await self.warm_up(peer, w)
            yield w
        finally:
            await asyncio.to_thread(w.stop)
            await self.redis.flushall()

    async def warm_up(self, peer: Peer, w: WorkerProcess) -> None:
        """Ready = one successful round trip, so import/connect time is never measured.

        Retried because a task sent while a worker is still starting may be lost or fail:
        SAQ's startup sweep aborts a job it sees being picked up at that moment, and a
        taskiq stream message sent before the worker (re)creates its consumer group after
        the harness's FLUSHALL is never delivered.
        """
        deadline = time.perf_counter() + WARMUP_TIMEOUT
        while True:
            try:
                await guarded(peer.round_trip(WARMUP_ATTEMPT), w, WARMUP_ATTEMPT)
                return
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception:
                w.check_alive()
                if time.perf_counter() > deadline:
                    raise

    async def phase(self, lib: str, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except NotSupported as exc:
            self.res.unsupported(lib, name, str(exc))
        except Exception as exc:
            self.res.error(lib, name, exc)
        finally:
            self.progress.advance(self.bar)

    async def run_lib(self, rnd: int, lib: str) -> None:
        cfg, res, sizes = self.cfg, self.res, self.cfg.sizes
        label = f"round {rnd}/{cfg.rounds} · {lib}"
        try:
            peer = load_peer(lib, self.server.url)
            await peer.connect()
        except Exception as exc:
            res.error(lib, "import/connect", exc)
            self.progress.advance(self.bar, len(PHASES))
            return
        res.notes[lib] = {
            "default": peer.concurrency_note(None),
            "sleep": peer.concurrency_note(cfg.sleep_concurrency),
        }

        async def enqueue() -> None:
            # No worker running: this is the client + redis cost alone.
            self._step(f"{label}: enqueue {cfg.n}")
            await self.redis.flushall()
            t0 = time.perf_counter()
            await guarded(peer.enqueue(cfg.n), None, cfg.throughput_timeout)
            res.add(lib, "enqueue", cfg.n / (time.perf_counter() - t0))
            await self.redis.flushall()
            if peer.has_batch:
                t0 = time.perf_counter()
                await guarded(peer.enqueue_batch(cfg.n), None, cfg.throughput_timeout)
                res.add(lib, "enqueue_batch", cfg.n / (time.perf_counter() - t0))
                await self.redis.flushall()

        async def prefilled_drain(task: str, n: int, payload: str | None, tag: str) -> Drain:
            """FLUSHALL, fill with no worker running, start a fresh worker, time the drain;
            returns the drain and records nothing (the caller knows the row). Also sets
            self._fill_rate and self._spawn_to_done (s from Popen to the all-done poll)."""
            await self.redis.flushall()
            await peer.before_fill()
            t0 = time.perf_counter()
            await guarded(peer.fill(task, n, payload), None, cfg.drain_timeout)
            self._fill_rate = n / (time.perf_counter() - t0)
            async with self.bare_worker(peer, None, f"{tag}-r{rnd}") as w:
                self._step(f"{label}: {tag} ({n} tasks)")
                d = await _scenarios.drain(peer, n, w, self.server.pid, cfg.drain_timeout)
                self._spawn_to_done = time.time() - w.spawned_at
                return d

        async def drain_row() -> None:
            n = _scenarios.drain_size(sizes, self._throughput or res.median(lib, "throughput"))
            self._step(f"{label}: fill {n} for the drain")
            d = await prefilled_drain("noop", n, None, "drain")
            res.add(lib, "drain", d.rate)
            res.add(lib, "drain_n", n)
            res.add(lib, "drain_worker_cpu", d.worker_cpu)
            res.add(lib, "drain_redis_cpu", d.redis_cpu)

        async def big_row() -> None:
            # The drain window of step 9 starts at the first completion, i.e. after the
            # first fetched batch: with M 1 MB tasks that batch is most of the work (a
            # worker fetching 100 at a time would leave M=50 out entirely). So here the
            # window is spawn -> all done minus this round's start-up (spawn -> a queued
            # task runs, the row measured just before): the fetches are all inside it.
            boot = statistics.median(startups) if startups else None
            if boot is None:
                raise RuntimeError("needs this round's start-up figure, which failed")
            self._step(f"{label}: {sizes.big_m} x 1 MB")
            await prefilled_drain("big", sizes.big_m, _scenarios.big_payload(), "1MB")
            res.add(lib, "big_enqueue", self._fill_rate)
            res.add(lib, "big_drain", sizes.big_m / max(self._spawn_to_done - boot, 1e-3))

        startups: list[float] = []  # this round's start-up samples (the 1 MB row uses them)

        async def startup_row() -> None:
            for i in range(sizes.startup_spawns):
                self._step(f"{label}: start-up {i + 1}/{sizes.startup_spawns}")
                await self.redis.flushall()
                await peer.before_fill()
                await guarded(peer.fill("first_run", 1), None, 30)
                async with self.bare_worker(peer, None, f"startup{i}-r{rnd}") as w:
                    ran_at = await _scenarios.wait_first_run(self.redis, w, WARMUP_TIMEOUT)
                    res.add(lib, "startup", ran_at - w.spawned_at)
                    startups.append(ran_at - w.spawned_at)

        inner_done = 0  # progress steps the default-worker phases have advanced

        async def default_worker() -> None:
            nonlocal inner_done
            self._step(f"{label}: start worker")
            async with self.worker(peer, None, f"default-r{rnd}") as w:
                for name, fn in (("round trip", round_trips), ("throughput", throughput),
                                 ("closed loop", closed_loop), ("under load", under_load),
                                 ("low load", low_load)):
                    await self.phase(lib, name, lambda fn=fn: fn(w))
                    inner_done += 1

        async def round_trips(w: WorkerProcess) -> None:
            self._step(f"{label}: {cfg.k} round trips")
            samples: list[float] = []
            budget_end = time.perf_counter() + sizes.rt_budget
            while len(samples) < cfg.k and time.perf_counter() < budget_end:
                t0 = time.perf_counter()
                await guarded(peer.round_trip(WARMUP_TIMEOUT), w, WARMUP_TIMEOUT)
                samples.append((time.perf_counter() - t0) * 1000)
            res.add(lib, "rtt_p50", percentile(samples, 50))
            res.add(lib, "rtt_p99", percentile(samples, 99))
            res.add(lib, "rtt_n", len(samples))

        async def throughput(w: WorkerProcess) -> None:
            self._step(f"{label}: {cfg.n} no-ops through the worker")
            w_cpu, r_cpu = w.cpu_seconds(), proc_cpu_seconds(self.server.pid)
            t0 = time.perf_counter()
            await guarded(peer.run_noops(cfg.n, cfg.throughput_timeout), w, cfg.throughput_timeout)
            elapsed = time.perf_counter() - t0
            res.add(lib, "throughput", cfg.n / elapsed)
            self._throughput = cfg.n / elapsed
            res.add(lib, "worker_cpu", (w.cpu_seconds() - w_cpu) * 10_000 / cfg.n)
            res.add(lib, "redis_cpu", (proc_cpu_seconds(self.server.pid) - r_cpu) * 10_000 / cfg.n)

        async def closed_loop(w: WorkerProcess) -> None:
            self._step(f"{label}: closed loop, {sizes.producers} producers")
            bound = sizes.closed_warmup + sizes.closed_duration + 2 * TRIP_TIMEOUT
            c = await guarded(_scenarios.closed_loop(peer, sizes, TRIP_TIMEOUT), w, bound)
            res.add(lib, "closed_rate", c.rate)
            res.add(lib, "closed_p50", percentile(c.samples_ms, 50))
            res.add(lib, "closed_p99", percentile(c.samples_ms, 99))
            res.add_dist(lib, "closed_p99", _scenarios.distribution(c.samples_ms))
            await self.settle(peer, w)

        def paced(target: float) -> float:
            return _scenarios.paced_rate(target, self._throughput or res.median(lib, "throughput"))

        async def under_load(w: WorkerProcess) -> None:
            rate = paced(sizes.load_rate)
            self._step(f"{label}: round trips under {rate:,.0f} tasks/s")
            bound = sizes.load_budget + 2 * TRIP_TIMEOUT + 30
            u = await guarded(_scenarios.round_trips_under_load(peer, rate, sizes, TRIP_TIMEOUT),
                              w, bound)
            res.add(lib, "load_p50", percentile(u.samples_ms, 50))
            res.add(lib, "load_p99", percentile(u.samples_ms, 99))
            res.add(lib, "load_max", max(u.samples_ms))
            res.add(lib, "load_rate", u.rate)
            res.add_dist(lib, "load_p99", _scenarios.distribution(u.samples_ms))
            await self.settle(peer, w)

        async def low_load(w: WorkerProcess) -> None:
            rate = paced(sizes.low_rate)
            self._step(f"{label}: worker CPU at {rate:,.0f} tasks/s")
            lo = await guarded(_scenarios.cpu_at_low_load(peer, w, rate, sizes), w,
                               sizes.low_duration + 60)
            res.add(lib, "lowload_cpu_us", lo.worker_us_per_task)
            res.add(lib, "lowload_rate", lo.rate)

        async def sleep_test() -> None:
            self._step(f"{label}: start worker (c={cfg.sleep_concurrency})")
            async with self.worker(peer, cfg.sleep_concurrency, f"sleep-r{rnd}") as w:
                self._step(f"{label}: sleep test {cfg.sleep_n} x 50 ms")
                t0 = time.perf_counter()
                await guarded(peer.run_sleepy(cfg.sleep_n, cfg.sleep_timeout), w, cfg.sleep_timeout)
                res.add(lib, "sleep_wall", time.perf_counter() - t0)

        async def memory() -> None:
            if lib != HOME:
                res.unsupported(lib, "memory as a set", "no API that awaits many results "
                                "as one: each is awaited on its own (row above)")
            h = peer.memory_handles
            if h is None:
                raise NotSupported(peer.memory_note)
            h = sizes.memory_home if lib == HOME else min(h, sizes.memory_peer)
            self._step(f"{label}: producer memory, {h:,} handles")
            await self.redis.flushall()
            await peer.before_fill()
            m = await self.memory_probe(peer, h, rnd)
            res.add(lib, "mem_per_handle", m["per_handle"])
            res.add(lib, "mem_released_mb", m["released_mb"])
            res.notes[lib]["memory_handles"] = str(h)
            if lib == HOME:  # the same handles awaited as one ResultSet (aioqueue's API)
                await self.redis.flushall()
                m = await self.memory_probe(peer, h, rnd, as_set=True)
                res.add(lib, "mem_set_per_handle", m["per_handle"])
                res.add(lib, "mem_set_released_mb", m["released_mb"])

        self._throughput: float | None = None
        try:
            await self.phase(lib, "enqueue", enqueue)
            try:
                await default_worker()
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:  # worker failed to start/warm up: its phases lost
                res.error(lib, "worker", exc)
                self.progress.advance(self.bar, len(DEFAULT_WORKER_PHASES) - inner_done)
            # After the default worker: the drain's size depends on its throughput.
            await self.phase(lib, "drain", drain_row)
            await self.phase(lib, "start-up", startup_row)
            await self.phase(lib, "1 MB argument", big_row)
            await self.phase(lib, "sleep test", sleep_test)
            await self.phase(lib, "memory", memory)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.close(), 10)

    async def settle(self, peer: Peer, w: WorkerProcess) -> None:
        """After a row that leaves tasks in flight: one more round trip, so the next row
        starts on an idle worker (FIFO queues: it returns after everything before it)."""
        await guarded(peer.round_trip(WARMUP_TIMEOUT), w, WARMUP_TIMEOUT)

    @contextlib.asynccontextmanager
    async def bare_worker(self, peer: Peer, concurrency: int | None,
                          tag: str) -> AsyncIterator[WorkerProcess]:
        """A worker without warm-up (the drain and start-up rows time it from spawn or from
        its first completion); stopped and FLUSHALLed afterwards."""
        cmd, extra_env = peer.worker_cmd(concurrency)
        w = WorkerProcess(peer.name, cmd, self.worker_env(extra_env),
                          self.logdir / f"{peer.name}-{tag}.log")
        w.start(REPO_ROOT)
        peer.alive = w.check_alive
        try:
            yield w
        finally:
            await asyncio.to_thread(w.stop)
            await self.redis.flushall()

    async def memory_probe(self, peer: Peer, h: int, rnd: int,
                           as_set: bool = False) -> dict[str, float]:
        """Run benchmarks/_memory_probe.py in a fresh process; start a worker once its H
        handles are waiting; returns bytes per handle and MB kept after release."""
        timeout = 60 + h / 500
        env = self.worker_env({})
        log = (self.logdir / f"{peer.name}-memory-r{rnd}.log").open("wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks._memory_probe", peer.name, self.server.url,
                str(h), str(timeout), *(["--set"] if as_set else []), cwd=REPO_ROOT,
                env=env, stdout=asyncio.subprocess.PIPE,
                stderr=log, start_new_session=True)
        finally:
            log.close()  # the child has its own copy of the descriptor

        async def line() -> dict[str, Any]:
            raw = await asyncio.wait_for(proc.stdout.readline(), timeout)  # type: ignore[union-attr]
            if not raw:
                raise RuntimeError(f"memory probe exited ({await proc.wait()}); see "
                                   f"{self.logdir / f'{peer.name}-memory-r{rnd}.log'}")
            return dict(json.loads(raw))

        try:
            ready = await line()
            async with self.bare_worker(peer, None, f"memory-r{rnd}"):
                done = await line()
                await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        return {"per_handle": (ready["loaded"] - ready["baseline"]) / h,
                "released_mb": (done["released"] - ready["baseline"]) / 1e6}

    async def run_reference(self) -> None:
        """Once per round: what Redis itself moves for the 1 MB row (redis-py, same server),
        and the memory row's calibration (a plain Future per task, its own process)."""
        self._step("redis-py reference: SET/GET 1 MB; memory calibration")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks._memory_probe", "--bare",
                str(self.cfg.sizes.memory_home), cwd=REPO_ROOT, env=self.worker_env({}),
                stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            self.res.reference.setdefault("bare_task_bytes", []).append(
                float(json.loads(out.splitlines()[0])["per_handle"]))
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:
            self.res.error("redis", "memory calibration", exc)
        try:
            await self.redis.flushall()
            ref = await guarded(_scenarios.redis_reference(self.redis, self.cfg.sizes.big_m),
                                None, 120)
            self.res.reference.setdefault("set_1mb", []).append(ref.set_rate)
            self.res.reference.setdefault("get_1mb", []).append(ref.get_rate)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:
            self.res.error("redis", "reference", exc)

    async def run_flow(self, rnd: int) -> None:
        """One round of "Flow control costs": each variant a pre-filled drain (_flow.py)."""
        cfg, res = self.cfg, self.res
        for variant in _flow.rotation(rnd):
            label = f"round {rnd}/{cfg.flow_rounds} · flow control · {variant.label}"
            try:
                await self.flow_drain(rnd, variant, label)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                res.flow_error(rnd, variant.key, exc)
            finally:
                self.progress.advance(self.bar)

    async def _prefill(self, peer: Any, fill: Any, n: int, timeout: float,
                       label: str) -> tuple[Any, Any]:
        """Fill the queue with ``n`` tasks through ``peer`` and close it (nobody awaits the
        handles: the producer is gone before the worker starts); returns the streams to
        poll and the result keys to check."""
        await peer.connect()
        try:
            self._step(f"{label}: fill {n}")
            app = peer.tasks.app
            streams = _flow.stream_keys(app)
            ids = await guarded(fill(peer.tasks, n), None, timeout)
            results = _flow.result_keys(app, ids)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.close(), 10)
        if len(ids) != n:
            raise RuntimeError(f"filled {len(ids)} tasks, not {n}")
        return streams, results

    async def flow_drain(self, rnd: int, variant: _flow.Variant, label: str) -> None:
        cfg = self.cfg
        await self.redis.flushall()
        peer = AioqueueFlowPeer(self.server.url)
        streams, results = await self._prefill(peer, variant.fill, cfg.flow_n,
                                               cfg.flow_timeout, label)
        cmd, extra_env = peer.worker_cmd(None)
        w = WorkerProcess(peer.name, cmd, self.worker_env(extra_env),
                          self.logdir / f"flow-{variant.key}-r{rnd}.log")
        w.start(REPO_ROOT)
        try:
            self._step(f"{label}: drain")
            d = await _flow.drain(self.redis, streams, cfg.flow_n, w, self.server.pid,
                                  cfg.flow_timeout)
            missing = await _flow.missing_results(self.redis, results)
            if missing:
                raise RuntimeError(f"{missing} of {cfg.flow_n} results missing after the "
                                   "queue drained (parked or lost runs)")
        finally:
            await asyncio.to_thread(w.stop)
            await self.redis.flushall()
        self.res.flow_add(rnd, variant.key, "throughput", d.rate)
        self.res.flow_add(rnd, variant.key, "worker_cpu", d.worker_cpu)
        self.res.flow_add(rnd, variant.key, "redis_cpu", d.redis_cpu)

    async def run_cluster(self, rnd: int) -> None:
        """One round of "Redis Cluster vs single server" (_cluster.py): per broker, in an
        order swapped each round, a pre-filled drain and then K round trips."""
        cfg, res = self.cfg, self.res
        labels = dict(_cluster.TARGETS)
        for target in _cluster.rotation(rnd):
            label = f"round {rnd}/{cfg.cluster_rounds} · cluster section · {labels[target]}"
            try:
                if self.cluster_failure is not None:
                    raise RuntimeError(f"cluster did not start: {self.cluster_failure}")
                await self.cluster_target(rnd, target, label)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                res.cluster_error(rnd, target, exc)
            finally:
                self.progress.advance(self.bar)

    async def cluster_target(self, rnd: int, target: str, label: str) -> None:
        cfg, res = self.cfg, self.res
        if target == _cluster.BASELINE:
            url, pid, poll = self.server.url, self.server.pid, self.redis
            masters = [self.redis]
        else:
            assert self.cluster is not None and self.cluster_owner is not None
            url, pid, poll = self.cluster.url, self.cluster.owner_pid, self.cluster_owner
            masters = self.cluster_masters
        await _cluster.flush_all(masters)
        peer = AioqueueUrlPeer(url)
        streams, results = await self._prefill(peer, _flow.fill_plain, cfg.cluster_n,
                                               cfg.cluster_timeout, label)
        cmd, extra_env = peer.worker_cmd(None)
        w = WorkerProcess(peer.name, cmd, self.worker_env(extra_env),
                          self.logdir / f"cluster-{target}-r{rnd}.log")
        w.start(REPO_ROOT)
        rt_peer: AioqueueUrlPeer | None = None
        try:
            self._step(f"{label}: drain")
            d = await _flow.drain(poll, streams, cfg.cluster_n, w, pid, cfg.cluster_timeout)
            missing = await _flow.missing_results(poll, results)
            if missing:
                raise RuntimeError(f"{missing} of {cfg.cluster_n} results missing after "
                                   "the queue drained")
            res.cluster_add(rnd, target, "throughput", d.rate)
            res.cluster_add(rnd, target, "worker_cpu", d.worker_cpu)
            res.cluster_add(rnd, target, "redis_cpu", d.redis_cpu)
            # Round trips on the same (now idle, warmed-up) worker, from a fresh producer.
            self._step(f"{label}: {cfg.cluster_k} round trips")
            rt_peer = AioqueueUrlPeer(url)
            await rt_peer.connect()
            await self.warm_up(rt_peer, w)
            samples = []
            for _ in range(cfg.cluster_k):
                t0 = time.perf_counter()
                await guarded(rt_peer.round_trip(WARMUP_TIMEOUT), w, WARMUP_TIMEOUT)
                samples.append((time.perf_counter() - t0) * 1000)
            res.cluster_add(rnd, target, "rtt_p50", percentile(samples, 50))
            res.cluster_add(rnd, target, "rtt_p99", percentile(samples, 99))
        finally:
            if rt_peer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(rt_peer.close(), 10)
            await asyncio.to_thread(w.stop)
            await _cluster.flush_all(masters)

    async def run(self) -> Results:
        for rnd in range(1, self.cfg.total_rounds + 1):
            if rnd <= self.cfg.rounds and self.cfg.libs:
                await self.run_reference()
                for lib in self.cfg.libs:
                    await self.run_lib(rnd, lib)
            if self.cfg.flow and rnd <= self.cfg.flow_rounds:
                await self.run_flow(rnd)
            if self.cfg.cluster and rnd <= self.cfg.cluster_rounds:
                await self.run_cluster(rnd)
        self._step("done")
        await self.redis.aclose()
        for client in [*self.cluster_masters, *filter(None, [self.cluster_owner])]:
            await client.aclose()
        return self.res


def _is_full_run(cfg: Config) -> bool:
    """The run `make bench` makes: every library and section, full sizes, into
    benchmarks/ (only such a run may rewrite the README's table)."""
    return (cfg.mode == "full" and not cfg.out and cfg.rounds >= 3 and cfg.flow
            and cfg.cluster and set(cfg.libs) == set(ADAPTERS))


def exact_command() -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())  # not resolved: keep the venv path readable
    return shlex.join([str(exe), "-m", "benchmarks.run", *sys.argv[1:]])


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(REPO_ROOT))
    return str(path)


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    # Treat SIGTERM like Ctrl-C so the same cleanup path (workers, then redis) runs.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    console = Console()
    signal.signal(signal.SIGTERM, _on_sigterm)
    atexit.register(kill_all_workers)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    logdir = Path(tempfile.mkdtemp(prefix="aioqueue-bench-logs-"))
    interrupted = False
    res = Results(list(cfg.libs))
    server = RedisServer()
    cluster = _cluster.LocalCluster() if cfg.cluster else None
    cluster_failure: BaseException | None = None
    try:
        server.start()
        # Task modules read the URL at import, in the workers and in this process alike.
        os.environ[REDIS_URL_ENV] = server.url
        console.print(f"redis-server {server.version()} on {server.url} · worker logs in {logdir}")
        if cluster is not None:
            try:
                cluster.start()
                console.print(f"Redis Cluster, {_cluster.MASTERS} masters: {cluster.url} "
                              f"(slot of {{aioqueue}} on :{cluster.owner_port})")
            except Exception as exc:
                cluster_failure = exc
                console.print(f"[red]cluster[/red] did not start: {exc}", highlight=False)
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        with progress:
            bench = Bench(cfg, server, logdir, progress, cluster, cluster_failure)
            res = bench.res
            try:
                # The driver (every library's producer side) runs on uvloop, as a production
                # asyncio service would; the same loop for every library keeps it fair.
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    runner.run(bench.run())
            except KeyboardInterrupt:
                interrupted = True
        machine = machine_info(server.version())
    finally:
        kill_all_workers()
        if cluster is not None:
            cluster.stop()
        server.stop()
    if cfg.libs:
        title = (f"aioqueue vs peers ({cfg.mode}: N={cfg.n}, K={cfg.k}, rounds={cfg.rounds}; "
                 "medians)")
        console.print(res.rich_table(title))
        for lib, errs in res.errors.items():
            for e in errs:
                console.print(f"[red]{lib}[/red] {e}", highlight=False)
    if cfg.flow:
        title = (f"aioqueue flow control costs (drain of N={cfg.flow_n}, "
                 f"rounds={cfg.flow_rounds}; medians, vs plain = median of per-round ratios)")
        console.print(res.flow_rich_table(title))
        for variant, errs in res.flow_errors.items():
            for e in errs:
                console.print(f"[red]flow {variant}[/red] {e}", highlight=False)
    if cfg.cluster:
        title = (f"aioqueue on Redis Cluster (3 masters) vs a single redis-server (drain of "
                 f"N={cfg.cluster_n}, K={cfg.cluster_k} round trips, "
                 f"rounds={cfg.cluster_rounds}; medians, cluster / single = median of "
                 "per-round ratios)")
        console.print(res.cluster_rich_table(title))
        for target, errs in res.cluster_errors.items():
            for e in errs:
                console.print(f"[red]cluster section {target}[/red] {e}", highlight=False)
    if interrupted:
        # Partial numbers are shown above but never replace a complete results file.
        console.print("[yellow]interrupted: results.json/results.md left unchanged[/yellow]")
    else:
        out_dir = Path(cfg.out) if cfg.out else BENCH_DIR
        paths = write_outputs(res, out_dir, machine, exact_command(), asdict(cfg), started)
        if res.libs:  # the chart beside the README's table, drawn from the JSON just written
            from benchmarks._chart import write_chart  # matplotlib: imported only here

            json_path = next(p for p in paths if p.suffix == ".json")
            chart = json_path.with_name("results.png")
            write_chart(json.loads(json_path.read_text()), chart)
            paths = [*paths, chart]
        if _is_full_run(cfg):  # what `make bench` makes: the README's table too
            md_path = next(p for p in paths if p.suffix == ".md")
            if _readme.replace_section("main", _readme.main_table(md_path.read_text())):
                paths = [*paths, _readme.README]
        console.print("wrote " + " and ".join(_shown(p) for p in paths))
    if res.errors or res.flow_errors or res.cluster_errors:
        console.print(f"[yellow]errors occurred; worker logs kept in {logdir}[/yellow]")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
