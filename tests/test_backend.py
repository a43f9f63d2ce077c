"""A result backend apart from the broker (``broker/split.py``): another database, another
server. The behavioural suite runs on the ``split`` layout too (``any_app`` in conftest);
these are what only this layout has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from aioqueue import AioQueue, State
from aioqueue.errors import ConfigurationError
from tests.conftest import TEST_SETTINGS
from tests.test_faults import CliWorkers, run_counts, wait_ready

STREAM = "aioqueue:{default}:stream"


def on_db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


async def test_results_live_on_the_backend_database_and_everything_works(redis_url: str) -> None:
    backend = on_db(redis_url, 1)
    app = AioQueue("tests", broker=redis_url, backend=backend, **TEST_SETTINGS)
    queues = aioredis.Redis.from_url(redis_url)
    results = aioredis.Redis.from_url(backend)
    release = anyio.Event()

    @app.task(name="t.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.wait")
    async def wait() -> None:
        await release.wait()

    try:
        async with app.worker(concurrency=4):
            handle = await add.delay(1, 2)
            with anyio.fail_after(5):
                assert await handle == 3
            # The record is on the backend's database, not the broker's.
            assert await results.exists(f"aioqueue:result:{handle.id}") == 1
            assert await queues.exists(f"aioqueue:result:{handle.id}") == 0
            # A bare id from anywhere reads it; forget deletes it there.
            assert await app.AsyncResult(handle.id).state() == State.SUCCESS
            await app.AsyncResult(handle.id).forget()
            assert await results.exists(f"aioqueue:result:{handle.id}") == 0
            # Revoke: the REVOKED record on the backend, the revocation on the broker.
            waiting = await wait.delay()
            await app.revoke(waiting.id, terminate=True)
            with anyio.fail_after(5):
                assert await waiting.state() == State.REVOKED
            assert await queues.zscore("aioqueue:revoked", waiting.id) is not None
            assert await results.exists("aioqueue:revoked") == 0
    finally:
        await app.close()
        await queues.aclose()
        await results.aclose()


async def test_memory_apart_from_redis_is_refused_by_name(redis_url: str) -> None:
    app = AioQueue("tests", broker="memory://", backend=redis_url)
    with pytest.raises(ConfigurationError, match="memory://"):
        _ = app.broker


@pytest.mark.slow
async def test_a_worker_killed_between_result_and_ack_reruns_and_loses_nothing(
    tmp_path: Path, redis_url: str, backend_url: str,
) -> None:
    """The one window of the split layout: the result stored, the message not yet
    acknowledged. The next worker runs the task again (at least once), nothing is lost."""
    workers = CliWorkers(tmp_path, redis_url, FAULT_BACKEND_URL=backend_url, FAULT_VT="1.0")
    producer = AioQueue("producer", broker=redis_url, backend=backend_url)

    @producer.task(name="fault.record")
    async def record(key: str, seconds: float = 0.0) -> str:
        raise NotImplementedError

    client: Any = aioredis.Redis.from_url(redis_url)
    try:
        doomed = workers.start("doomed", FAULT_KILL_AFTER_RESULTS="1")
        await wait_ready(workers, "doomed")
        handle = await record.delay("split-1")
        with anyio.fail_after(10):
            while doomed.poll() is None:
                await anyio.sleep(0.02)
        assert doomed.returncode == -9
        assert await handle.state() == State.SUCCESS  # stored on the backend...
        assert (await client.xpending(STREAM, "aioqueue"))["pending"] == 1  # ...not acked
        workers.start("survivor")
        with anyio.fail_after(15):
            while (await client.xpending(STREAM, "aioqueue"))["pending"] or await client.xlen(
                    STREAM):
                await anyio.sleep(0.05)
        assert (await run_counts(client))["split-1"] == 2  # ran again: at least once
        assert await handle.get(timeout=5) == "split-1"
    finally:
        workers.close()
        await producer.close()
        await client.aclose()
