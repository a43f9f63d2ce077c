"""Producer memory per outstanding awaited handle, in a fresh process.

``python -m benchmarks._memory_probe <lib> <redis-url> <handles> <timeout> [--set]`` (run by
run.py with the bench python; no worker may be running when it starts), or
``python -m benchmarks._memory_probe --bare <handles>``: the calibration, bytes per plain
asyncio Future awaited by its own task, in a process of its own (in the same process the
freed memory of one measurement would be reused by the other):

1. connect the library's client and create one warm-up handle (so imports, scripts and
   connection pools exist); RSS -> ``baseline``;
2. create H handles, each awaited by its own asyncio task (``--set``: all of them by one
   task, as one aioqueue ``ResultSet``); RSS -> ``loaded``; print
   ``{"phase": "ready", ...}`` and wait: the harness now starts a worker;
3. when every handle resolved: drop every reference, gc.collect(); RSS -> ``released``;
   print ``{"phase": "done", ...}``.

RSS is the kernel's resident set (psutil), so it includes the allocator's retained arenas:
"released - baseline" is what the process keeps after the handles are gone.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from typing import Any

import psutil
import uvloop

from benchmarks.peers import load_peer


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _say(**payload: Any) -> None:
    print(json.dumps(payload), flush=True)


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def bare_task_bytes(h: int) -> None:
    """Calibration: RSS per plain asyncio.Future awaited by its own task (what any
    library's handle costs at least when each is awaited by a task of its own)."""
    gc.collect()
    before = _rss()
    futures = [asyncio.get_running_loop().create_future() for _ in range(h)]
    # A coroutine per future: ensure_future(future) would return the future itself.
    tasks = [asyncio.ensure_future(_await(f)) for f in futures]
    await asyncio.sleep(0.1)
    gc.collect()
    _say(phase="done", per_handle=(_rss() - before) / h)
    for f in futures:
        f.set_result(None)
    await asyncio.gather(*tasks)


def _awaited(handles: list[Any], as_set: bool) -> list[asyncio.Future[Any]]:
    """Each handle awaited by a task of its own, or (``as_set``: aioqueue's
    ``ResultSet``) all of them by one task."""
    if as_set:
        from aioqueue import ResultSet

        return [asyncio.ensure_future(ResultSet(handles).get())]
    return [asyncio.ensure_future(a) for a in handles]


async def probe(lib: str, url: str, h: int, timeout: float, as_set: bool = False) -> None:
    peer = load_peer(lib, url)
    await peer.connect()
    try:
        warm = _awaited(await peer.waiting_handles(1, timeout), as_set)
        gc.collect()
        baseline = _rss()
        t0 = time.perf_counter()
        handles = await peer.waiting_handles(h, timeout)
        waiters = _awaited(handles, as_set)
        await asyncio.sleep(0.2)  # every waiter has started waiting (subscribed / polling)
        gc.collect()
        loaded = _rss()
        _say(phase="ready", baseline=baseline, loaded=loaded, handles=len(waiters),
             create_s=time.perf_counter() - t0)
        await asyncio.wait_for(asyncio.gather(*warm, *waiters), timeout)
        del warm, waiters, handles
        gc.collect()
        await asyncio.sleep(0.1)  # let transports/subscriptions close
        gc.collect()
        _say(phase="done", released=_rss())
    finally:
        await asyncio.wait_for(peer.close(), 10)


def main() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if sys.argv[1] == "--bare":
            runner.run(bare_task_bytes(int(sys.argv[2])))
            return
        lib, url, h, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
        runner.run(probe(lib, url, h, timeout, as_set="--set" in sys.argv[5:]))


if __name__ == "__main__":
    main()
