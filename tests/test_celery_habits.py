"""Celery habits: sync callers, Celery's handle attributes, retry, hooks, signals, resources.

Each habit either works as in Celery or fails at once with the async spelling.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pytest

from aioqueue import AioQueue, AsyncResult, ConfigurationError, State, SyncResult, Task, signals
from aioqueue.testing import RedisServer, free_port
from tests.conftest import TEST_SETTINGS


def _register(app: AioQueue) -> tuple[Task[Any, Any], Task[Any, Any]]:
    @app.task(name="habits.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="habits.boom")
    def boom() -> None:
        raise ValueError("boom")

    return add, boom


# -- sync callers --------------------------------------------------------------------------
async def test_delay_from_sync_code_sends_and_blocks_like_celery(app: AioQueue) -> None:
    add, boom = _register(app)

    def view() -> dict[str, Any]:  # a Django/Flask view: a thread without an event loop
        res = add.delay(1, 2)
        assert isinstance(res, SyncResult)
        value = res.get(timeout=10)
        failed = boom.delay()
        with pytest.raises(ValueError, match="boom"):
            failed.get(timeout=10)
        later = app.AsyncResult(res.id)  # as in a later request
        bare = AsyncResult(failed.id)  # Celery's bare AsyncResult(id): the current app
        return {
            "value": value, "state": res.state, "status": res.status,
            "equal": res.state == "SUCCESS", "ready": res.ready(),
            "successful": res.successful(), "result": later.result, "id": str(later),
            "failed": failed.failed(), "failure": failed.result,
            "traceback": failed.traceback, "date_done": failed.date_done,
            "bare_state": bare.state, "bare_ready": bare.ready(), "task_id": res.task_id,
            "wait": add.apply_async((2, 3), countdown=0).wait(timeout=10),
        }

    async with app.worker(concurrency=4):
        seen = await anyio.to_thread.run_sync(view)
    assert seen["value"] == 3 and seen["wait"] == 5
    assert seen["state"] is State.SUCCESS and seen["status"] == "SUCCESS" and seen["equal"]
    assert seen["ready"] and seen["successful"] and seen["result"] == 3
    assert seen["failed"] and isinstance(seen["failure"], ValueError)
    assert "ValueError: boom" in seen["traceback"] and seen["date_done"] is not None
    assert seen["bare_state"] == "FAILURE" and seen["bare_ready"] is True
    assert seen["id"] == seen["task_id"]


async def test_sync_callers_from_fifty_threads_at_once(app: AioQueue) -> None:
    add, _ = _register(app)

    def call(i: int) -> int:
        return int(add.delay(i, i).get(timeout=20))

    def all_threads() -> list[int]:
        with ThreadPoolExecutor(50) as pool:
            return list(pool.map(call, range(200)))

    async with app.worker(concurrency=50):
        results = await anyio.to_thread.run_sync(all_threads)
    assert results == [2 * i for i in range(200)]


def _child_sends(url: str, out: Any) -> None:
    # A forked child (a prefork server's worker): the parent's portal thread is gone.
    child_app = sys.modules["aioqueue.app"].current_app()
    assert child_app.conf.broker_url == url
    out.send(child_app.tasks["habits.add"].delay(20, 22).get(timeout=20))


async def test_sync_callers_work_after_fork(app: AioQueue) -> None:
    add, _ = _register(app)
    async with app.worker(concurrency=4):
        # The parent used the portal first: its thread and connections exist.
        assert await anyio.to_thread.run_sync(lambda: add.delay(1, 1).get(timeout=10)) == 2
        parent_end, child_end = multiprocessing.Pipe()
        with warnings.catch_warnings():  # Python 3.12+ warns about fork with threads
            warnings.simplefilter("ignore", DeprecationWarning)
            process = multiprocessing.get_context("fork").Process(
                target=_child_sends, args=(app.conf.broker_url, child_end))
            process.start()
        try:
            got = await anyio.to_thread.run_sync(lambda: parent_end.poll(30))
            assert got, "the forked child sent nothing"
            assert parent_end.recv() == 42
        finally:
            await anyio.to_thread.run_sync(lambda: process.join(10))
    assert process.exitcode == 0


# -- async code: the same habits fail at once ------------------------------------------------
async def test_celery_habits_on_async_handles_fail_loudly(app: AioQueue) -> None:
    add, _ = _register(app)
    async with app.worker(concurrency=2):
        pending = add.delay(1, 2)  # no await
        with pytest.raises(TypeError, match=r"await add\.delay"):
            pending.get(timeout=1)
        with pytest.raises(TypeError, match=r"await add\.delay"):
            _ = pending.state
        handle = await pending  # awaiting it still sends
        assert await handle == 3
        with pytest.raises(TypeError, match=r"await handle\.state\(\)"):
            _ = handle.state == "SUCCESS"
        with pytest.raises(TypeError, match=r"await handle\.ready\(\)"):
            if handle.ready():
                pass
        with pytest.raises(TypeError, match=r"await handle\.result\(\)"):
            _ = f"{handle.result}"
        assert await handle.state() == "SUCCESS" and await handle.ready()
        assert await handle.status() is State.SUCCESS
        assert await handle.result() == 3 and await handle.wait(timeout=5) == 3
        assert handle.task_id == handle.id
        with pytest.raises(RuntimeError, match="await"):  # blocking API on the loop's thread
            SyncResult(handle).get()


async def test_a_send_never_awaited_warns_that_nothing_was_sent(app: AioQueue) -> None:
    add, _ = _register(app)
    with pytest.warns(RuntimeWarning, match=r"add\.delay\(\.\.\.\) was never awaited.*NOT sent"):
        add.delay(1, 2)
    assert await app.broker.queue_sizes(["default"]) == {"default": (0, 0, 0)}


# -- retry -----------------------------------------------------------------------------------
async def test_self_retry_without_raise_retries_instead_of_succeeding(any_app: AioQueue) -> None:
    app = any_app
    runs: list[int] = []

    @app.task(bind=True, default_retry_delay=0)
    async def flaky(self: Task[..., Any]) -> str:
        runs.append(self.request.retries)
        if self.request.retries == 0:
            self.retry(exc=ConnectionError("try again"))  # no raise: Celery's retry raises
            return "never reached"
        return "done"

    async with app.worker(concurrency=1):
        handle = await flaky.delay()
        assert await handle.get(timeout=10) == "done"
    assert runs == [0, 1]
    assert (await handle.info()).retries == 1


# -- hooks and signals -------------------------------------------------------------------------
async def test_task_hooks_and_signals_in_order_with_celerys_arguments(
        any_app: AioQueue) -> None:
    app = any_app
    calls: list[tuple[Any, ...]] = []

    @app.task(bind=True, default_retry_delay=0,
              on_success=lambda retval, task_id, args, kwargs: calls.append(
                  ("on_success", retval, args, kwargs)),
              on_failure=lambda exc, task_id, args, kwargs, einfo: calls.append(
                  ("on_failure", type(exc).__name__, "KeyError" in einfo)),
              on_retry=lambda exc, task_id, args, kwargs, einfo: calls.append(
                  ("on_retry", str(exc))),
              after_return=lambda status, retval, task_id, args, kwargs, einfo: calls.append(
                  ("after_return", status)))
    async def job(self: Task[..., Any], mode: str) -> str:
        if mode == "retry" and self.request.retries == 0:
            raise self.retry(exc=RuntimeError("again"))
        if mode == "fail":
            raise KeyError("missing")
        return mode.upper()

    def prerun(sender: Any, task_id: str, task: Any, args: Any, kwargs: Any, **_: Any) -> None:
        calls.append(("prerun", task.name == job.name, tuple(args)))

    async def postrun(sender: Any, retval: Any, state: str, **_: Any) -> None:
        calls.append(("postrun", state))

    def failure(sender: Any, exception: BaseException, **_: Any) -> None:
        calls.append(("task_failure", type(exception).__name__))

    def broken(**_: Any) -> None:
        raise RuntimeError("a receiver that raises changes nothing")

    pairs = [(signals.task_prerun, prerun), (signals.task_postrun, postrun),
             (signals.task_failure, failure), (signals.task_success, broken)]
    for signal, receiver in pairs:
        signal.connect(receiver, sender=job)
    try:
        async with app.worker(concurrency=1):
            assert await (await job.delay("ok")).get(timeout=10) == "OK"
            ok = calls[:]
            calls.clear()
            with pytest.raises(KeyError):
                await (await job.delay("fail")).get(timeout=10)
            failed = calls[:]
            calls.clear()
            assert await (await job.delay("retry")).get(timeout=10) == "RETRY"
            retried = calls[:]
    finally:
        for signal, receiver in pairs:
            signal.disconnect(receiver, sender=job)
    assert ok == [("prerun", True, ("ok",)), ("on_success", "OK", ("ok",), {}),
                  ("after_return", "SUCCESS"), ("postrun", "SUCCESS")]
    assert failed == [("prerun", True, ("fail",)), ("task_failure", "KeyError"),
                      ("on_failure", "KeyError", True), ("after_return", "FAILURE"),
                      ("postrun", "FAILURE")]
    assert retried == [("prerun", True, ("retry",)), ("on_retry", "again"),
                       ("after_return", "RETRY"), ("postrun", "RETRY"),
                       ("prerun", True, ("retry",)), ("on_success", "RETRY", ("retry",), {}),
                       ("after_return", "SUCCESS"), ("postrun", "SUCCESS")]


async def test_worker_signals_and_annotations(any_app: AioQueue) -> None:
    app = any_app
    seen: list[str] = []
    app.conf.task_annotations = {"*": {"on_success": lambda *a: seen.append("annotated")}}

    @app.task
    async def ping() -> str:
        return "pong"

    def ready(sender: Any, **_: Any) -> None:
        seen.append(f"ready {sender.name}")

    async def shutdown(sender: Any, **_: Any) -> None:
        seen.append(f"shutdown {sender.name}")

    signals.worker_ready.connect(ready)
    signals.worker_shutdown.connect(shutdown)
    try:
        async with app.worker(concurrency=1, name="w1"):
            assert await (await ping.delay()).get(timeout=10) == "pong"
    finally:
        signals.worker_ready.disconnect(ready)
        signals.worker_shutdown.disconnect(shutdown)
    assert seen == ["ready w1", "annotated", "shutdown w1"]


# -- task contexts and lifespans ---------------------------------------------------------------
async def test_task_context_is_entered_in_the_thread_that_runs_a_sync_task(
        any_app: AioQueue) -> None:
    app = any_app
    local = threading.local()
    entered: list[str] = []

    @app.task_context
    @contextlib.contextmanager
    def in_app_context(task: Task[Any, Any], request: Any) -> Iterator[None]:
        local.app_name = "flask-like"
        entered.append(request.id)
        try:
            yield
        finally:
            del local.app_name

    @app.task
    def sync_job() -> str:
        return str(getattr(local, "app_name", "no context"))

    @app.task
    async def async_job() -> str:
        return str(getattr(local, "app_name", "no context"))

    async with app.worker(concurrency=2):
        handle = await sync_job.delay()
        assert await handle.get(timeout=10) == "flask-like"
        assert await (await async_job.delay()).get(timeout=10) == "flask-like"
    assert entered[0] == handle.id and len(entered) == 2


async def test_lifespan_resources_are_opened_once_per_worker(any_app: AioQueue) -> None:
    app = any_app
    opened: list[str] = []

    @app.lifespan
    @contextlib.asynccontextmanager
    async def pool() -> AsyncIterator[dict[str, Any]]:
        opened.append("open")
        yield {"pool": object()}
        opened.append("close")

    @app.task(bind=True)
    async def uses_pool(self: Task[..., Any]) -> int:
        return id(self.resources["pool"])

    async with app.worker(concurrency=4):
        handles = await uses_pool.delay_many([() for _ in range(10)])
        ids = {await h.get(timeout=10) for h in handles}
        assert opened == ["open"]
    assert len(ids) == 1 and opened == ["open", "close"] and app.resources == {}


# -- discovery ---------------------------------------------------------------------------------
async def test_include_autodiscover_and_shared_task(redis_url: str) -> None:
    import aioqueue.app as app_module

    sys.modules.pop("tests.habits_pkg.tasks", None)
    before = list(app_module._shared_tasks)
    made_first = AioQueue("habits", broker=redis_url, **TEST_SETTINGS)
    app = AioQueue("habits", broker=redis_url, include=["tests.habits_pkg.tasks"],
                   **TEST_SETTINGS)
    try:
        assert app.autodiscover_tasks(["tests.habits_pkg", "no_such_package_here"]) == [
            "tests.habits_pkg.tasks"]
        from tests.habits_pkg.tasks import double

        # Registered with every app, the ones made before the definition too.
        assert "habits.shared_double" in app.tasks and "habits.shared_double" in made_first.tasks
        async with app.worker(concurrency=1):  # imports include=[...] at start-up
            handle = await double.delay(21)  # through the current app: the last made
            assert handle.app is app
            assert await handle.get(timeout=10) == 42
    finally:
        await app.close()
        await made_first.close()
        app_module._shared_tasks[:] = before


# -- worker life -------------------------------------------------------------------------------
async def test_a_worker_stops_by_itself_after_max_tasks(any_app: AioQueue) -> None:
    app = any_app

    @app.task
    async def one() -> None:
        return None

    await one.delay_many([() for _ in range(5)])
    worker = app.worker(concurrency=1, max_tasks=3)
    with anyio.fail_after(10):
        await worker.run()  # returns once it stopped itself
    assert worker.processed == 3
    assert (await app.broker.queue_sizes(["default"]))["default"][0] == 2


async def test_a_worker_waits_for_redis_at_start_up(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    app = AioQueue("habits", broker=f"redis://127.0.0.1:{port}/0",
                   **{**TEST_SETTINGS, "broker_connection_timeout": 0.5})
    worker = app.worker(concurrency=1, retry_on_startup=True)
    server = RedisServer(port=port)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(20):
                while "attempt 1" not in caplog.text:  # a log line per attempt
                    await anyio.sleep(0.05)
                await anyio.to_thread.run_sync(server.start)
                await worker.wait_started()
            worker.stop()
        assert "connected to" in caplog.text
    finally:
        await app.close()
        server.stop()
        server.cleanup()


async def test_an_async_task_that_blocks_the_loop_is_named_in_a_warning(
        any_app: AioQueue, caplog: pytest.LogCaptureFixture) -> None:
    import time

    app = any_app

    @app.task(name="habits.ported_from_sync")
    async def ported() -> str:
        time.sleep(1.3)  # the porting mistake: blocks every other task of the worker
        return "done"

    @app.task(name="habits.well_behaved")
    async def well_behaved() -> str:
        await anyio.sleep(0.01)
        return "fine"

    async with app.worker(concurrency=2):
        handle = await ported.delay()
        assert await handle.get(timeout=10) == "done"
        assert await (await well_behaved.delay()).get(timeout=10) == "fine"
    warnings_ = [r.getMessage() for r in caplog.records if "blocked the event loop" in
                 r.getMessage()]
    assert any(f"Task habits.ported_from_sync[{handle.id}] has blocked the event loop" in m
               for m in warnings_), warnings_
    assert not any("well_behaved" in m for m in warnings_)


async def test_a_message_from_an_app_with_another_serializer_fails_its_producer(
        redis_url: str) -> None:
    """Two apps on one Redis, a Celery tutorial's gotcha: the producer must not wait on
    PENDING forever for a message the worker cannot decode."""
    producer = AioQueue("habits", broker=redis_url, task_serializer="json", **TEST_SETTINGS)
    consumer = AioQueue("habits", broker=redis_url, **TEST_SETTINGS)  # msgpack

    @producer.task(name="habits.shared_name")
    async def sent() -> int:
        return 1

    @consumer.task(name="habits.shared_name")
    async def received() -> int:
        return 1

    try:
        async with consumer.worker(concurrency=1):
            handle = await sent.delay()
            with pytest.raises(Exception, match=r"encoded with json.*uses msgpack"):
                await handle.get(timeout=10)
            dead = await consumer.broker.dead_letters("default", 10)
        assert len(dead) == 1 and dead[0].reason.startswith("undecodable")
    finally:
        await producer.close()
        await consumer.close()


# -- progress ----------------------------------------------------------------------------------
async def test_progress_streams_to_the_producer_and_reads_anywhere(any_app: AioQueue) -> None:
    app = any_app
    gate = anyio.Event()

    @app.task(bind=True, name="habits.download")
    async def download(self: Task[..., Any], parts: int) -> str:
        for done in range(1, parts + 1):
            await self.update_state(state="PROGRESS", meta={"done": done, "total": parts})
            if done == 1:
                await gate.wait()  # the state is read from outside meanwhile
        return "complete"

    release = threading.Event()

    @app.task(bind=True, name="habits.sync_progress")
    def sync_progress(self: Task[..., Any]) -> str:
        self.update_state(meta={"step": "in a thread"})  # blocking in a def task
        release.wait(10)
        return "ok"

    async with app.worker(concurrency=2):
        handle = await download.delay(3)
        updates = []
        async for meta in handle.progress():
            updates.append(meta)
            if meta["done"] == 1:
                assert await handle.state() == "PROGRESS"
                assert (await app.AsyncResult(handle.id).info()).result == meta
                gate.set()
        assert await handle == "complete"
        assert [u["done"] for u in updates] == [1, 2, 3]
        sync_handle = await sync_progress.delay()
        seen = []
        async for meta in sync_handle.progress():
            seen.append(meta)
            release.set()
        assert seen == [{"step": "in a thread"}]
        assert await sync_handle == "ok"


async def test_update_state_refuses_other_custom_states_with_the_spelling(
        any_app: AioQueue) -> None:
    app = any_app

    @app.task(bind=True)
    async def custom(self: Task[..., Any]) -> None:
        await self.update_state(state="DOWNLOADING")

    async with app.worker(concurrency=1):
        with pytest.raises(ValueError, match=r"meta=\{'stage': 'DOWNLOADING'\}"):
            await (await custom.delay()).get(timeout=10)


async def test_the_first_sync_call_gets_its_reply_pushed(app: AioQueue, raw: Any) -> None:
    """The first send through the portal named the app's reply list while its handle waited
    on the portal's: its result came only with the 1 s fallback re-read."""
    from aioqueue._keys import Keys

    add, _ = _register(app)
    sent = await anyio.to_thread.run_sync(lambda: add.delay(1, 2))
    [(_, fields)] = await raw.xrange(Keys().stream("default"))
    message = app.serializer.decode_message(fields[b"m"])
    assert message.id == sent.id
    assert app._portal is not None and message.reply_to == app._portal.reply_to
    assert message.reply_to != app._reply_to  # the loop thread's list is another one


async def test_send_task_by_name_works_from_sync_code_as_in_celery(app: AioQueue) -> None:
    _register(app)

    def view() -> int:
        res = app.send_task("habits.add", args=(40, 2))  # Celery's spelling, no await
        assert isinstance(res, SyncResult)
        return int(res.get(timeout=10))

    async with app.worker(concurrency=2):
        assert await anyio.to_thread.run_sync(view) == 42
        pending = app.send_task("habits.add", args=(1, 1))  # async code, no await
        with pytest.raises(TypeError, match=r"await app\.send_task\('habits\.add', \.\.\.\)"):
            pending.get(timeout=1)
        assert await (await pending) == 2


async def test_sync_callers_on_memory_broker_fail_loudly(memory_app: AioQueue) -> None:
    add, _ = _register(memory_app)

    def view() -> None:
        add.delay(1, 2)

    with pytest.raises(ConfigurationError, match=r"memory:// cannot be used from sync code.*"
                                                 r"redis://"):
        await anyio.to_thread.run_sync(view)
