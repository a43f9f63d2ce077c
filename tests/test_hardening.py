"""The worker's failure paths: settling, heartbeats, revocations, consumers, threads,
settings. Findings of the 2026-11-22 correctness review (B3, B9, B16-B20, S1, S3, S8, S12),
each shown against a real Redis and, where the behaviour is shared, the memory broker too."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import anyio
import msgspec
import pytest

from aioqueue import AioQueue, ConfigurationError, State, TaskRevoked
from aioqueue.broker import Delivery, Enqueue, Outcome
from aioqueue.message import TaskMessage
from aioqueue.testing import RedisServer

STREAM = "aioqueue:{default}:stream"
DELAYED = "aioqueue:{default}:delayed"


def settings(**overrides: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "visibility_timeout": 2.0,
        "shutdown_timeout": 2.0,
        "broker_connection_timeout": 2.0,
        "delayed_poll_interval": 0.02,
    }
    conf.update(overrides)
    return conf


@pytest.fixture
def both(any_app: AioQueue) -> AioQueue:
    """An app on each broker in turn: behaviour they share is tested once, against both."""
    return any_app


async def take_one(app: AioQueue, consumer: str) -> Delivery:
    """Deliver one message of ``default`` to ``consumer`` (as a worker's fetch would)."""
    await app.broker.ensure_queues(["default"])
    with anyio.fail_after(5):
        while True:
            got = await app.broker.fetch(["default"], consumer, 1, 0.1)
            if got:
                return got[0]


# -- B3: one bad message cannot stop settling ---------------------------------------------
async def test_a_poison_reply_to_never_reaches_a_foreign_key_and_settling_goes_on(
    app: AioQueue, raw: Any
) -> None:
    @app.task
    async def echo(x: int) -> int:
        return x

    # Inside the app's reply namespace but not a list, and a key outside it altogether.
    wrong_type = "aioqueue:reply:" + "ab" * 16
    await raw.set(wrong_type, "a string")
    await raw.set("victim", "untouched")
    await app.broker.ensure_queues(["default"])
    for i, reply_to in enumerate((wrong_type, "victim", "aioqueue:{default}:stream")):
        msg = TaskMessage(id=f"poison-{i}", task=echo.name, args=(i,), reply_to=reply_to)
        await raw.xadd(STREAM, {"m": msgspec.msgpack.encode(msg)})
    async with app.worker(concurrency=10):
        with anyio.fail_after(10):
            # Healthy tasks around the poison ones settle, batch after batch.
            for _ in range(3):
                handles = await echo.delay_many([(n,) for n in range(50)])
                assert await asyncio.gather(*handles) == list(range(50))
            for i in range(3):
                assert await app.AsyncResult(f"poison-{i}").get(timeout=5) == i
    assert await raw.get("victim") == b"untouched"
    assert await raw.type(wrong_type) == b"string"
    assert await raw.xpending(STREAM, "aioqueue") == {
        "pending": 0, "min": None, "max": None, "consumers": []}


async def test_an_outcome_redis_refuses_fails_alone_and_is_dead_lettered(
    app: AioQueue, raw: Any
) -> None:
    @app.task(bind=True)
    async def retries(self: Any) -> None:
        raise self.retry(countdown=30)

    @app.task
    async def echo(x: int) -> int:
        return x

    await raw.set(DELAYED, "not a sorted set")  # the retry's ZADD gets WRONGTYPE
    async with app.worker(concurrency=20):
        with anyio.fail_after(10):
            doomed = await retries.delay()
            handles = await echo.delay_many([(n,) for n in range(40)])
            assert await asyncio.gather(*handles) == list(range(40))
            info = None
            while info is None or info.state is not State.FAILURE:
                info = await doomed.info()
                await anyio.sleep(0.02)
    assert "could not be stored" in str(info.result) and "WRONGTYPE" in str(info.result)
    letters = await app.broker.dead_letters("default", 10)
    assert [letter.reason.startswith("unsettleable: WRONGTYPE") for letter in letters] == [True]
    assert (await raw.xpending(STREAM, "aioqueue"))["pending"] == 0


async def test_a_replayed_settle_hands_back_and_dead_letters_only_once(
    both: AioQueue,
) -> None:
    app = both
    for tag in ("hand-back", "dead"):
        await app.broker.enqueue([Enqueue("default", tag.encode())])
    back, dead = await take_one(app, "c1"), await take_one(app, "c1")
    batch = [
        Outcome(delivery=back, requeue=Enqueue("default", back.payload)),
        Outcome(delivery=dead, dead_reason="poison"),
    ]
    for _ in range(3):  # as after a reply lost on the way back: the same batch again
        assert await app.broker.settle(batch) == []
    ready, delayed, dead_count = (await app.broker.queue_sizes(["default"]))["default"]
    assert (ready, delayed, dead_count) == (1, 0, 1)


async def test_settle_batches_are_capped(app: AioQueue) -> None:
    worker = app.worker(concurrency=1)
    big = b"x" * (worker.SETTLE_BATCH_BYTES // 3 + 1)
    worker._outcomes = [Outcome(task_id=str(i), record=big) for i in range(5)]
    assert len(worker._next_batch()) == 3  # the one that crosses the byte cap still goes
    worker._outcomes = [Outcome(task_id=str(i), record=b"r") for i in range(1200)]
    assert len(worker._next_batch()) == worker.SETTLE_BATCH
    assert len(worker._outcomes) == 1200 - worker.SETTLE_BATCH


# -- B9, S3: liveness --------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["wrongtype", "oom"])
async def test_heartbeats_go_on_while_moving_due_tasks_fails(
    redis_url: str, raw: Any, fault: str
) -> None:
    conf = settings(visibility_timeout=0.6)
    runs: list[str] = []
    started = anyio.Event()

    def build(name: str) -> AioQueue:
        application = AioQueue("tests", broker=redis_url, **conf)

        @application.task(name="t.long")
        async def long() -> None:
            runs.append(name)
            started.set()
            await anyio.sleep(2.5)  # four visibility timeouts

        return application

    a, b = build("a"), build("b")
    try:
        handle = await a.tasks["t.long"].delay()
        async with a.worker(concurrency=1, name="a"):
            with anyio.fail_after(5):
                await started.wait()
            try:
                async with b.worker(concurrency=1, name="b"):
                    # A due delayed message that can never be moved: move_due fails on
                    # every pass, of both workers.
                    if fault == "wrongtype":
                        await raw.delete(DELAYED)
                        await raw.set(DELAYED, "clobbered")
                    else:
                        await raw.zadd(DELAYED, {b"due": 1.0})
                        await raw.config_set("maxmemory", "1")
                        await raw.config_set("maxmemory-policy", "noeviction")
                    await anyio.sleep(2.0)  # an observation window: b must not take it
            finally:
                await raw.config_set("maxmemory", "0")
                await raw.delete(DELAYED)
            with anyio.fail_after(10):
                await handle
        assert runs == ["a"]
    finally:
        await a.close()
        await b.close()


async def test_a_heartbeat_never_claims_back_what_another_worker_took(both: AioQueue) -> None:
    app = both
    await app.broker.enqueue([Enqueue("default", b"m")])
    mine = await take_one(app, "slow")
    with anyio.fail_after(5):
        while not (taken := await app.broker.reclaim(["default"], "fast", 0.0, 10)):
            await anyio.sleep(0.01)
    assert [d.message_id for d in taken] == [mine.message_id]
    lost = await app.broker.keep_claimed("slow", [mine])
    assert [d.message_id for d in lost] == [mine.message_id]
    # Still the other worker's: it can heartbeat it; the first worker cannot take it back.
    assert await app.broker.keep_claimed("fast", taken) == []


# -- S8: revoke never overwrites a finished task ------------------------------------------
async def test_revoke_writes_its_record_only_over_the_record_it_read(both: AioQueue) -> None:
    app = both
    await app.broker.set_result("t1", b"SUCCESS-record", 60)
    wrote = await app.broker.revoke("t1", time.time() + 60, b"", record=b"REVOKED-record",
                                    expected=None, ttl_s=60)
    assert wrote is False
    assert await app.broker.get_result("t1") == b"SUCCESS-record"
    assert "t1" not in (await app.broker.revocations(time.time())).revoked
    assert await app.broker.revoke("t1", time.time() + 60, b"", record=b"REVOKED-record",
                                   expected=b"SUCCESS-record", ttl_s=60)
    assert await app.broker.get_result("t1") == b"REVOKED-record"


# -- B16, B17: revocations ----------------------------------------------------------------
async def test_terminate_survives_a_lost_broadcast(app: AioQueue, raw: Any) -> None:
    started = anyio.Event()

    @app.task
    async def sleeper() -> None:
        started.set()
        await anyio.sleep(30)

    async with app.worker(concurrency=2) as worker:
        handle = await sleeper.delay()
        with anyio.fail_after(5):
            await started.wait()
        # The broadcast is published while nobody listens (the worker's subscription is
        # gone, as in a reconnect): only the durable set can carry it.
        worker._subscribed = anyio.Event()
        for client in (await raw.client_list()):
            if client.get("flags") == "P" or "subscribe" in client.get("cmd", ""):
                await raw.client_kill_filter(_id=client["id"])
        await app.revoke(handle.id, terminate=True)
        with anyio.fail_after(5):
            while not any(r.task_id == handle.id and r.cancel_reason for r in
                          worker.running.values()) and worker.running:
                await anyio.sleep(0.02)
            with pytest.raises(TaskRevoked):
                await handle


async def test_expired_revocations_leave_the_worker(both: AioQueue) -> None:
    app = both
    app.conf.update(result_expires=0.5)
    ran: list[str] = []

    @app.task
    async def report(day: str) -> str:
        ran.append(day)
        return day

    async with app.worker(concurrency=1) as worker:
        await app.revoke("report-day")
        with anyio.fail_after(5):
            while "report-day" not in worker.revoked:
                await anyio.sleep(0.02)
            while "report-day" in worker.revoked:  # expired: pruned at the next refresh
                await anyio.sleep(0.05)
            handle = await report.apply_async(("day",), task_id="report-day")
            assert await handle == "day"
    assert ran == ["day"]


# -- B18: consumers of dead workers ----------------------------------------------------------
async def test_consumers_of_dead_workers_are_removed_once_they_hold_nothing(
    app: AioQueue, raw: Any
) -> None:
    await app.broker.enqueue([Enqueue("default", b"held")])
    held = await take_one(app, "ghost-holding")
    for ghost in ("ghost-1", "ghost-2"):
        await raw.xgroup_createconsumer(STREAM, "aioqueue", ghost)
    removed = await app.broker.prune_consumers(["default"], "me", 0.0)
    assert removed == 2
    names = {c["name"] for c in await raw.xinfo_consumers(STREAM, "aioqueue")}
    assert names == {b"ghost-holding"}  # it still holds a message: never dropped
    assert (await raw.xpending(STREAM, "aioqueue"))["pending"] == 1
    assert held.payload == b"held"


# -- B19: abandoned threads stay within the limit ----------------------------------------
async def test_timed_out_sync_tasks_never_exceed_the_thread_limit(both: AioQueue) -> None:
    app = both
    lock = threading.Lock()
    now_running = peak = 0

    @app.task(time_limit=0.05)
    def stuck() -> None:
        nonlocal now_running, peak
        with lock:
            now_running += 1
            peak = max(peak, now_running)
        time.sleep(0.3)
        with lock:
            now_running -= 1

    async with app.worker(concurrency=3) as worker:
        worker._thread_limiter.total_tokens = 2
        handles = await stuck.delay_many([() for _ in range(10)])
        with anyio.fail_after(20):
            for handle in handles:
                assert await handle.get(propagate=False) is not None
    assert 1 <= peak <= 2


# -- B20: no setting, and no unexpected error, kills a worker ------------------------------
@pytest.mark.parametrize("name", ["result_expires", "visibility_timeout", "task_time_limit"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1])
def test_settings_must_be_finite_positive_seconds(name: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=name):
        AioQueue("x", broker="memory://", **{name: value})


async def test_an_unexpected_error_in_an_internal_loop_is_logged_and_the_loop_goes_on(
    both: AioQueue, caplog: pytest.LogCaptureFixture
) -> None:
    app = both

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    real_move_due = app.broker.move_due
    failures = 0

    async def buggy_move_due(queues: Any, now: float) -> int:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise RuntimeError("a bug in maintenance")
        return await real_move_due(queues, now)

    app.broker.move_due = buggy_move_due  # type: ignore[method-assign]
    async with app.worker(concurrency=2):
        with anyio.fail_after(10):
            handle = await add.apply_async((1, 2), countdown=0.1)  # needs move_due to work
            assert await handle == 3
    assert failures == 3
    assert "a bug in maintenance" in caplog.text


def test_settings_repr_hides_passwords() -> None:
    app = AioQueue("x", broker="redis://:s3cret@h:6379/0?password=s3cret")
    assert "s3cret" not in repr(app.conf)
    assert "s3cret" not in repr(app)


# -- S12: requeueing every dead letter -------------------------------------------------------
async def test_requeue_moves_every_dead_letter_past_one_batch(app: AioQueue, raw: Any) -> None:
    total = 10_050
    async with raw.pipeline(transaction=False) as pipe:
        for i in range(total):
            pipe.xadd("aioqueue:{default}:dead", {"m": f"m{i}", "reason": "r"})
        await pipe.execute()
    assert await app.broker.requeue_dead("default", None) == total
    assert (await app.broker.queue_sizes(["default"]))["default"] == (total, 0, 0)


# -- B15: a graceful stop during an outage ends ------------------------------------------
@pytest.mark.slow
async def test_a_graceful_stop_during_an_outage_ends_in_bounded_time() -> None:
    with RedisServer() as server:
        app = AioQueue("tests", broker=server.url, **settings(
            broker_connection_timeout=1.0, shutdown_timeout=1.0))
        started = anyio.Event()
        release = anyio.Event()

        @app.task
        async def work() -> None:
            started.set()
            await release.wait()

        try:
            await work.delay()
            worker = app.worker(concurrency=1)
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                with anyio.fail_after(5):
                    await started.wait()
                server.stop(kill=True)
                release.set()  # it finishes, but its result cannot be stored
                began = time.monotonic()
                worker.stop()
                # shutdown_timeout + the bounded settle wait (5 s) + slack.
                with anyio.fail_after(1.0 + 5.0 + 3.0):
                    await worker._stopped.wait()
            assert time.monotonic() - began >= 1.0  # it did try to store the result
        finally:
            await app.close()


# -- B11: nobody listening, nothing piles up -----------------------------------------------
async def test_reply_lists_are_capped_on_both_brokers(both: AioQueue) -> None:
    app = both
    app.broker.reply_cap = 1_000  # type: ignore[attr-defined]  # the real cap, made small
    reply_to = app.keys.reply("cd" * 16)
    outcomes = [Outcome(task_id=f"t{i}", record=b"r", reply_to=reply_to) for i in range(1_050)]
    for start in range(0, len(outcomes), 500):
        assert await app.broker.settle(outcomes[start:start + 500]) == []
    popped = 0
    while replies := await app.broker.wait_replies(reply_to, 0.01):
        popped += len(replies)
    assert popped == 1_000


async def test_a_producer_far_behind_its_replies_loses_none(both: AioQueue) -> None:
    """A producer that sent 20,000 tasks in one go falls that far behind its reply list; at
    the old cap of 10,000 the trim dropped half of them and every dropped handle waited a
    second for its fallback re-read."""
    reply_to = both.keys.reply("ef" * 16)
    outcomes = [Outcome(task_id=f"t{i}", record=b"r", reply_to=reply_to) for i in range(20_000)]
    for start in range(0, len(outcomes), 500):
        assert await both.broker.settle(outcomes[start:start + 500]) == []
    popped = 0
    while replies := await both.broker.wait_replies(reply_to, 0.01):
        popped += len(replies)
    assert popped == 20_000


async def test_apply_async_can_ask_for_no_reply(app: AioQueue, raw: Any) -> None:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async with app.worker(concurrency=2):
        handle = await add.apply_async((1, 2), reply=False)
        with anyio.fail_after(5):
            assert await handle == 3  # by polling the stored result
    assert await raw.keys("aioqueue:reply:*") == []


def test_only_keys_of_the_apps_own_reply_shape_are_reply_keys() -> None:
    from aioqueue._keys import Keys

    ours, theirs = Keys("ours"), Keys("theirs")
    key = ours.reply("ab" * 16)
    assert ours.is_reply(key) and ours.is_reply(key)  # the second from the remembered set
    assert not theirs.is_reply(key)  # remembered for one prefix only
    for bad in (key[:-1], key + "0", key.upper(), ours.reply("g" * 32), ours.result("x"),
                ours.reply("ab" * 16 + "\n")):
        assert not ours.is_reply(bad), bad
