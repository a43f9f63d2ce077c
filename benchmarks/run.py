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
import os
import shlex
import shutil
import signal
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

from benchmarks import _cluster, _flow
from benchmarks._measure import WorkerProcess, kill_all_workers, percentile, proc_cpu_seconds
from benchmarks._redis import RedisServer
from benchmarks._report import Results, machine_info, write_outputs
from benchmarks.peers import ADAPTERS, load_peer
from benchmarks.peers.aioqueue_peer import AioqueueFlowPeer, AioqueueUrlPeer
from benchmarks.peers.base import REDIS_URL_ENV, Peer

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
PHASES = ("enqueue", "round trip", "throughput", "sleep test")
FLOW = "flow"  # the --only name of the "Flow control costs" section
CLUSTER = "cluster"  # the --only name of the "Redis Cluster vs single server" section
SECTIONS = (FLOW, CLUSTER)
WARMUP_TIMEOUT = 60.0  # total time a worker gets to become ready
WARMUP_ATTEMPT = 10.0  # per warm-up round trip; a lost first task must not eat it all
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

    @property
    def throughput_timeout(self) -> float:
        return 60 + self.n / 50  # generous: even 50 tasks/s finishes

    @property
    def sleep_timeout(self) -> float:
        return 60 + self.sleep_n * 0.05  # as if fully serial (concurrency 1)

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
    full = {"n": 20000, "k": 100, "sleep_n": 5000, "rounds": 3, "flow_n": 50000,
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
        except Exception as exc:
            self.res.error(lib, name, exc)
        finally:
            self.progress.advance(self.bar)

    async def run_lib(self, rnd: int, lib: str) -> None:
        cfg, res = self.cfg, self.res
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

        inner_done = 0  # progress steps the default-worker phases have advanced

        async def default_worker() -> None:
            nonlocal inner_done
            self._step(f"{label}: start worker")
            async with self.worker(peer, None, f"default-r{rnd}") as w:
                await self.phase(lib, "round trip", lambda: round_trips(w))
                inner_done += 1
                await self.phase(lib, "throughput", lambda: throughput(w))
                inner_done += 1

        async def round_trips(w: WorkerProcess) -> None:
            self._step(f"{label}: {cfg.k} round trips")
            samples = []
            for _ in range(cfg.k):
                t0 = time.perf_counter()
                await guarded(peer.round_trip(WARMUP_TIMEOUT), w, WARMUP_TIMEOUT)
                samples.append((time.perf_counter() - t0) * 1000)
            res.add(lib, "rtt_p50", percentile(samples, 50))
            res.add(lib, "rtt_p99", percentile(samples, 99))

        async def throughput(w: WorkerProcess) -> None:
            self._step(f"{label}: {cfg.n} no-ops through the worker")
            w_cpu, r_cpu = w.cpu_seconds(), proc_cpu_seconds(self.server.pid)
            t0 = time.perf_counter()
            await guarded(peer.run_noops(cfg.n, cfg.throughput_timeout), w, cfg.throughput_timeout)
            elapsed = time.perf_counter() - t0
            res.add(lib, "throughput", cfg.n / elapsed)
            res.add(lib, "worker_cpu", (w.cpu_seconds() - w_cpu) * 10_000 / cfg.n)
            res.add(lib, "redis_cpu", (proc_cpu_seconds(self.server.pid) - r_cpu) * 10_000 / cfg.n)

        async def sleep_test() -> None:
            self._step(f"{label}: start worker (c={cfg.sleep_concurrency})")
            async with self.worker(peer, cfg.sleep_concurrency, f"sleep-r{rnd}") as w:
                self._step(f"{label}: sleep test {cfg.sleep_n} x 50 ms")
                t0 = time.perf_counter()
                await guarded(peer.run_sleepy(cfg.sleep_n, cfg.sleep_timeout), w, cfg.sleep_timeout)
                res.add(lib, "sleep_wall", time.perf_counter() - t0)

        try:
            await self.phase(lib, "enqueue", enqueue)
            try:
                await default_worker()
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:  # worker failed to start/warm up: both phases lost
                res.error(lib, "worker", exc)
                self.progress.advance(self.bar, 2 - inner_done)
            await self.phase(lib, "sleep test", sleep_test)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.close(), 10)

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
            if rnd <= self.cfg.rounds:
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
        console.print("wrote " + " and ".join(_shown(p) for p in paths))
    if res.errors or res.flow_errors or res.cluster_errors:
        console.print(f"[yellow]errors occurred; worker logs kept in {logdir}[/yellow]")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
