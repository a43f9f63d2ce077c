"""The public producer/result API against a real Redis and an embedded worker."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
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


async def test_settings_validate_names(redis_url: str) -> None:
    from aioqueue import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown setting 'result_expire'"):
        AioQueue("x", broker=redis_url, result_expire=5)
    app = AioQueue("x", broker=redis_url)
    app.conf.update(result_expires=60)
    assert app.conf.result_expires_s == 60
    with pytest.raises(ConfigurationError, match="worker_concurrency"):
        app.conf.update(worker_concurrency=0)
