"""Delivery guarantees with embedded workers on a real Redis: retries, delays, time limits,
revocation, bad input on the wire, poison messages, dead letters, serializers, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from aioqueue import AioQueue, State, TaskRevoked
from aioqueue.errors import DeadLettered, NotRegistered, TimeLimitExceeded
from aioqueue.message import TaskMessage, get_serializer

TESTS_DIR = Path(__file__).parent
STREAM = "aioqueue:{default}:stream"
DEAD = "aioqueue:{default}:dead"


def make_app(redis_url: str, **settings: Any) -> AioQueue:
    conf: dict[str, Any] = {
        "visibility_timeout": 2.0,
        "shutdown_timeout": 2.0,
        "broker_connection_timeout": 2.0,
        "delayed_poll_interval": 0.02,
    }
    conf.update(settings)
    return AioQueue("tests", broker=redis_url, **conf)


async def wait_for_state(handle: Any, state: State, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while await handle.state() is not state:
            await anyio.sleep(0.01)


# -- retries -------------------------------------------------------------------------------
class Flaky(Exception):
    """Importable, so the FAILURE comes back as this very type."""


async def test_retry_state_while_waiting_then_failure_with_original_exception(
    app: AioQueue,
) -> None:
    attempts: list[int] = []

    @app.task(bind=True)
    async def always_fails(self: Any) -> None:
        attempts.append(self.request.retries)
        try:
            raise Flaky(f"attempt {self.request.retries}")
        except Flaky as exc:
            raise self.retry(exc=exc, countdown=0.3, max_retries=2) from exc

    async with app.worker(concurrency=2):
        handle = await always_fails.delay()
        await wait_for_state(handle, State.RETRY)
        info = await handle.info()
        assert info.retries == 1
        assert isinstance(info.result, Flaky) and str(info.result) == "attempt 0"
        # Rescheduled atomically with the ack: nothing left in the stream, one delayed.
        assert (await app.broker.queue_sizes(["default"]))["default"] == (0, 1, 0)
        with anyio.fail_after(5), pytest.raises(Flaky, match="attempt 2"):
            await handle
    assert attempts == [0, 1, 2]
    info = await handle.info()
    assert info.state is State.FAILURE and info.retries == 2
    assert (await app.broker.queue_sizes(["default"]))["default"] == (0, 0, 0)


async def test_autoretry_for_with_backoff_and_backoff_max(app: AioQueue) -> None:
    seen: list[float] = []

    @app.task(autoretry_for=(ConnectionError,), retry_backoff=0.1, retry_backoff_max=0.25,
              retry_jitter=False, max_retries=3)
    async def shaky(succeed_on: int) -> int:
        seen.append(time.monotonic())
        if len(seen) < succeed_on:
            raise ConnectionError(f"try {len(seen)}")
        return len(seen)

    async with app.worker(concurrency=2):
        with anyio.fail_after(5):
            assert await (await shaky.delay(4)) == 4
        gaps = [b - a for a, b in itertools.pairwise(seen)]
        # 0.1 * 2**n capped at 0.25: 0.1, 0.2, 0.25 -- never earlier, and not much later.
        for gap, expected in zip(gaps, (0.1, 0.2, 0.25), strict=True):
            assert expected <= gap < expected + 0.5, gaps
        seen.clear()
        handle = await shaky.delay(99)
        with anyio.fail_after(5), pytest.raises(ConnectionError, match="try 4"):
            await handle
    assert len(seen) == 4  # the first run and max_retries=3 retries
    assert (await handle.info()).retries == 3


async def test_unbound_task_retry(app: AioQueue) -> None:
    runs: list[int] = []

    @app.task(max_retries=1, default_retry_delay=0.05)
    async def unbound() -> None:
        runs.append(1)
        raise unbound.retry(exc=KeyError("missing"))

    async with app.worker(concurrency=2):
        handle = await unbound.delay()
        with anyio.fail_after(5), pytest.raises(KeyError, match="missing"):
            await handle
    assert len(runs) == 2
    assert (await handle.state()) is State.FAILURE


async def test_retry_without_exception_past_max_retries(app: AioQueue) -> None:
    from aioqueue.errors import MaxRetriesExceeded

    @app.task(bind=True, max_retries=1)
    async def gives_up(self: Any) -> None:
        raise self.retry(countdown=0.01)

    async with app.worker(concurrency=2):
        handle = await gives_up.delay()
        with anyio.fail_after(5), pytest.raises(MaxRetriesExceeded):
            await handle


# -- delays and expiry ---------------------------------------------------------------------
# -- time limits ---------------------------------------------------------------------------
async def test_time_limit_of_a_sync_task_frees_its_slot(app: AioQueue) -> None:
    release = threading.Event()
    thread_done = threading.Event()

    @app.task(time_limit=0.2)
    def stuck() -> str:
        release.wait(10)  # a thread cannot be killed: it runs on after the limit
        thread_done.set()
        return "late"

    @app.task
    async def quick() -> str:
        return "quick"

    try:
        async with app.worker(concurrency=1):
            with anyio.fail_after(5):
                with pytest.raises(TimeLimitExceeded, match="slot was freed"):
                    await (await stuck.delay())
                # Concurrency 1: this only runs because the abandoned thread's slot was freed.
                assert await (await quick.delay()) == "quick"
            assert not thread_done.is_set()  # the abandoned thread is still blocked
    finally:
        release.set()
    with anyio.fail_after(5):
        while not thread_done.is_set():
            await anyio.sleep(0.01)


# -- revocation ----------------------------------------------------------------------------
async def test_revoke_pending_task_never_runs(app: AioQueue) -> None:
    ran: list[str] = []

    @app.task
    async def job(tag: str) -> str:
        ran.append(tag)
        return tag

    before = await job.delay("revoked-before-start")
    await before.revoke()
    async with app.worker(concurrency=2):
        delayed = await job.apply_async(("revoked-while-delayed",), countdown=0.3)
        await app.revoke(delayed.id)
        with anyio.fail_after(5):
            for h in (before, delayed):
                with pytest.raises(TaskRevoked):
                    await h
            assert await (await job.delay("ok")) == "ok"
            # Both revoked messages were consumed (not left behind) without running.
            while (await app.broker.queue_sizes(["default"]))["default"] != (0, 0, 0):
                await anyio.sleep(0.02)
    assert ran == ["ok"]
    assert await before.state() is State.REVOKED
    assert await delayed.state() is State.REVOKED


async def test_revoke_terminate_cancels_a_running_task_on_another_worker(
    app: AioQueue, redis_url: str
) -> None:
    inside = anyio.Event()
    cancelled = anyio.Event()

    async def forever() -> None:
        inside.set()
        try:
            await anyio.sleep(60)
        except BaseException:
            cancelled.set()
            raise

    producer_task = app.task(name="t.forever")(forever)
    other = make_app(redis_url)
    other.task(name="t.forever")(forever)
    try:
        async with other.worker(concurrency=2, name="the-other-worker") as worker:
            handle = await producer_task.delay()
            with anyio.fail_after(5):
                await inside.wait()
                await handle.revoke(terminate=True)
                with pytest.raises(TaskRevoked):
                    await handle
                await cancelled.wait()
                while worker.running:
                    await anyio.sleep(0.01)
                # The worker's own record: terminated where it ran.
                while (await handle.info()).worker != "the-other-worker":
                    await anyio.sleep(0.01)
            info = await handle.info()
            assert info.state is State.REVOKED
            assert "terminated" in str(info.result)
    finally:
        await other.close()


# -- bad input on the wire -----------------------------------------------------------------
UNPICKLED: list[str] = []


def _mark_unpickled(tag: str) -> None:
    UNPICKLED.append(tag)


class _Evil:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_mark_unpickled, ("code ran",))


async def test_bad_wire_input_is_dead_lettered_and_the_worker_keeps_serving(
    app: AioQueue, raw: Any
) -> None:
    @app.task
    async def good(x: int) -> int:
        return x + 1

    unknown_id = "unknown-task-id"
    unknown = msgspec.msgpack.encode(TaskMessage(id=unknown_id, task="no.such.task"))
    pickled = get_serializer("pickle").encode(TaskMessage(id="pickled-id", task=good.name))
    await app.broker.ensure_queues(["default"])
    for payload in (b"\x00\xffgarbage\xc1", unknown, pickled, pickle.dumps(_Evil())):
        await raw.xadd(STREAM, {"m": payload})
    await raw.xadd(STREAM, {"x": b"no m field"})
    async with app.worker(concurrency=4):
        with anyio.fail_after(5):
            assert await (await good.delay(1)) == 2
            while await raw.xlen(DEAD) < 5:
                await anyio.sleep(0.02)
            with pytest.raises(NotRegistered, match=r"no\.such\.task"):
                await app.AsyncResult(unknown_id).get(timeout=5)
            assert await (await good.delay(2)) == 3
    assert UNPICKLED == []  # a msgpack worker never unpickles
    assert await app.AsyncResult("pickled-id").state() is State.PENDING  # id never decoded
    letters = await app.broker.dead_letters("default", 10)
    reasons = [letter.reason for letter in letters]
    assert len(reasons) == 5
    assert sum(r.startswith("undecodable") for r in reasons) == 4, reasons
    assert "not registered: no.such.task" in reasons
    assert (await app.broker.queue_sizes(["default"]))["default"] == (0, 0, 5)


async def test_max_deliveries_dead_letters_a_poison_message(app: AioQueue, raw: Any) -> None:
    ran: list[str] = []

    @app.task(name="t.poison")
    async def poison(tag: str) -> str:
        ran.append(tag)
        return tag

    await app.broker.ensure_queues(["default"])
    serializer = app.serializer
    ids = {}
    for tag in ("at-limit", "over-limit"):
        payload = serializer.encode(TaskMessage(id=f"id-{tag}", task="t.poison", args=(tag,)))
        ids[tag] = (await raw.xadd(STREAM, {"m": payload})).decode()
    # A consumer that takes the messages and dies without acking, again and again: each
    # XCLAIM counts a delivery. RETRYCOUNT/IDLE set the count and age in one step.
    await raw.xreadgroup("aioqueue", "ghost", {STREAM: ">"}, count=10)
    assert await app.broker.dead_letters("default", 10) == []
    await raw.execute_command("XCLAIM", STREAM, "aioqueue", "ghost", 0, ids["at-limit"],
                              "IDLE", 60_000, "RETRYCOUNT", 4)
    await raw.execute_command("XCLAIM", STREAM, "aioqueue", "ghost", 0, ids["over-limit"],
                              "IDLE", 60_000, "RETRYCOUNT", 5)
    async with app.worker(concurrency=2):
        with anyio.fail_after(5):
            # Reclaimed as the 5th delivery: max_deliveries=5 still allows it.
            assert await app.AsyncResult("id-at-limit").get(timeout=5) == "at-limit"
            with pytest.raises(DeadLettered, match="delivered 6 times"):
                await app.AsyncResult("id-over-limit").get(timeout=5)
    assert ran == ["at-limit"]
    letters = await app.broker.dead_letters("default", 10)
    assert len(letters) == 1 and letters[0].reason.startswith("max_deliveries")
    assert (await app.broker.queue_sizes(["default"]))["default"] == (0, 0, 1)


# -- dead letters: list / requeue / purge --------------------------------------------------
async def test_dead_letters_list_requeue_purge_with_the_broker(app: AioQueue, raw: Any) -> None:
    await app.broker.ensure_queues(["default"])
    late = msgspec.msgpack.encode(TaskMessage(id="late-id", task="t.registered_later",
                                              args=(20,)))
    await raw.xadd(STREAM, {"m": late})
    await raw.xadd(STREAM, {"m": b"\xc1junk"})
    async with app.worker(concurrency=2):
        with anyio.fail_after(5):
            while len(await app.broker.dead_letters("default", 10)) < 2:
                await anyio.sleep(0.02)
        letters = await app.broker.dead_letters("default", 10)
        assert [letter.payload for letter in letters] == [late, b"\xc1junk"]
        assert letters[0].reason == "not registered: t.registered_later"
        assert letters[0].failed_at > 0

        @app.task(name="t.registered_later")
        async def later(x: int) -> int:
            return x * 2

        assert await app.broker.requeue_dead("default", [letters[0].entry_id]) == 1
        with anyio.fail_after(5):
            while await app.AsyncResult("late-id").state() is not State.SUCCESS:
                await anyio.sleep(0.02)
        assert await app.AsyncResult("late-id").get(timeout=1) == 40
        assert await app.broker.requeue_dead("default", None) == 1  # the junk, dead again
        with anyio.fail_after(5):
            while len(await app.broker.dead_letters("default", 10)) < 1:
                await anyio.sleep(0.02)
    assert await app.broker.purge_dead("default") == 1
    assert await app.broker.dead_letters("default", 10) == []


async def _cli(redis_url: str, *args: str) -> str:
    env = {**os.environ, "FAULT_REDIS_URL": redis_url}
    done = await anyio.run_process([sys.executable, "-m", "aioqueue", *args],
                                   cwd=TESTS_DIR, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return str(done.stdout.decode())


async def test_dead_letters_with_the_cli(redis_url: str, raw: Any) -> None:
    fault = make_app(redis_url)

    @fault.task(name="fault.echo")
    async def echo(value: Any) -> Any:
        return value

    try:
        await fault.broker.ensure_queues(["default"])
        bad = msgspec.msgpack.encode(TaskMessage(id="cli-id", task="fault.nope"))
        await raw.xadd(STREAM, {"m": bad})
        await raw.xadd(STREAM, {"m": b"\xc1"})
        async with fault.worker(concurrency=2):
            with anyio.fail_after(5):
                while await raw.xlen(DEAD) < 2:
                    await anyio.sleep(0.02)
        out = await _cli(redis_url, "dead", "list", "fault_app:app")
        assert "fault.nope[cli-id]" in out and "not registered: fault.nope" in out
        assert "<undecodable 1 bytes>" in out
        assert "2 dead letter(s) shown for queue default" in out
        out = await _cli(redis_url, "dead", "requeue", "fault_app:app")
        assert "requeued 2 message(s) to queue default" in out
        assert (await fault.broker.queue_sizes(["default"]))["default"] == (2, 0, 0)
        async with fault.worker(concurrency=2):  # both go straight back to the dead letters
            with anyio.fail_after(5):
                while await raw.xlen(DEAD) < 2:
                    await anyio.sleep(0.02)
        out = await _cli(redis_url, "dead", "purge", "fault_app:app")
        assert "purged 2 dead letter(s) from queue default" in out
        assert await raw.xlen(DEAD) == 0
    finally:
        await fault.close()


# -- serializers ---------------------------------------------------------------------------
async def test_json_serializer_round_trip(redis_url: str, raw: Any) -> None:
    app = make_app(redis_url, task_serializer="json")

    @app.task
    async def shape(data: dict[str, Any], n: float) -> dict[str, Any]:
        return {"keys": sorted(data), "n": n * 2, "nested": [data, None, True]}

    try:
        handle = await shape.delay({"b": [1, 2], "a": "x"}, 1.5)
        (_, fields), = await raw.xrange(STREAM)
        assert fields[b"m"].startswith(b"{")  # JSON on the wire, not msgpack
        assert msgspec.json.decode(fields[b"m"])["args"][1] == 1.5
        async with app.worker(concurrency=2):
            with anyio.fail_after(5):
                got = await handle
        assert got == {"keys": ["a", "b"], "n": 3.0,
                       "nested": [{"b": [1, 2], "a": "x"}, None, True]}
        stored = await raw.get(f"aioqueue:result:{handle.id}")
        assert msgspec.json.decode(stored)["state"] == "SUCCESS"
    finally:
        await app.close()


# -- graceful shutdown ---------------------------------------------------------------------
async def test_graceful_shutdown_hands_back_tasks_past_shutdown_timeout(redis_url: str) -> None:
    # A long visibility timeout: only the hand-back (not a reclaim) can explain a fast rerun.
    first = make_app(redis_url, shutdown_timeout=0.3, visibility_timeout=30.0)
    second = make_app(redis_url, visibility_timeout=30.0)
    started: list[str] = []
    all_started = anyio.Event()

    async def slow(i: int) -> int:
        started.append(str(i))
        if len(started) == 5:
            all_started.set()
        await asyncio.sleep(1.0)
        return i

    @first.task(name="t.quick")
    async def quick() -> str:
        return "done in time"

    slow_task = first.task(name="t.slow")(slow)
    second.task(name="t.slow")(slow)
    try:
        async with first.worker(concurrency=10, name="first") as worker:
            handles = await slow_task.delay_many([(i,) for i in range(5)])
            quick_handle = await quick.delay()
            with anyio.fail_after(5):
                await all_started.wait()
                assert await quick_handle == "done in time"
            stop_at = time.monotonic()
        stopped_in = time.monotonic() - stop_at
        assert stopped_in < 0.3 + 1.0, stopped_in
        assert worker.processed == 6
        async with second.worker(concurrency=10, name="second"):
            with anyio.fail_after(3):
                assert await asyncio.gather(*handles) == list(range(5))
        assert time.monotonic() - stop_at < 3.0
        for h in handles:
            assert (await h.info()).worker == "second"
        assert len(started) == 10  # each ran on both: interrupted once, then completed
    finally:
        await first.close()
        await second.close()


# -- Redis unreachable ---------------------------------------------------------------------
async def test_delay_raises_broker_connection_error_instead_of_hanging() -> None:
    from aioqueue import BrokerConnectionError
    from aioqueue.testing import free_port

    port = free_port()  # nothing listens there
    app = AioQueue("tests", broker=f"redis://:secret@127.0.0.1:{port}/0",
                   broker_connection_timeout=0.5)

    @app.task
    async def nowhere() -> None:
        return None

    try:
        start = time.monotonic()
        with anyio.fail_after(5), pytest.raises(BrokerConnectionError) as caught:
            await nowhere.delay()
        assert time.monotonic() - start < 0.5 + 0.5
        assert f"127.0.0.1:{port}" in str(caught.value)
        assert "secret" not in str(caught.value)  # the URL is named without its password
    finally:
        await app.close()
