"""Brokers that cannot disagree: one behavioural suite, every test run on both brokers.

Each test takes ``any_app`` (see ``conftest.py``), so it runs once on a real Redis and once
on ``memory://``, and observes only what users can observe: tasks, handles, embedded or
burst workers, and the broker's queue-management calls. A test that passes on one broker
and fails on the other is a broker bug, not a test to skip.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from aioqueue import AioQueue, State, TaskRevoked
from aioqueue.errors import DeadLettered, NotRegistered, TimeLimitExceeded

DEFAULT = ["default"]


class CustomError(Exception):
    """Importable from this module, so a FAILURE comes back as this very type."""


class Flaky(Exception):
    """Importable, for retries that carry their exception."""


async def eventually(check: Any, timeout_s: float = 5.0) -> None:
    """Poll an async predicate until it holds (for state that no event announces)."""
    with anyio.fail_after(timeout_s):
        while not await check():
            await anyio.sleep(0.01)


async def drain(app: AioQueue, queues: list[str] | None = None, concurrency: int = 4) -> None:
    """Run a burst worker until the queues are empty and every outcome is stored."""
    with anyio.fail_after(10):
        await app.worker(concurrency=concurrency, queues=queues or DEFAULT, burst=True).run()


# -- round trip and failure ----------------------------------------------------------------
async def test_round_trip_with_delay_apply_async_send_task_and_handle_by_id(
    any_app: AioQueue,
) -> None:
    @any_app.task(name="t.add")
    async def add(x: int, y: int) -> int:
        return x + y

    before = datetime.now(UTC)
    async with any_app.worker(concurrency=4, name="w-round-trip"):
        handle = await add.delay(1, 2)
        explicit = await add.apply_async(args=(2,), kwargs={"y": 5}, task_id="my-id-1")
        by_name = await any_app.send_task("t.add", args=(6, 7))
        with anyio.fail_after(5):
            assert await handle == 3
            assert await handle.get(timeout=5) == 3  # awaited again: same value
            assert explicit.id == "my-id-1"
            assert await explicit == 7
            # A bare-id handle polls the stored record instead of waiting for a reply.
            assert await any_app.AsyncResult(by_name.id).get(timeout=5) == 13
    after = datetime.now(UTC)
    assert await handle.state() is State.SUCCESS
    assert await handle.ready()
    assert await handle.successful()
    assert not await handle.failed()
    info = await handle.info()
    assert info.state is State.SUCCESS and info.result == 3
    assert info.id == handle.id and info.task == "t.add"
    assert info.retries == 0 and info.traceback is None
    assert info.worker == "w-round-trip"
    assert info.date_done is not None and info.date_done.tzinfo is not None
    assert before <= info.date_done <= after


async def test_failure_reraises_the_task_exception_type(any_app: AioQueue) -> None:
    @any_app.task
    async def fails(reason: str) -> None:
        raise CustomError(reason)

    async with any_app.worker(concurrency=2, name="w-failure"):
        handle = await fails.delay("broken")
        with anyio.fail_after(5):
            with pytest.raises(CustomError, match="broken") as caught:
                await handle
            returned = await handle.get(propagate=False)
    assert any("raise CustomError(reason)" in note for note in caught.value.__notes__)
    assert isinstance(returned, CustomError) and str(returned) == "broken"
    assert await handle.failed()
    assert await handle.ready()
    assert not await handle.successful()
    info = await handle.info()
    assert info.state is State.FAILURE
    assert isinstance(info.result, CustomError)
    assert info.traceback is not None and "raise CustomError(reason)" in info.traceback
    assert info.worker == "w-failure"
    assert info.date_done is not None
    assert info.retries == 0


# -- states --------------------------------------------------------------------------------
async def test_pending_until_a_worker_runs_it(any_app: AioQueue) -> None:
    @any_app.task
    async def idle() -> str:
        return "ran"

    handle = await idle.delay()
    assert await handle.state() is State.PENDING
    assert not await handle.ready()
    info = await handle.info()
    assert info.state is State.PENDING and info.date_done is None and info.worker is None
    with pytest.raises(TimeoutError):
        await handle.get(timeout=0.2)
    assert (await any_app.broker.queue_sizes(DEFAULT))["default"] == (1, 0, 0)
    await drain(any_app)
    assert await handle.state() is State.SUCCESS
    with anyio.fail_after(5):
        assert await handle == "ran"
    assert (await any_app.broker.queue_sizes(DEFAULT))["default"] == (0, 0, 0)


async def test_track_started_records_started_state(any_app: AioQueue) -> None:
    inside = anyio.Event()
    proceed = anyio.Event()

    @any_app.task(track_started=True)
    async def slow() -> str:
        inside.set()
        await proceed.wait()
        return "done"

    @any_app.task
    async def untracked() -> None:
        inside.set()
        await proceed.wait()

    async with any_app.worker(concurrency=2, name="w-started"):
        handle = await slow.delay()
        with anyio.fail_after(5):
            await inside.wait()
            info = await handle.info()
            assert info.state is State.STARTED
            assert info.worker == "w-started"
            assert not await handle.ready()
            proceed.set()
            assert await handle == "done"
        inside, proceed = anyio.Event(), anyio.Event()
        quiet = await untracked.delay()
        with anyio.fail_after(5):
            await inside.wait()
            assert await quiet.state() is State.PENDING  # without track_started: no STARTED
            proceed.set()
            await quiet
    assert await handle.state() is State.SUCCESS


async def test_one_slot_runs_a_queue_in_the_order_sent(any_app: AioQueue) -> None:
    order: list[int] = []

    @any_app.task
    async def record(i: int) -> None:
        order.append(i)

    await record.delay_many([(i,) for i in range(10)])
    await drain(any_app, concurrency=1)
    assert order == list(range(10))


# -- countdown, eta, expiry ----------------------------------------------------------------
async def test_countdown_and_eta_run_no_earlier_than_asked(any_app: AioQueue) -> None:
    ran_at: dict[str, float] = {}

    @any_app.task
    async def stamp(tag: str) -> None:
        ran_at[tag] = time.time()

    sent = time.time()
    handles = [
        await stamp.apply_async(("countdown",), countdown=0.3),
        await stamp.apply_async(("eta",), eta=datetime.now(UTC) + timedelta(seconds=0.3)),
        await stamp.apply_async(
            ("naive",), eta=datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=0.3)
        ),
    ]
    assert (await any_app.broker.queue_sizes(DEFAULT))["default"] == (0, 3, 0)  # all delayed
    async with any_app.worker(concurrency=4):
        with anyio.fail_after(5):
            await asyncio.gather(*(h.get() for h in handles))
    for tag in ("countdown", "eta", "naive"):
        assert 0.3 <= ran_at[tag] - sent < 1.5, (tag, ran_at[tag] - sent)


async def test_expired_task_is_revoked_and_never_runs(any_app: AioQueue) -> None:
    ran: list[str] = []

    @any_app.task
    async def late(tag: str) -> None:
        ran.append(tag)

    # Already expired when sent; and expiring while it waits out its countdown.
    stale = await late.apply_async(("stale",), expires=datetime.now(UTC) - timedelta(seconds=1))
    async with any_app.worker(concurrency=2):
        delayed = await late.apply_async(("delayed",), countdown=0.2, expires=0.05)
        fresh = await late.apply_async(("fresh",), expires=60)
        with anyio.fail_after(5):
            for handle in (stale, delayed):
                with pytest.raises(TaskRevoked, match="expired"):
                    await handle
            await fresh
    assert ran == ["fresh"]
    for handle in (stale, delayed):
        info = await handle.info()
        assert info.state is State.REVOKED
        assert isinstance(info.result, TaskRevoked) and "expired" in str(info.result)
    assert (await any_app.broker.queue_sizes(DEFAULT))["default"] == (0, 0, 0)


# -- retries -------------------------------------------------------------------------------
async def test_retry_with_countdown_shows_retry_state_then_succeeds(any_app: AioQueue) -> None:
    attempts: list[tuple[int, float]] = []
    seen_while_retrying: list[Any] = []

    @any_app.task(bind=True)
    async def flaky(self: Any) -> int:
        attempts.append((self.request.retries, time.monotonic()))
        if self.request.retries == 0:
            raise self.retry(exc=Flaky("attempt 0"), countdown=0.2)
        # What anyone saw between the two runs: the RETRY record, stored with the reschedule.
        seen_while_retrying.append(await any_app.AsyncResult(self.request.id).info())
        return int(self.request.retries)

    async with any_app.worker(concurrency=2):
        handle = await flaky.delay()
        with anyio.fail_after(5):
            assert await handle == 1
    assert [retries for retries, _ in attempts] == [0, 1]
    assert attempts[1][1] - attempts[0][1] >= 0.2
    (retrying,) = seen_while_retrying
    assert retrying.state is State.RETRY and retrying.retries == 1
    assert isinstance(retrying.result, Flaky) and str(retrying.result) == "attempt 0"
    info = await handle.info()
    assert info.state is State.SUCCESS and info.retries == 1
    assert (await any_app.broker.queue_sizes(DEFAULT))["default"] == (0, 0, 0)


async def test_autoretry_for_gives_up_after_max_retries(any_app: AioQueue) -> None:
    runs: list[int] = []

    @any_app.task(autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=0.02)
    async def shaky() -> None:
        runs.append(1)
        raise ConnectionError(f"try {len(runs)}")

    @any_app.task(autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=0.02)
    async def other_error() -> None:
        runs.append(1)
        raise CustomError("not retried")

    async with any_app.worker(concurrency=2):
        handle = await shaky.delay()
        with anyio.fail_after(5), pytest.raises(ConnectionError, match="try 3"):
            await handle
        assert len(runs) == 3  # the first run and max_retries=2 retries
        runs.clear()
        unlisted = await other_error.delay()
        with anyio.fail_after(5), pytest.raises(CustomError):
            await unlisted
        assert len(runs) == 1  # an exception not in autoretry_for fails at once
    info = await handle.info()
    assert info.state is State.FAILURE and info.retries == 2
    assert (await unlisted.info()).retries == 0


# -- time limits and revocation ------------------------------------------------------------
async def test_time_limit_cancels_the_task_and_frees_its_slot(any_app: AioQueue) -> None:
    cancelled: list[str] = []

    @any_app.task(time_limit=0.1)
    async def too_slow() -> None:
        try:
            await anyio.sleep(10)
        except BaseException:
            cancelled.append("option")
            raise

    @any_app.task
    async def also_slow() -> None:
        try:
            await anyio.sleep(10)
        except BaseException:
            cancelled.append("call")
            raise

    @any_app.task
    async def quick() -> str:
        return "quick"

    async with any_app.worker(concurrency=1):
        start = time.monotonic()
        by_option = await too_slow.delay()
        by_call = await also_slow.apply_async(time_limit=0.1)
        after = await quick.delay()
        with anyio.fail_after(5):
            for handle in (by_option, by_call):
                with pytest.raises(TimeLimitExceeded, match=r"time limit of 0\.1s"):
                    await handle
            # Concurrency 1: this runs only because both slots were given back.
            assert await after == "quick"
        assert time.monotonic() - start < 2.0
    assert cancelled == ["option", "call"]
    assert await by_call.state() is State.FAILURE


async def test_revoked_before_running_never_runs(any_app: AioQueue) -> None:
    ran: list[str] = []

    @any_app.task
    async def job(tag: str) -> str:
        ran.append(tag)
        return tag

    before = await job.delay("revoked-before-any-worker")
    await before.revoke()
    assert await before.state() is State.REVOKED
    async with any_app.worker(concurrency=2):
        delayed = await job.apply_async(("revoked-while-delayed",), countdown=0.3)
        await any_app.revoke(delayed.id)
        with anyio.fail_after(5):
            for handle in (before, delayed):
                with pytest.raises(TaskRevoked):
                    await handle
            assert await (await job.delay("ok")) == "ok"

            async def consumed() -> bool:
                sizes = await any_app.broker.queue_sizes(DEFAULT)
                return sizes["default"] == (0, 0, 0)

            # Both revoked messages are consumed without running, not left behind.
            await eventually(consumed)
    assert ran == ["ok"]
    for handle in (before, delayed):
        info = await handle.info()
        assert info.state is State.REVOKED and isinstance(info.result, TaskRevoked)


async def test_revoke_terminate_cancels_a_running_task(any_app: AioQueue) -> None:
    inside = anyio.Event()
    cancelled = anyio.Event()

    @any_app.task
    async def forever() -> None:
        inside.set()
        try:
            await anyio.sleep(60)
        except BaseException:
            cancelled.set()
            raise

    @any_app.task
    async def quick() -> str:
        return "quick"

    async with any_app.worker(concurrency=1, name="w-terminate"):
        handle = await forever.delay()
        with anyio.fail_after(5):
            await inside.wait()
            await handle.revoke(terminate=True)
            with pytest.raises(TaskRevoked):
                await handle
            await cancelled.wait()
            # Concurrency 1: runs only once the terminated task gave its slot back.
            assert await (await quick.delay()) == "quick"

            async def recorded_by_worker() -> bool:
                return (await handle.info()).worker == "w-terminate"

            await eventually(recorded_by_worker)
    info = await handle.info()
    assert info.state is State.REVOKED
    assert "terminated" in str(info.result)


# -- unknown tasks and dead letters --------------------------------------------------------
async def test_unknown_task_fails_not_registered_and_is_dead_lettered(any_app: AioQueue) -> None:
    @any_app.task
    async def ok() -> str:
        return "ok"

    sent_at = time.time()
    home = await any_app.send_task("nobody.home", args=(20,))
    other = await any_app.send_task("nobody.else")
    async with any_app.worker(concurrency=2):
        with anyio.fail_after(5):
            with pytest.raises(NotRegistered, match=r"nobody\.home"):
                await home
            with pytest.raises(NotRegistered, match=r"nobody\.else"):
                await other
            assert await (await ok.delay()) == "ok"  # the worker keeps serving
    assert await home.state() is State.FAILURE
    letters = await any_app.broker.dead_letters("default", 10)
    assert sorted(letter.reason for letter in letters) == [
        "not registered: nobody.else", "not registered: nobody.home"]
    assert all(letter.queue == "default" and letter.payload for letter in letters)
    assert all(sent_at <= letter.failed_at <= time.time() for letter in letters)
    assert (await any_app.broker.queue_sizes(DEFAULT))["default"] == (0, 0, 2)

    # Register the missing task, then requeue only its letter.
    @any_app.task(name="nobody.home")
    async def now_home(x: int) -> int:
        return x * 2

    (home_letter,) = [ltr for ltr in letters if ltr.reason.endswith("nobody.home")]
    assert await any_app.broker.requeue_dead("default", [home_letter.entry_id]) == 1
    assert (await any_app.broker.queue_sizes(DEFAULT))["default"] == (1, 0, 1)
    await drain(any_app)
    assert await home.state() is State.SUCCESS
    assert (await home.info()).result == 40
    remaining = await any_app.broker.dead_letters("default", 10)
    assert [letter.reason for letter in remaining] == ["not registered: nobody.else"]

    # Requeue everything: still unknown, so it comes straight back to the dead letters.
    assert await any_app.broker.requeue_dead("default", None) == 1
    await drain(any_app)
    assert len(await any_app.broker.dead_letters("default", 10)) == 1
    assert await any_app.broker.purge_dead("default") == 1
    assert await any_app.broker.dead_letters("default", 10) == []
    assert await any_app.broker.purge_dead("default") == 0
    assert await any_app.broker.requeue_dead("default", None) == 0
    assert (await any_app.broker.queue_sizes(DEFAULT))["default"] == (0, 0, 0)


async def test_requeue_dead_with_an_empty_id_list_moves_nothing(any_app: AioQueue) -> None:
    """``entry_ids=None`` means every letter; an empty list (a filter that matched nothing)
    must mean none."""
    await any_app.send_task("nobody.home")
    await drain(any_app)
    assert len(await any_app.broker.dead_letters("default", 10)) == 1
    assert await any_app.broker.requeue_dead("default", []) == 0
    assert len(await any_app.broker.dead_letters("default", 10)) == 1
    assert (await any_app.broker.queue_sizes(DEFAULT))["default"] == (0, 0, 1)


async def test_requeue_dead_with_unknown_ids_moves_nothing(any_app: AioQueue) -> None:
    await any_app.send_task("nobody.home")
    await drain(any_app)
    assert await any_app.broker.requeue_dead("default", ["1-1", "not-an-entry-id"]) == 0
    assert len(await any_app.broker.dead_letters("default", 10)) == 1


async def test_message_delivered_past_max_deliveries_is_dead_lettered(any_app: AioQueue) -> None:
    any_app.conf.update(visibility_timeout=0.3, max_deliveries=1)
    ran: list[int] = []

    @any_app.task
    async def poison() -> None:
        ran.append(1)

    handle = await poison.delay()
    taken = await any_app.broker.fetch(DEFAULT, "consumer-that-dies", 10, 1.0)
    assert len(taken) == 1
    async with any_app.worker(concurrency=2):
        with anyio.fail_after(5), pytest.raises(DeadLettered, match="delivered 2 times"):
            await handle
    assert ran == []
    (letter,) = await any_app.broker.dead_letters("default", 10)
    assert letter.reason.startswith("max_deliveries")
    assert (await any_app.broker.queue_sizes(DEFAULT))["default"] == (0, 0, 1)


# -- results -------------------------------------------------------------------------------
async def test_ignore_result_stores_nothing(any_app: AioQueue) -> None:
    done = anyio.Event()

    @any_app.task(ignore_result=True)
    async def fire_and_forget() -> int:
        done.set()
        return 1

    async with any_app.worker(concurrency=2) as worker:
        handle = await fire_and_forget.delay()
        with anyio.fail_after(5):
            await done.wait()
    assert worker.processed == 1
    assert (await any_app.broker.queue_sizes(DEFAULT))["default"] == (0, 0, 0)  # acked
    assert await handle.state() is State.PENDING
    with pytest.raises(TimeoutError):
        await handle.get(timeout=0.1)


async def test_result_expires_after_result_expires(any_app: AioQueue) -> None:
    any_app.conf.update(result_expires=0.3)

    @any_app.task
    async def short_lived() -> int:
        return 1

    async with any_app.worker(concurrency=2):
        handle = await short_lived.delay()
        with anyio.fail_after(5):
            assert await handle == 1
    info = await handle.info()
    assert info.state is State.SUCCESS and info.date_done is not None

    async def gone() -> bool:
        return await handle.state() is State.PENDING

    await eventually(gone)
    assert time.time() - info.date_done.timestamp() >= 0.3 - 0.01


async def test_forget_deletes_the_stored_result(any_app: AioQueue) -> None:
    @any_app.task
    async def one() -> int:
        return 1

    async with any_app.worker(concurrency=2):
        handle = await one.delay()
        with anyio.fail_after(5):
            assert await handle == 1
    await handle.forget()
    assert await handle.state() is State.PENDING


async def test_delay_many_enqueues_every_call(any_app: AioQueue) -> None:
    @any_app.task
    async def square(x: int) -> int:
        return x * x

    handles = await square.delay_many([(i,) for i in range(200)])
    assert len({h.id for h in handles}) == 200
    assert (await any_app.broker.queue_sizes(DEFAULT))["default"] == (200, 0, 0)
    async with any_app.worker(concurrency=50):
        with anyio.fail_after(10):
            values = await asyncio.gather(*handles)
    assert values == [i * i for i in range(200)]


async def test_many_waiters_resolve_at_once(any_app: AioQueue) -> None:
    @any_app.task
    async def echo(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    async with any_app.worker(concurrency=100):
        handles = [await echo.delay(i) for i in range(300)]
        with anyio.fail_after(10):
            assert await asyncio.gather(*handles) == list(range(300))
            # Two waiters on one handle both resolve.
            again = handles[:10]
            assert await asyncio.gather(*again, *again) == list(range(10)) * 2


# -- redelivery ----------------------------------------------------------------------------
async def test_message_of_a_dead_consumer_is_rerun_after_visibility_timeout(
    any_app: AioQueue,
) -> None:
    any_app.conf.update(visibility_timeout=0.5)
    ran_at: list[float] = []

    @any_app.task(bind=True)
    async def job(self: Any) -> int:
        ran_at.append(time.monotonic())
        return int(self.request.deliveries)

    handle = await job.delay()
    taken_at = time.monotonic()
    # A consumer takes the message and dies without settling it.
    taken = await any_app.broker.fetch(DEFAULT, "consumer-that-dies", 10, 1.0)
    assert [d.deliveries for d in taken] == [1]
    assert any_app.serializer.decode_message(taken[0].payload).id == handle.id
    async with any_app.worker(concurrency=2):
        with anyio.fail_after(5):
            assert await handle == 2
    assert len(ran_at) == 1
    assert ran_at[0] - taken_at >= 0.5 - 0.01  # not before the visibility timeout (ms clock)
    assert (await any_app.broker.queue_sizes(DEFAULT))["default"] == (0, 0, 0)


async def test_graceful_shutdown_hands_back_a_task_past_shutdown_timeout(
    any_app: AioQueue,
) -> None:
    # A long visibility timeout: only the hand-back (not a reclaim) can explain the rerun.
    any_app.conf.update(shutdown_timeout=0.3, visibility_timeout=30.0)
    runs: list[str | None] = []
    long_started = anyio.Event()
    short_started = anyio.Event()

    @any_app.task(bind=True)
    async def long(self: Any) -> int:
        runs.append(self.request.hostname)
        if len(runs) == 1:
            long_started.set()
            await anyio.sleep(30)  # far past shutdown_timeout
        return len(runs)

    @any_app.task
    async def short() -> str:
        short_started.set()
        await anyio.sleep(0.05)  # finishes within shutdown_timeout
        return "done in time"

    async with any_app.worker(concurrency=4, name="first") as first:
        handle = await long.delay()
        with anyio.fail_after(5):
            await long_started.wait()
        finishing = await short.delay()
        with anyio.fail_after(5):
            await short_started.wait()
        stop_at = time.monotonic()
    stopped_in = time.monotonic() - stop_at
    assert 0.3 <= stopped_in < 0.3 + 1.5, stopped_in
    assert first.processed == 2
    assert await finishing.state() is State.SUCCESS  # drained, not handed back
    assert await handle.state() is State.PENDING  # a hand-back stores no result
    assert (await any_app.broker.queue_sizes(DEFAULT))["default"] == (1, 0, 0)
    async with any_app.worker(concurrency=4, name="second"):
        with anyio.fail_after(5):
            assert await handle == 2
    assert time.monotonic() - stop_at < 5.0
    assert runs == ["first", "second"]
    assert (await handle.info()).worker == "second"


# -- concurrency ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("concurrency", "queue_count"),
    [(1, 2), (1, 3), (2, 3)],
    ids=["c1-2queues", "c1-3queues", "c2-3queues"],
)
async def test_concurrency_is_a_hard_limit_over_several_queues(
    any_app: AioQueue, concurrency: int, queue_count: int
) -> None:
    """B4: the limit holds however many queues the worker consumes, each with work waiting."""
    queues = [f"q{i}" for i in range(queue_count)]
    running = 0
    peak = 0

    @any_app.task
    async def hold(tag: str) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.02)  # long enough for any excess task to start alongside
        running -= 1
        return tag

    tags = [f"{q}-{i}" for q in queues for i in range(3)]
    handles = [await hold.apply_async((tag,), queue=tag.split("-")[0]) for tag in tags]
    sizes = await any_app.broker.queue_sizes(queues)
    assert all(sizes[q] == (3, 0, 0) for q in queues)
    await drain(any_app, queues, concurrency=concurrency)
    with anyio.fail_after(5):
        assert await asyncio.gather(*handles) == tags
    assert peak == concurrency
    sizes = await any_app.broker.queue_sizes(queues)
    assert all(sizes[q] == (0, 0, 0) for q in queues)


async def test_a_busy_worker_leaves_the_rest_for_other_consumers(any_app: AioQueue) -> None:
    """B24: with every slot busy, the other messages are unclaimed, so a second consumer
    can take them (a worker that hoarded them would leave it nothing)."""
    gate = anyio.Event()
    three_running = anyio.Event()
    running_ids: list[str] = []

    @any_app.task(bind=True)
    async def hold(self: Any) -> None:
        running_ids.append(self.request.id)
        if len(running_ids) == 3:
            three_running.set()
        await gate.wait()

    handles = await hold.delay_many([() for _ in range(10)])
    async with any_app.worker(concurrency=3):
        with anyio.fail_after(5):
            await three_running.wait()
            taken = await any_app.broker.fetch(DEFAULT, "other-consumer", 10, 0.1)
            taken_ids = [any_app.serializer.decode_message(d.payload).id for d in taken]
            assert len(taken_ids) == 7
            assert set(taken_ids) | set(running_ids) == {h.id for h in handles}
            assert not set(taken_ids) & set(running_ids)
            gate.set()
            await asyncio.gather(*(h for h in handles if h.id in running_ids))
    assert len(running_ids) == 3  # the 7 others were the second consumer's, never run here
    for h in handles:
        if h.id in taken_ids:
            assert await h.state() is State.PENDING
