"""Flame graphs of aioqueue's worker and producer: ``python -m benchmarks.flamegraphs``.

Where the time goes in the main table's scenarios, kept next to the figures they explain
(``benchmarks/flamegraphs/*.svg``, py-spy's SVG: open one in a browser, click to zoom).
One throwaway redis-server; for each scenario a fresh ``aioqueue worker`` (the main
table's task module and command), and py-spy sampling both the worker and this driver
process for ``--seconds`` while the scenario runs:

- ``closed-loop``: 100 producer coroutines each repeating ``await (await add.delay(1, 2))``;
- ``low-load``: no-ops paced at 4,000/s (nothing batches: one fetch and one settle per
  task or two);
- ``drain``: a pre-filled queue emptied by the worker (the worker side only matters);
- ``big``: 300 tasks with a 1 MB argument, pre-filled, drained.

Sampling is ``--nonblocking`` (the processes are never paused), at 250 Hz, idle frames
left out: the graphs show where CPU goes, not where the loop waits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import uvloop

from benchmarks import _scenarios
from benchmarks._measure import WorkerProcess
from benchmarks._redis import RedisServer
from benchmarks.peers import load_peer
from benchmarks.peers.base import REDIS_URL_ENV, Peer

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = Path(__file__).resolve().parent / "flamegraphs"
RATE_HZ = 250


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy not found: `make bench-env` installs it in .bench-venv")
    return found


def _record(pid: int, seconds: float, svg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [_py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)),
         "--rate", str(RATE_HZ), "--nonblocking", "--output", str(svg), "--format",
         "flamegraph"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextlib.asynccontextmanager
async def _worker(server: RedisServer, logdir: Path, name: str) -> AsyncIterator[WorkerProcess]:
    peer = load_peer("aioqueue", server.url)
    cmd, extra = peer.worker_cmd(None)
    env = {**os.environ, REDIS_URL_ENV: server.url, **extra,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    worker = WorkerProcess("aioqueue", cmd, env, logdir / f"{name}.log").start(REPO_ROOT)
    try:
        yield worker
    finally:
        await asyncio.to_thread(worker.stop)


async def _profiled(name: str, worker: WorkerProcess, seconds: float,
                    run: Callable[[], Awaitable[object]]) -> None:
    """Run the scenario while py-spy samples the worker and this process."""
    recorders = [_record(worker.pid, seconds, OUT_DIR / f"{name}-worker.svg"),
                 _record(os.getpid(), seconds, OUT_DIR / f"{name}-producer.svg")]
    await asyncio.sleep(0.5)  # py-spy attached
    await run()
    for recorder in recorders:
        _, err = await asyncio.to_thread(recorder.communicate)
        if recorder.returncode:
            print(f"py-spy failed for {name}: {err.decode(errors='replace')[-300:]}")


async def main(seconds: float) -> None:
    OUT_DIR.mkdir(exist_ok=True)
    logdir = Path(tempfile.mkdtemp(prefix="aioqueue-flame-"))
    with RedisServer() as server:
        os.environ[REDIS_URL_ENV] = server.url  # read by the task module the peer imports
        peer: Peer = load_peer("aioqueue", server.url)
        await peer.connect()
        sizes = _scenarios.Sizes(closed_warmup=0.2, closed_duration=seconds + 1,
                                 low_duration=seconds + 1)
        try:
            async with _worker(server, logdir, "closed") as worker:
                await peer.round_trip(30)
                await _profiled("closed-loop", worker, seconds,
                                lambda: _scenarios.closed_loop(peer, sizes, 60))
            async with _worker(server, logdir, "low") as worker:
                await peer.round_trip(30)
                await _profiled("low-load", worker, seconds, lambda: _scenarios.cpu_at_low_load(
                    peer, worker, sizes.low_rate, sizes))
            n = 400_000
            await peer.fill("noop", n)
            async with _worker(server, logdir, "drain") as worker:
                await _profiled("drain", worker, seconds, lambda: _scenarios.drain(
                    peer, n, worker, server.pid, 120))
            big_n = 300  # 300 MB in Redis at once: enough samples, bounded memory
            await peer.fill("big", big_n, _scenarios.big_payload())
            async with _worker(server, logdir, "big") as worker:
                await _profiled("big", worker, seconds, lambda: _scenarios.drain(
                    peer, big_n, worker, server.pid, 120))
        finally:
            await peer.close()
    print(f"flame graphs in {OUT_DIR} (worker logs in {logdir})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="how long py-spy samples each scenario")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(args.seconds))
    print(f"done in {time.perf_counter() - t0:.0f} s")
