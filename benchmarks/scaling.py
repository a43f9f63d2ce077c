"""``aioqueue worker --processes N``: drain throughput for 1 and 2 processes, with CPU split.

Run from the repo root: ``.bench-venv/bin/python -m benchmarks.scaling [--n 100000] [--rounds 3]``
(``make bench-scaling``).

Method: fill the queue with N no-op tasks while no worker runs (so the producer costs no CPU
during the measurement), start ``aioqueue worker ... --processes P``, and time the stream
draining from its first to its last entry (so process start-up is not counted). CPU seconds
of the worker processes and of redis-server over the same window say where the two cores
went: on a 2-core machine Redis and the workers share the cores, which caps the scaling.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time
from pathlib import Path

from benchmarks._measure import WorkerProcess, proc_cpu_seconds
from benchmarks._redis import RedisServer
from benchmarks.peers.base import REDIS_URL_ENV

ROOT = Path(__file__).resolve().parent.parent
STREAM = "aioqueue:{default}:stream"


def flushall(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"FLUSHALL\r\n")
        if not conn.recv(16).startswith(b"+OK"):
            raise RuntimeError("FLUSHALL failed")


async def fill(n: int) -> None:
    from benchmarks.peers import aioqueue_tasks

    for start in range(0, n, 5000):
        await aioqueue_tasks.noop.delay_many([() for _ in range(min(5000, n - start))])
    await aioqueue_tasks.app.close()


async def drain(url: str, n: int, worker: WorkerProcess, redis_pid: int
                ) -> tuple[float, float, float]:
    """(tasks/s, worker cores, redis cores) from the first to the last entry consumed."""
    from aioqueue.broker._resp import RespConnection

    host, port = url.split("//")[1].split("/")[0].split(":")
    conn = RespConnection(host=host, port=int(port))
    started = None
    cpu_w = cpu_r = 0.0
    first = n
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            left = int(await conn.execute("XLEN", STREAM))
            if started is None and left < n:
                started, first = time.perf_counter(), left
                cpu_w, cpu_r = worker.cpu_seconds(), proc_cpu_seconds(redis_pid)
            if started is not None and left == 0:
                elapsed = time.perf_counter() - started
                return (first / elapsed, (worker.cpu_seconds() - cpu_w) / elapsed,
                        (proc_cpu_seconds(redis_pid) - cpu_r) / elapsed)
            worker.check_alive()
            await asyncio.sleep(0.005)
        raise RuntimeError("the queue did not drain in 120 s")
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[int, list[float]] = {1: [], 2: []}
    with RedisServer() as redis:
        os.environ[REDIS_URL_ENV] = redis.url
        for round_no in range(args.rounds):
            for processes in (1, 2):
                flushall(redis.port)
                asyncio.run(fill(args.n))
                cmd = [sys.executable, "-m", "aioqueue", "worker",
                       "benchmarks.peers.aioqueue_tasks:app", "-l", "warning", "-c", "500",
                       "--processes", str(processes)]
                log = Path(f"/tmp/aioqueue-scaling-{processes}-{round_no}.log")
                worker = WorkerProcess(f"aioqueue x{processes}", cmd, dict(os.environ), log)
                worker.start(ROOT)
                try:
                    rate, w_cores, r_cores = asyncio.run(drain(redis.url, args.n, worker,
                                                               redis.pid))
                finally:
                    worker.stop()
                rates[processes].append(rate)
                print(f"round {round_no + 1}: {processes} process(es): {rate:,.0f} tasks/s, "
                      f"workers {w_cores:.2f} cores, redis {r_cores:.2f} cores", flush=True)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"median: 1 process {one:,.0f} tasks/s, 2 processes {two:,.0f} tasks/s, "
          f"ratio {two / one:.2f} (on {os.cpu_count()} cores, redis on the same machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
