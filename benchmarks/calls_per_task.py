"""Python function calls per task: a deterministic cost figure on a noisy, shared machine.

``python -m benchmarks.calls_per_task [--n 20000] [--top 30]`` runs a producer and a worker
in one process against a throwaway ``redis-server``, sends ``n`` no-op tasks with
``delay_many`` and awaits every handle, under ``cProfile``, then prints the calls per task
(producer and worker together) and the functions that make them. Wall-clock and CPU
figures swing by 15 % here from run to run; call counts do not, so a change that adds work
to the hot path shows up even when a benchmark cannot resolve it. Compare two checkouts by
running this from each (``PYTHONPATH=<checkout>``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats

from aioqueue import AioQueue
from aioqueue.testing import RedisServer

#: Task options per ``--variant``: the flow-control costs (issue 11), far from their limits.
VARIANTS: dict[str, dict[str, object]] = {
    "plain": {},
    "rate": {"rate_limit": "1000000/s"},
    "keyed": {"max_concurrency": 1000, "concurrency_key": lambda *a, **k: "k"},
    "priority": {"priority": 5},
}


async def measure(url: str, n: int, variant: str = "plain") -> pstats.Stats:
    # No blocked-loop warnings: the profiler itself slows the loop down.
    app = AioQueue("calls", broker=url, worker_blocked_loop_warning=None)

    @app.task(**VARIANTS[variant])
    async def noop() -> None:
        return None

    profile = cProfile.Profile()
    try:
        async with app.worker(concurrency=100):
            await asyncio.gather(*await noop.delay_many([() for _ in range(1000)]))  # warm
            profile.enable()
            await asyncio.gather(*await noop.delay_many([() for _ in range(n)]))
            profile.disable()
    finally:
        await app.close()
    return pstats.Stats(profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="plain")
    args = parser.parse_args()
    with RedisServer() as server:
        stats = asyncio.run(measure(server.url, args.n, args.variant))
    rows = sorted(((calls, f"{path.rsplit('/', 1)[-1]}:{line}({name})")
                   for (path, line, name), (_, calls, *_rest) in stats.stats.items()  # type: ignore[attr-defined]
                   ), reverse=True)
    total = sum(calls for calls, _ in rows)
    print(f"{total / args.n:.1f} Python calls per task (producer + worker, n={args.n}, "
          f"{args.variant})")
    for calls, where in rows[:args.top]:
        print(f"{calls / args.n:8.2f}  {where}")


if __name__ == "__main__":
    main()
