"""The example app: a few realistic tasks.

Run a worker for it from this directory::

    cd examples
    aioqueue worker tasks:app -c 100 -l info

and call a task from anywhere::

    aioqueue call tasks:app examples.add 2 3 --wait

The broker URL comes from ``AIOQUEUE_BROKER`` (default: a local Redis). Every task has an
explicit name, so it is the same whether this module is imported as ``tasks`` or
``examples.tasks``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

from aioqueue import AioQueue, Task

app = AioQueue(
    "examples",
    broker=os.environ.get("AIOQUEUE_BROKER", "redis://localhost:6379/0"),
    # Keep results for an hour: plenty for a demo, and nothing piles up in Redis.
    result_expires=3600,
)


@app.task(name="examples.add")
async def add(x: int, y: int) -> int:
    """The hello world of task queues."""
    return x + y


@app.task(name="examples.fetch_report")
async def fetch_report(n: int) -> dict[str, Any]:
    """An I/O-bound task: waits on a (simulated) slow service, then returns a summary.

    The worker runs hundreds of these at once on one event loop: ``await`` frees the slot's
    loop time while the "request" is in flight.
    """
    await asyncio.sleep(0.05)  # stands in for an HTTP call or a database query
    rows = [(n * 7 + i) % 101 for i in range(10)]
    return {"report": n, "rows": len(rows), "total": sum(rows), "generated_at": time.time()}


@app.task(name="examples.checksum")
def checksum(text: str) -> str:
    """A CPU-ish synchronous task: a plain ``def`` runs in a worker thread, off the loop."""
    digest = text.encode()
    for _ in range(1_000):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


@app.task(bind=True, name="examples.notify", max_retries=3, default_retry_delay=0.1)
async def notify(self: Task[..., dict[str, Any]], user_id: int) -> dict[str, Any]:
    """A bound task: ``self`` is the task, ``self.request`` this run's id, retries, worker.

    The first attempt fails as a flaky mail server would, to show Celery's retry idiom; the
    retry keeps the same task id.
    """
    request = self.request
    if request.retries == 0:
        raise self.retry(exc=ConnectionError("mail server busy"), countdown=0.1)
    return {
        "user_id": user_id,
        "task_id": request.id,
        "attempts": request.retries + 1,
        "worker": request.hostname,
    }
