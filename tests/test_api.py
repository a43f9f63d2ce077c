"""The public producer/result API against a real Redis and an embedded worker."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from aioqueue import (
    AioQueue,
    AsyncResult,
    RemoteTaskError,
    SerializationError,
    State,
    TaskError,
    TaskRevoked,
)


class CustomError(Exception):
    """Importable from the test module, so get() can re-raise it as itself."""


async def test_delay_and_await_returns_the_value(app: AioQueue) -> None:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    assert add.name == f"{__name__}.test_delay_and_await_returns_the_value.<locals>.add"
    async with app.worker(concurrency=10):
        handle = await add.delay(1, 2)
        assert isinstance(handle, AsyncResult)
        assert isinstance(handle.id, str)
        with anyio.fail_after(5):
            assert await handle == 3
            assert await handle.get(timeout=5, propagate=True) == 3
        assert await handle.state() is State.SUCCESS
        assert await handle.ready()
        assert await handle.successful()
        assert not await handle.failed()
        info = await handle.info()
        assert info.state is State.SUCCESS and info.result == 3
        assert info.date_done is not None and info.date_done.tzinfo is not None
        assert info.retries == 0


async def test_pending_state_before_a_worker_runs(app: AioQueue) -> None:
    @app.task(name="t.idle")
    async def idle() -> None:
        return None

    handle = await idle.delay()
    assert await handle.state() is State.PENDING
    assert not await handle.ready()
    with pytest.raises(TimeoutError):
        await handle.get(timeout=0.2)


async def test_failure_reraises_the_task_exception_with_worker_traceback(app: AioQueue) -> None:
    @app.task
    async def fails(reason: str) -> None:
        raise CustomError(reason)

    async with app.worker(concurrency=2):
        handle = await fails.delay("broken")
        with anyio.fail_after(5), pytest.raises(CustomError, match="broken") as caught:
            await handle
        assert any("CustomError" in note for note in caught.value.__notes__)
        returned = await handle.get(propagate=False)
        assert isinstance(returned, CustomError)
        assert await handle.failed()
        info = await handle.info()
        assert info.state is State.FAILURE
        assert info.traceback is not None and "raise CustomError(reason)" in info.traceback


async def test_unimportable_exception_type_becomes_remote_task_error(app: AioQueue) -> None:
    local_error = type("LocalOnlyError", (Exception,), {})

    @app.task
    async def fails() -> None:
        raise local_error("only here")

    async with app.worker(concurrency=2):
        handle = await fails.delay()
        with anyio.fail_after(5), pytest.raises(RemoteTaskError) as caught:
            await handle
    assert "LocalOnlyError" in caught.value.exc_type
    assert caught.value.exc_message == "only here"
    assert isinstance(caught.value, TaskError)


async def test_apply_async_options_and_explicit_task_id(app: AioQueue) -> None:
    seen: list[str] = []

    @app.task(queue="special")
    async def where(tag: str) -> str:
        seen.append(tag)
        return tag

    async with app.worker(concurrency=4, queues=["special", "other"]):
        handle = await where.apply_async(args=("a",), kwargs={}, task_id="my-id-1")
        assert handle.id == "my-id-1"
        other = await where.apply_async(("b",), queue="other")
        with anyio.fail_after(5):
            assert await handle == "a"
            assert await other == "b"
    assert sorted(seen) == ["a", "b"]


async def test_countdown_and_eta_run_no_earlier_than_asked(app: AioQueue) -> None:
    ran_at: dict[str, float] = {}

    @app.task
    async def stamp(tag: str) -> None:
        ran_at[tag] = time.time()

    async with app.worker(concurrency=4):
        sent = time.time()
        h1 = await stamp.apply_async(("countdown",), countdown=0.5)
        h2 = await stamp.apply_async(("eta",), eta=datetime.now(UTC) + timedelta(seconds=0.5))
        naive_utc = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=0.5)
        h3 = await stamp.apply_async(("naive",), eta=naive_utc)
        with anyio.fail_after(5):
            await asyncio.gather(h1.get(), h2.get(), h3.get())
    for tag in ("countdown", "eta", "naive"):
        assert 0.5 <= ran_at[tag] - sent < 1.5, tag


async def test_expired_task_is_not_run_and_is_revoked(app: AioQueue) -> None:
    ran = []

    @app.task
    async def late() -> None:
        ran.append(1)

    handle = await late.apply_async(expires=0.01)
    await anyio.sleep(0.05)  # let the expiry pass before any worker exists: that is the test
    async with app.worker(concurrency=2):
        with anyio.fail_after(5), pytest.raises(TaskRevoked, match="expired"):
            await handle
    assert ran == []
    assert await handle.state() is State.REVOKED


async def test_send_task_by_name_and_handle_by_id(app: AioQueue) -> None:
    @app.task(name="named.mul")
    async def mul(x: int, y: int) -> int:
        return x * y

    async with app.worker(concurrency=2):
        handle = await app.send_task("named.mul", args=(6, 7))
        by_id = app.AsyncResult(handle.id)
        with anyio.fail_after(5):
            assert await by_id.get(timeout=5) == 42  # polls: not this handle's fast path
            assert await handle == 42


async def test_handle_by_id_from_another_app_instance(app: AioQueue, redis_url: str) -> None:
    @app.task(name="other.process")
    async def value() -> str:
        return "from afar"

    other = AioQueue("elsewhere", broker=redis_url)
    try:
        async with app.worker(concurrency=2):
            handle = await value.delay()
            with anyio.fail_after(5):
                assert await other.AsyncResult(handle.id).get(timeout=5) == "from afar"
    finally:
        await other.close()


async def test_forget_deletes_the_stored_result(app: AioQueue) -> None:
    @app.task
    async def one() -> int:
        return 1

    async with app.worker(concurrency=2):
        handle = await one.delay()
        with anyio.fail_after(5):
            assert await handle == 1
    await handle.forget()
    assert await handle.state() is State.PENDING


async def test_bind_gives_self_request(app: AioQueue) -> None:
    @app.task(bind=True)
    async def whoami(self: Any, x: int, *, y: int = 0) -> dict[str, Any]:
        r = self.request
        return {"id": r.id, "retries": r.retries, "args": list(r.args), "kwargs": r.kwargs}

    async with app.worker(concurrency=2):
        handle = await whoami.delay(5, y=6)
        with anyio.fail_after(5):
            got = await handle
    assert got == {"id": handle.id, "retries": 0, "args": [5], "kwargs": {"y": 6}}


async def test_minimal_retry_path(app: AioQueue) -> None:
    attempts: list[int] = []

    @app.task(bind=True)
    async def flaky(self: Any) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(countdown=0.05)
        return self.request.retries

    async with app.worker(concurrency=2):
        handle = await flaky.delay()
        with anyio.fail_after(5):
            assert await handle == 2
    assert attempts == [0, 1, 2]
    assert (await handle.info()).retries == 2


async def test_sync_tasks_run_in_threads_without_blocking_the_loop(app: AioQueue) -> None:
    release = threading.Event()
    loop_threads: set[int] = set()

    @app.task
    def blocking(tag: str) -> tuple[str, int]:
        # Blocks its thread until the loop -- which must still be running -- releases it.
        assert release.wait(5)
        return tag, threading.get_ident()

    @app.task
    async def on_loop() -> int:
        loop_threads.add(threading.get_ident())
        release.set()
        return 1

    async with app.worker(concurrency=4):
        slow = await blocking.delay("t")
        with anyio.fail_after(5):
            assert await (await on_loop.delay()) == 1
            tag, thread_id = await slow
    assert tag == "t"
    assert thread_id not in loop_threads


async def test_sync_bound_task_sees_its_request(app: AioQueue) -> None:
    @app.task(bind=True)
    def sync_bound(self: Any) -> str:
        return str(self.request.id)

    async with app.worker(concurrency=2):
        handle = await sync_bound.delay()
        with anyio.fail_after(5):
            assert await handle == handle.id


async def test_ignore_result_stores_nothing(app: AioQueue) -> None:
    done = anyio.Event()

    @app.task(ignore_result=True)
    async def fire_and_forget() -> int:
        done.set()
        return 1

    async with app.worker(concurrency=2) as worker:
        handle = await fire_and_forget.delay()
        with anyio.fail_after(5):
            await done.wait()
    assert worker.processed == 1
    assert await handle.state() is State.PENDING
    with pytest.raises(TimeoutError):
        await handle.get(timeout=0.1)


async def test_result_expires(redis_url: str) -> None:
    app = AioQueue("tests", broker=redis_url, result_expires=0.3)

    @app.task
    async def short_lived() -> int:
        return 1

    try:
        async with app.worker(concurrency=2):
            handle = await short_lived.delay()
            with anyio.fail_after(5):
                assert await handle == 1
        assert await handle.state() is State.SUCCESS
        with anyio.fail_after(5):
            while await handle.state() is not State.PENDING:
                await anyio.sleep(0.05)
    finally:
        await app.close()


async def test_track_started_records_started_state(app: AioQueue) -> None:
    inside = anyio.Event()
    proceed = anyio.Event()

    @app.task(track_started=True)
    async def slow() -> None:
        inside.set()
        await proceed.wait()

    async with app.worker(concurrency=2):
        handle = await slow.delay()
        with anyio.fail_after(5):
            await inside.wait()
            assert await handle.state() is State.STARTED
            proceed.set()
            await handle
    assert await handle.state() is State.SUCCESS


async def test_unserializable_argument_names_the_argument(app: AioQueue) -> None:
    @app.task
    async def takes(a: Any, b: Any = None) -> None:
        return None

    with pytest.raises(SerializationError, match=r"argument 1 of type object"):
        await takes.delay(1, object())
    with pytest.raises(SerializationError, match=r"keyword argument 'b' of type lock"):
        await takes.delay(1, b=threading.Lock())
    assert (await app.broker.queue_sizes(["default"]))["default"] == (0, 0, 0)


async def test_unserializable_return_value_fails_clearly(app: AioQueue) -> None:
    @app.task
    async def returns_object() -> object:
        return object()

    async with app.worker(concurrency=2):
        handle = await returns_object.delay()
        with anyio.fail_after(5), pytest.raises(SerializationError, match="return value"):
            await handle


async def test_typed_arguments_are_converted(app: AioQueue) -> None:
    @app.task
    async def days_until(when: datetime, base: datetime) -> float:
        return (when - base).total_seconds()

    async with app.worker(concurrency=2):
        a = datetime(2026, 1, 2, tzinfo=UTC)
        b = datetime(2026, 1, 1, tzinfo=UTC)
        with anyio.fail_after(5):
            assert await (await days_until.delay(a, b)) == 86400.0


async def test_delay_many_enqueues_in_one_batch(app: AioQueue) -> None:
    @app.task
    async def square(x: int) -> int:
        return x * x

    handles = await square.delay_many([(i,) for i in range(200)])
    assert len({h.id for h in handles}) == 200
    assert (await app.broker.queue_sizes(["default"]))["default"][0] == 200
    async with app.worker(concurrency=50):
        with anyio.fail_after(10):
            values = await asyncio.gather(*handles)
    assert values == [i * i for i in range(200)]


async def test_concurrency_is_a_hard_limit(app: AioQueue) -> None:
    running = 0
    peak = 0
    gate = anyio.Event()
    three_running = anyio.Event()

    @app.task
    async def hold() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            three_running.set()
        await gate.wait()
        running -= 1

    handles = await hold.delay_many([() for _ in range(10)])
    async with app.worker(concurrency=3):
        with anyio.fail_after(5):
            await three_running.wait()
            # With every slot busy, the other 7 stay in Redis for an idle worker to take.
            ready, _, _ = (await app.broker.queue_sizes(["default"]))["default"]
            assert ready == 10  # XLEN counts unacknowledged entries too
            gate.set()
            await asyncio.gather(*handles)
    assert peak == 3


async def test_results_resolve_many_waiters_at_once(app: AioQueue) -> None:
    @app.task
    async def echo(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    async with app.worker(concurrency=100):
        handles = [await echo.delay(i) for i in range(300)]
        with anyio.fail_after(10):
            assert await asyncio.gather(*handles) == list(range(300))


async def test_settings_validate_names(redis_url: str) -> None:
    from aioqueue import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown setting 'result_expire'"):
        AioQueue("x", broker=redis_url, result_expire=5)
    app = AioQueue("x", broker=redis_url)
    app.conf.update(result_expires=60)
    assert app.conf.result_expires_s == 60
    with pytest.raises(ConfigurationError, match="worker_concurrency"):
        app.conf.update(worker_concurrency=0)
