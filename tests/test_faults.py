"""Fault injection against real CLI worker processes: SIGKILL, long tasks, a Redis restart,
garbage on the wire, SIGTERM/SIGINT. Each test prints its figures (run with ``-s``).

The workers run ``tests/fault_app.py`` (``fault_app:app``), configured through environment
variables; their tasks count every execution in the Redis hash ``{fault}:runs``.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from aioqueue import AioQueue, AsyncResult, BrokerConnectionError, State
from aioqueue.errors import DeadLettered, NotRegistered
from aioqueue.message import TaskMessage
from aioqueue.testing import RedisServer

pytestmark = pytest.mark.slow

TESTS_DIR = Path(__file__).parent
STREAM = "aioqueue:{default}:stream"
DEAD = "aioqueue:{default}:dead"
RUNS = "{fault}:runs"


class CliWorkers:
    """``aioqueue worker fault_app:app`` subprocesses, each logging to its own file."""

    def __init__(self, log_dir: Path, url: str, **env: str) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, "FAULT_REDIS_URL": url, **env}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._all: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "aioqueue", "worker", "fault_app:app", "-c", "50",
                 "-n", name, "-l", "info"],
                cwd=TESTS_DIR, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        self._all.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    async def wait_exit(self, name: str, timeout: float) -> int:
        proc = self.procs[name]
        with anyio.fail_after(timeout):
            while proc.poll() is None:
                await anyio.sleep(0.01)
        return proc.returncode

    def close(self) -> None:
        for proc in self._all:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def workers(tmp_path: Path, redis_url: str) -> Iterator[CliWorkers]:
    group = CliWorkers(tmp_path, redis_url)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
async def producer(redis_url: str) -> AsyncIterator[AioQueue]:
    """A producer app on the test Redis, closed after the test."""
    app = producer_app(redis_url)
    yield app
    await app.close()


def producer_app(url: str, **settings: Any) -> AioQueue:
    """The producing side: stubs under the worker's task names (they never run here)."""
    app = AioQueue("producer", broker=url, **settings)

    @app.task(name="fault.record")
    async def record(key: str, seconds: float = 0.0) -> str:
        raise NotImplementedError

    @app.task(name="fault.first_slow")
    async def first_slow(key: str, seconds: float) -> str:
        raise NotImplementedError

    @app.task(name="fault.echo")
    async def echo(value: Any) -> Any:
        raise NotImplementedError

    return app


async def collect(handles: list[AsyncResult[Any]], timeout: float) -> dict[str, Any]:
    """handle id -> value, for every handle that completes within ``timeout`` overall."""
    done: dict[str, Any] = {}

    async def one(h: AsyncResult[Any]) -> None:
        done[h.id] = await h.get(propagate=False)

    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as tg:
            for h in handles:
                tg.start_soon(one, h)
    return done


async def run_counts(client: Any) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await client.hgetall(RUNS)).items()}


async def wait_ready(group: CliWorkers, name: str, timeout: float = 10.0) -> None:
    """Until worker ``name`` says it is consuming. (Redis 7.0 lists a consumer only once it
    has been served a message, so XINFO CONSUMERS cannot tell.)"""
    with anyio.fail_after(timeout):
        while f"worker {name} consuming" not in group.log(name):
            assert group.procs[name].poll() is None, group.log(name)
            await anyio.sleep(0.02)


# -- 1. SIGKILL ----------------------------------------------------------------------------
async def test_sigkill_workers_at_random_loses_nothing(
    workers: CliWorkers, producer: AioQueue, raw: Any
) -> None:
    await sigkill_soak(workers, producer, raw)


async def sigkill_soak(workers: CliWorkers, producer: AioQueue, raw: Any,
                       label: str = "sigkill") -> None:
    """2,000 tasks of 0.05-0.8 s on 3 workers, one SIGKILLed every second: nothing lost,
    nothing dead-lettered, nothing rerun after a live worker's run (also run on Redis
    Cluster by tests/test_cluster.py)."""
    total = 2000
    # A kill a second is far harsher than max_deliveries=5 is meant for: with the default, a
    # batch of long tasks can land on a worker that dies five times in a row, and is then
    # dead-lettered as poison (FAILURE DeadLettered, by design). Here we count losses.
    env = {"FAULT_VT": "1.5", "FAULT_MAX_DELIVERIES": "50"}
    app = producer
    rng = random.Random(1234)
    kills = 0
    killed_pids: set[int] = set()
    names = [f"w{i}" for i in range(3)]
    for name in names:
        workers.start(name, **env)
    handles: list[AsyncResult[Any]] = []
    for start in range(0, total, 500):
        handles += await app.tasks["fault.record"].delay_many(
            [(f"k{i}", rng.uniform(0.05, 0.8)) for i in range(start, start + 500)]
        )

    async def killer() -> None:
        nonlocal kills
        serial = 3
        while True:
            await anyio.sleep(1.0)
            victim = rng.choice(sorted(workers.procs))
            killed_pids.add(workers.procs[victim].pid)
            workers.kill(victim)
            kills += 1
            new = f"w{serial}"
            serial += 1
            workers.start(new, **env)

    began = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(killer)
        done = await collect(handles, timeout=60)
        tg.cancel_scope.cancel()
    elapsed = time.monotonic() - began
    runs = await run_counts(raw)
    completed = sum(1 for i, h in enumerate(handles) if done.get(h.id) == f"k{i}")
    dead_lettered = sum(isinstance(v, DeadLettered) for v in done.values())
    states = await asyncio.gather(*(h.state() for h in handles))
    success = sum(s is State.SUCCESS for s in states)
    duplicates = sum(n - 1 for n in runs.values() if n > 1)
    never_ran = sum(1 for i in range(total) if runs.get(f"k{i}", 0) == 0)
    lost = total - completed - dead_lettered
    # Every execution but the last of a task must have been on a worker we killed: a
    # rerun after a live worker's run would mean its claim was lost.
    ran_on: dict[str, list[int]] = {}
    for entry in await raw.lrange("{fault}:log", 0, -1):
        key, pid = entry.decode().split()
        ran_on.setdefault(key, []).append(int(pid))
    rerun_after_live = sum(pid not in killed_pids
                           for pids in ran_on.values() for pid in pids[:-1])
    print(f"\n[{label}] sent={total} completed={completed} success_records={success} "
          f"dead_lettered={dead_lettered} lost={lost} "
          f"run_twice_or_more={sum(n > 1 for n in runs.values())} "
          f"duplicate_executions={duplicates} (after a live worker's run: "
          f"{rerun_after_live}) never_ran={never_ran} kills={kills} elapsed={elapsed:.1f}s")
    for i, h in enumerate(handles):
        if done.get(h.id) != f"k{i}":
            print(f"  not completed: k{i} runs={runs.get(f'k{i}', 0)} -> {done.get(h.id)!r}")
    assert lost == 0 and dead_lettered == 0
    assert success == total and never_ran == 0
    assert rerun_after_live == 0
    sizes = (await app.broker.queue_sizes(["default"]))["default"]
    assert sizes == (0, 0, 0), sizes
    assert kills >= 3


# -- 2. a long task on a live worker -------------------------------------------------------
async def test_task_longer_than_visibility_timeout_runs_once(
    workers: CliWorkers, producer: AioQueue, raw: Any
) -> None:
    app = producer
    workers.start("busy", FAULT_VT="1.0")
    await wait_ready(workers, "busy")
    workers.start("idle", FAULT_VT="1.0")
    await wait_ready(workers, "idle")
    record = app.tasks["fault.record"]
    handles = [await record.delay(f"long{i}", 3.5) for i in range(3)]
    max_delivered = 0
    began = time.monotonic()
    with anyio.fail_after(15):
        while not all([await h.ready() for h in handles]):
            for entry in await raw.xpending_range(STREAM, "aioqueue", "-", "+", 10):
                max_delivered = max(max_delivered, int(entry["times_delivered"]))
            await anyio.sleep(0.1)
        values = [await h for h in handles]
    runs = await run_counts(raw)
    print(f"\n[long task] tasks=3 duration=3.5s visibility_timeout=1.0s runs={runs} "
          f"max_times_delivered={max_delivered} elapsed={time.monotonic() - began:.1f}s")
    assert values == ["long0", "long1", "long2"]
    assert runs == {"long0": 1, "long1": 1, "long2": 1}
    assert max_delivered == 1
    assert workers.procs["busy"].poll() is None and workers.procs["idle"].poll() is None


async def test_a_killed_workers_tasks_run_elsewhere_long_before_visibility_timeout(
    workers: CliWorkers, producer: AioQueue, raw: Any
) -> None:
    # visibility_timeout 30 s: only the take-over of a dead worker's messages (its
    # connection is gone) explains a rerun within seconds.
    slow = producer.tasks["fault.first_slow"]
    workers.start("doomed", FAULT_VT="30")
    await wait_ready(workers, "doomed")
    handles = [await slow.delay(f"dead{i}", 60.0) for i in range(3)]
    with anyio.fail_after(10):
        while len(await run_counts(raw)) < 3:
            await anyio.sleep(0.02)
    workers.start("heir", FAULT_VT="30")
    await wait_ready(workers, "heir")
    killed_at = time.monotonic()
    workers.kill("doomed")
    with anyio.fail_after(20):
        values = [await h for h in handles]
    rerun_in = time.monotonic() - killed_at
    runs = await run_counts(raw)
    infos = [await h.info() for h in handles]
    print(f"\n[take-over] rerun_in={rerun_in:.2f}s (visibility_timeout 30s) runs={runs} "
          f"workers={[i.worker for i in infos]}")
    assert values == ["dead0", "dead1", "dead2"]
    assert rerun_in < 10, rerun_in
    assert runs == {"dead0": 2, "dead1": 2, "dead2": 2}
    assert all(i.worker == "heir" for i in infos)


# -- 3. Redis restarted --------------------------------------------------------------------
async def test_redis_restart_while_producing_and_consuming(tmp_path: Path) -> None:
    server = RedisServer(appendonly=True)
    server.start()
    group = CliWorkers(tmp_path, server.url)
    app = producer_app(server.url, broker_connection_timeout=1.0)
    raw = aioredis.Redis.from_url(server.url)
    sent: list[AsyncResult[Any]] = []
    failed = 0
    slowest_failure = 0.0
    try:
        for name in ("r1", "r2"):
            group.start(name)
        await wait_ready(group, "r1")
        await wait_ready(group, "r2")
        record = app.tasks["fault.record"]
        stop_producing = anyio.Event()

        async def produce(pid: int) -> None:
            nonlocal failed, slowest_failure
            n = 0
            while not stop_producing.is_set():
                t0 = time.monotonic()
                try:
                    sent.append(await record.delay(f"p{pid}-{n}", 0.05))
                except BrokerConnectionError:
                    failed += 1
                    slowest_failure = max(slowest_failure, time.monotonic() - t0)
                n += 1
                await anyio.sleep(0.01)

        began = time.monotonic()
        async with anyio.create_task_group() as tg:
            for pid in range(4):
                tg.start_soon(produce, pid)
            await anyio.sleep(1.5)
            sent_before = len(sent)
            server.stop(kill=True)
            await anyio.sleep(2.0)
            await anyio.to_thread.run_sync(server.start)
            await anyio.sleep(1.5)
            stop_producing.set()
        done = await collect(sent, timeout=30)
        elapsed = time.monotonic() - began
        runs = await run_counts(raw)
        completed = sum(1 for h in sent if done.get(h.id) is not None
                        and not isinstance(done[h.id], BaseException))
        lost = len(sent) - completed
        duplicates = sum(n - 1 for n in runs.values() if n > 1)
        outage_lines = {name: [line for line in group.log(name).splitlines()
                               if "retrying with back-off" in line
                               or "working again" in line]
                        for name in ("r1", "r2")}
        print(f"\n[redis restart] sent={len(sent)} (before outage {sent_before}) "
              f"completed={completed} lost={lost} failed_delays={failed} "
              f"slowest_failed_delay={slowest_failure:.2f}s duplicate_executions={duplicates} "
              f"elapsed={elapsed:.1f}s outage_log_lines="
              f"{ {k: len(v) for k, v in outage_lines.items()} }")
        for name, lines in outage_lines.items():
            for line in lines:
                print(f"  {name}: {line}")
        assert lost == 0
        assert failed > 0  # the outage was real
        assert slowest_failure < 1.0 + 1.5  # broker_connection_timeout, never a hang
        assert all(group.procs[n].poll() is None for n in ("r1", "r2"))
        for lines in outage_lines.values():
            # Each loop that failed says so once, and says once that it works again: no
            # loop speaks for another (review B3: "reachable again" while settle failed).
            def loops(marker: str, lines: list[str] = lines) -> list[str]:
                return [re.search(r"worker \S+: ([^:]+):", line).group(1)  # type: ignore[union-attr]
                        for line in lines if marker in line]

            failed_loops = loops("retrying with back-off")
            assert failed_loops, lines
            assert sorted(failed_loops) == sorted(set(failed_loops)), lines
            assert sorted(loops("working again")) == sorted(failed_loops), lines
    finally:
        group.close()
        await app.close()
        await raw.aclose()
        server.cleanup()


# -- 4. garbage on the wire ----------------------------------------------------------------
async def test_garbage_on_the_wire_against_a_cli_worker(
    workers: CliWorkers, producer: AioQueue, raw: Any
) -> None:
    app = producer
    workers.start("g1")
    await wait_ready(workers, "g1")
    unknown = msgspec.msgpack.encode(TaskMessage(id="ghost-id", task="fault.missing"))
    for payload in (b"\xc1\x00 not msgpack", unknown, random.Random(7).randbytes(64)):
        await raw.xadd(STREAM, {"m": payload})
    with anyio.fail_after(10):
        handle = await app.tasks["fault.echo"].delay({"still": "serving"})
        assert await handle == {"still": "serving"}
        while await raw.xlen(DEAD) < 3:
            await anyio.sleep(0.02)
        with pytest.raises(NotRegistered, match=r"fault\.missing"):
            await app.AsyncResult("ghost-id").get(timeout=5)
    reasons = [d.reason for d in await app.broker.dead_letters("default", 10)]
    print(f"\n[garbage] dead_letters={len(reasons)} reasons={reasons}")
    assert len(reasons) == 3
    assert workers.procs["g1"].poll() is None
    assert "dead-lettering undecodable message" in workers.log("g1")


# -- 5. SIGTERM / second SIGINT ------------------------------------------------------------
async def test_sigterm_hands_back_and_second_sigint_stops_at_once(
    workers: CliWorkers, producer: AioQueue, raw: Any
) -> None:
    # visibility_timeout 30s: only an immediate hand-back explains a quick rerun elsewhere.
    app = producer
    slow = app.tasks["fault.first_slow"]
    workers.start("A", FAULT_VT="30", FAULT_SHUTDOWN_TIMEOUT="0.5")
    await wait_ready(workers, "A")
    handles = [await slow.delay(f"term{i}", 30.0) for i in range(5)]
    with anyio.fail_after(10):
        while len(await run_counts(raw)) < 5:
            await anyio.sleep(0.02)
    workers.start("B", FAULT_VT="30")
    await wait_ready(workers, "B")
    sigterm_at = time.monotonic()
    workers.procs["A"].send_signal(signal.SIGTERM)
    code = await workers.wait_exit("A", timeout=10)
    exited_in = time.monotonic() - sigterm_at
    with anyio.fail_after(10):
        values = [await h for h in handles]
    finished_in = time.monotonic() - sigterm_at
    infos = [await h.info() for h in handles]
    runs = await run_counts(raw)
    print(f"\n[sigterm] exit_code={code} exited_in={exited_in:.2f}s "
          f"all_done_in={finished_in:.2f}s (visibility_timeout 30s) "
          f"workers={[i.worker for i in infos]} runs={runs}")
    assert code == 0
    assert values == [f"term{i}" for i in range(5)]
    assert all(i.worker == "B" for i in infos)
    assert finished_in < 10  # far sooner than the 30s reclaim
    assert all(runs[f"term{i}"] == 2 for i in range(5))

    # Second SIGINT: graceful would wait 30s; the second signal stops at once.
    workers.start("A2", FAULT_VT="30", FAULT_SHUTDOWN_TIMEOUT="30")
    await wait_ready(workers, "A2")
    await raw.delete(RUNS)
    workers.kill("B")  # so the new tasks all land on A2
    handles = [await slow.delay(f"int{i}", 30.0) for i in range(5)]
    with anyio.fail_after(10):
        while len(await run_counts(raw)) < 5:
            await anyio.sleep(0.02)
    workers.start("B2", FAULT_VT="30")
    await wait_ready(workers, "B2")
    a2 = workers.procs["A2"]
    a2.send_signal(signal.SIGINT)
    with anyio.fail_after(5):
        while "stopping gracefully" not in workers.log("A2"):
            await anyio.sleep(0.02)
    second_at = time.monotonic()
    a2.send_signal(signal.SIGINT)
    code = await workers.wait_exit("A2", timeout=10)
    exited_in = time.monotonic() - second_at
    with anyio.fail_after(10):
        values = [await h for h in handles]
    infos = [await h.info() for h in handles]
    runs = await run_counts(raw)
    print(f"[second sigint] exit_code={code} exited_in={exited_in:.2f}s "
          f"workers={[i.worker for i in infos]} runs={runs}")
    assert exited_in < 2.0  # not the 30s shutdown_timeout, not the 30s task
    assert values == [f"int{i}" for i in range(5)]
    assert all(i.worker == "B2" for i in infos)
    assert all(runs[f"int{i}"] == 2 for i in range(5))
