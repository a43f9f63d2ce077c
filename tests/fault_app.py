"""The task module run by the fault-injection tests' CLI worker subprocesses.

``python -m aioqueue worker fault_app:app`` with ``cwd=tests``. Everything comes from the
environment so each test can tune it:

* ``FAULT_REDIS_URL`` -- the broker (required);
* ``FAULT_VT`` -- visibility_timeout (s), ``FAULT_SHUTDOWN_TIMEOUT`` -- shutdown_timeout (s),
  ``FAULT_CONNECTION_TIMEOUT`` -- broker_connection_timeout (s), ``FAULT_MAX_DELIVERIES``.

Tasks count their own executions in the Redis hash ``{fault}:runs`` (field = the key they
were given), and log ``KEY PID`` to the list ``{fault}:log``, through a plain redis client
(a cluster client on ``redis+cluster://``; the tag keeps both in one slot): a test
fixture may use redis directly.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from cluster_nodes import raw_client  # tests/ is this module's directory (cwd)
from redis import exceptions as redis_errors

from aioqueue import AioQueue

URL = os.environ.get("FAULT_REDIS_URL", "redis://127.0.0.1:6379/0")
RUNS_KEY = "{fault}:runs"
#: One "KEY PID" entry per execution, in order: which process ran what.
LOG_KEY = "{fault}:log"

app = AioQueue(
    "fault_app",
    broker=URL,
    backend=os.environ.get("FAULT_BACKEND_URL"),
    visibility_timeout=float(os.environ.get("FAULT_VT", "1.5")),
    shutdown_timeout=float(os.environ.get("FAULT_SHUTDOWN_TIMEOUT", "1.0")),
    broker_connection_timeout=float(os.environ.get("FAULT_CONNECTION_TIMEOUT", "2.0")),
    max_deliveries=int(os.environ.get("FAULT_MAX_DELIVERIES", "5")),
    delayed_poll_interval=0.05,
)

_client: Any = None


def _redis() -> Any:
    global _client
    if _client is None:
        _client = raw_client(URL)
    return _client


async def _count_run(key: str) -> int:
    """HINCRBY {fault}:runs KEY 1, retrying while Redis is away (the restart test)."""
    client = _redis()
    for _ in range(300):
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hincrby(RUNS_KEY, key, 1)
                pipe.rpush(LOG_KEY, f"{key} {os.getpid()}")
                count, _ = await pipe.execute()
            return int(count)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
            await asyncio.sleep(0.1)
    raise RuntimeError("could not record a run: Redis away for 30s")


@app.task(name="fault.record")
async def record(key: str, seconds: float = 0.0) -> str:
    """Count this execution, then sleep ``seconds``; returns ``key``."""
    await _count_run(key)
    if seconds:
        await asyncio.sleep(seconds)
    return key


@app.task(name="fault.first_slow")
async def first_slow(key: str, seconds: float) -> str:
    """Count this execution; the first one sleeps ``seconds``, any later one returns at once."""
    if await _count_run(key) == 1:
        await asyncio.sleep(seconds)
    return key


@app.task(name="fault.echo")
async def echo(value: Any) -> Any:
    """Return the argument (no bookkeeping)."""
    return value


# -- flow control (tests/test_flow_faults.py) ----------------------------------------------
SPANS_KEY = "fault:spans"


async def _note(*fields: object) -> None:
    await _redis().rpush(SPANS_KEY, "|".join(str(f) for f in fields))


@app.task(name="fault.limited", rate_limit=os.environ.get("FAULT_RATE", "50/s"))
async def limited(n: int) -> int:
    """Note when it started (epoch seconds), for the measured rate."""
    await _note("start", n, os.getpid(), time.time())
    return n


@app.task(name="fault.per_key", bind=True, max_concurrency=2,
          concurrency_key=lambda key, **_: key)
async def per_key(self: Any, key: str, seconds: float) -> str:
    """Note the span it ran in (start, then end), by task id and process."""
    await _note("start", self.request.id, key, os.getpid(), time.time())
    await asyncio.sleep(seconds)
    await _note("end", self.request.id, key, os.getpid(), time.time())
    return key


if os.environ.get("FAULT_KILL_AFTER_RESULTS"):
    # A worker that dies (SIGKILL, no clean-up) right after storing results on a result
    # backend apart from the broker, before acknowledging: the window split.py describes.
    import signal

    from aioqueue.broker.split import SplitBroker

    _settle = SplitBroker.settle

    async def _settle_then_die(self: SplitBroker, outcomes: Any) -> Any:
        from aioqueue.broker import Outcome

        stored = [Outcome(task_id=o.task_id, record=o.record, result_ttl_s=o.result_ttl_s,
                          reply_to=o.reply_to) for o in outcomes if o.record is not None]
        if stored:
            await self.results.settle(stored)
            os.kill(os.getpid(), signal.SIGKILL)
        return await _settle(self, outcomes)

    SplitBroker.settle = _settle_then_die  # type: ignore[method-assign]
