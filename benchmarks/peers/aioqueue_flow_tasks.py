"""aioqueue task module for the "Flow control costs" section (``benchmarks/_flow.py``).

Worker: ``aioqueue worker benchmarks.peers.aioqueue_flow_tasks:app -l warning``, the same
command and default settings for the plain row and every flow-control row, so the rows
differ only in the tasks the queue is filled with. Its own module (not
``aioqueue_tasks``), so the main table's worker stays exactly as it was.
"""

from __future__ import annotations

import os

from aioqueue import AioQueue
from benchmarks.peers.base import REDIS_URL_ENV

app = AioQueue("bench", broker=os.environ[REDIS_URL_ENV])

#: Ten priority lanes, as ``priorities 0-9`` fills them.
PRIORITIES = range(10)
#: Concurrency keys of ``per-key limits, 100 keys``.
KEYS = 100


@app.task
async def noop() -> None:
    """The plain row: the main table's no-op."""
    return None


@app.task
async def add(x: int, y: int) -> int:
    """Not timed: the harness's liveness check reuses the adapter's round trip."""
    return x + y


@app.task(rate_limit="1000000/s")
async def noop_rated() -> None:
    """A cluster-wide rate limit far above any rate reached here: one ``admit`` per run."""
    return None


@app.task(max_concurrency=1000, concurrency_key=lambda key, **_: key)
async def noop_keyed(key: str) -> None:
    """At most 1,000 at once per key (never reached: nothing parks): admit + release."""
    return None


async def _noop() -> None:
    return None


# One task per priority, so each lane is filled with ``delay_many`` (the plain row's
# enqueue API; it takes no per-call options). The body is the plain no-op.
noop_by_priority = [
    app.task(name=f"{__name__}.noop_p{p}", priority=p)(_noop) for p in PRIORITIES
]
