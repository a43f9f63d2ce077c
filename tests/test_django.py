"""The Django example (``examples/django``) against a real worker: Celery's Django idioms.

The project is loaded as Django loads it: ``examples/django`` on ``sys.path`` and
``DJANGO_SETTINGS_MODULE=proj.settings``, with the SQLite database in a temporary directory
and ``AIOQUEUE_BROKER`` pointed at the session's redis-server. The worker is the command a
user runs, ``python -m aioqueue worker proj.celery:app``, from that directory. Requests go
through Django's test client, which calls views from this (loop-less) thread, as a WSGI
server does.

The worker runs one task at a time (``-c 1``): tasks run in the order they were sent, so a
task sent after another is a barrier for it, and ``def`` tasks reuse one thread, where a
connection left open would be seen by the next run.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from aioqueue import AioQueue, State
from aioqueue._keys import Keys
from aioqueue.testing import RedisServer
from tests.cli_worker import cli_worker

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "django"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def project(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, str]]:
    """Django set up in this process for the example project, its database migrated."""
    assert redis_server.command("FLUSHALL") == b"+OK"
    env = {
        "AIOQUEUE_BROKER": redis_server.url,
        "DJANGO_SETTINGS_MODULE": "proj.settings",
        "DJANGO_DB_PATH": str(tmp_path_factory.mktemp("django") / "db.sqlite3"),
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    sys.path.insert(0, str(EXAMPLE))
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        import proj

        assert Path(proj.__file__ or "").parent == EXAMPLE / "proj", "proj from elsewhere"
        yield env
        asyncio.run(proj.celery_app.close())
    finally:
        sys.path.remove(str(EXAMPLE))
        for name, value in saved.items():  # other tests' subprocesses must not see them
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def app(project: dict[str, str]) -> AioQueue:
    from proj.celery import app

    return app


@pytest.fixture(scope="module")
def worker(project: dict[str, str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[subprocess.Popen[bytes]]:
    """``aioqueue worker proj.celery:app`` run from the example directory; SIGTERM at the end."""
    log_path = tmp_path_factory.mktemp("django-worker") / "worker.log"
    path = os.pathsep.join(p for p in (str(EXAMPLE), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, **project, "PYTHONPATH": path}
    with cli_worker(["proj.celery:app", "-c", "1", "-l", "info"], cwd=EXAMPLE, env=env,
                    log_path=log_path) as process:
        yield process


@pytest.fixture
def client(project: dict[str, str]) -> Any:
    from django.test import Client

    return Client()


@pytest.fixture(scope="module")
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def last_sent(raw: redis.Redis, queue: str = "default") -> bytes | None:
    """The id of the last message ever added to the queue's stream (None: no stream yet)."""
    try:
        info = raw.xinfo_stream(Keys().stream(queue))
    except redis.ResponseError:  # no such key
        return None
    last: bytes = info["last-generated-id"]
    return last


def barrier(app: AioQueue) -> None:
    """Return once the worker ran everything sent before (it runs one task at a time)."""
    from demo.tasks import add

    assert add.delay(0, 0).get(timeout=10) == 0


# -- Celery's idioms from sync views -------------------------------------------------------------
def test_sync_view_enqueues_and_a_later_request_reads_the_result(
        worker: Any, client: Any, app: AioQueue) -> None:
    response = client.post("/add?x=2&y=3")
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    assert app.AsyncResult(task_id).get(timeout=10) == 5  # blocking, as Celery's

    status = client.get(f"/tasks/{task_id}").json()
    assert status == {"task_id": task_id, "state": "SUCCESS", "result": 5, "error": None}

    unknown = client.get("/tasks/no-such-task").json()
    assert unknown["state"] == "PENDING"


def test_a_failed_task_shows_its_error(worker: Any, client: Any, app: AioQueue) -> None:
    from demo.tasks import add

    result = add.delay("two", 3)  # not an int: the worker refuses the argument
    assert result.get(timeout=10, propagate=False) is not None
    assert result.state == State.FAILURE
    status = client.get(f"/tasks/{result.id}").json()
    assert status["state"] == "FAILURE"
    assert status["error"]


def test_async_view_awaits_the_task(worker: Any, client: Any, app: AioQueue,
                                    raw: redis.Redis) -> None:
    assert client.post("/add?x=0&y=0").status_code == 202  # this process's connections made
    clients = len(raw.client_list())
    try:
        for x in range(5):
            response = client.post(f"/add-async?x={x}&y=22")
            assert response.status_code == 200, response.content
            body = response.json()
            assert body["result"] == x + 22
            assert client.get(f"/tasks/{body['task_id']}").json()["state"] == "SUCCESS"
        # Under WSGI (this client, runserver, gunicorn) Django runs each async view on an
        # event loop of its own, closed after the request. The app closes the sockets of a
        # closed loop when the next loop uses it: at most one request's connections (a
        # producer's two) stay open, however many requests there were; before, each
        # request left its own until garbage collection.
        assert len(raw.client_list()) <= clients + 2, "async views pile up Redis connections"
    finally:
        # Should the above fail, let its leftovers go here, not warn in whatever test runs
        # next: using the app on a new loop drops what it kept for the dead one.
        async def use_and_close() -> None:
            assert app.broker is not None
            await app.close()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            asyncio.run(use_and_close())
            gc.collect()


# -- delay_on_commit ------------------------------------------------------------------------------
def test_delay_on_commit_sends_on_commit_and_never_on_rollback(
        worker: Any, client: Any, app: AioQueue, raw: redis.Redis) -> None:
    from demo.models import Order

    before = last_sent(raw)
    declined = client.post("/orders?item=rolled-back&decline=1")
    assert declined.status_code == 402
    assert not Order.objects.filter(item="rolled-back").exists()
    assert last_sent(raw) == before, "a rolled-back transaction sent its task"

    created = client.post("/orders?item=pen")
    assert created.status_code == 201
    assert last_sent(raw) != before, "the committed transaction sent nothing"
    barrier(app)
    order = Order.objects.get(pk=created.json()["order"])
    assert order.confirmed
    assert app.AsyncResult(order.confirmation_task_id).get(timeout=10) == order.pk


def test_apply_async_on_commit_with_options_and_outside_a_transaction(
        worker: Any, app: AioQueue, raw: redis.Redis) -> None:
    from demo.models import Order
    from demo.tasks import send_confirmation
    from django.db import transaction

    with transaction.atomic(using="default"):
        order = Order.objects.create(item="mug")
        send_confirmation.apply_async_on_commit(args=(order.pk,), task_id=f"confirm-{order.pk}",
                                                using="default")
        before_commit = last_sent(raw)
    assert last_sent(raw) != before_commit
    assert app.AsyncResult(f"confirm-{order.pk}").get(timeout=10) == order.pk

    # No transaction (autocommit): sent at once, as Django's on_commit runs it at once.
    other = Order.objects.create(item="lamp")
    before = last_sent(raw)
    send_confirmation.delay_on_commit(other.pk)
    assert last_sent(raw) != before
    barrier(app)
    other.refresh_from_db()
    assert other.confirmed


# -- Django's Tasks framework ---------------------------------------------------------------------
def test_tasks_backend_runs_django_tasks_on_the_worker(
        worker: Any, client: Any, app: AioQueue) -> None:
    from demo.tasks import count_orders, greet

    response = client.post("/orders/count")
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "READY"
    result_id = body["result_id"]
    value = app.AsyncResult(result_id).get(timeout=10)  # the same id on both sides
    assert value["attempt"] == 1

    status = client.get(f"/orders/count/{result_id}").json()
    assert status["status"] == "SUCCESSFUL", status
    assert status["return_value"] == value
    result = count_orders.get_result(result_id)
    assert result.is_finished
    assert result.finished_at is not None and result.enqueued_at is not None
    assert result.kwargs == {"confirmed": True}
    assert result.worker_ids and result.attempts == 1

    hello = greet.enqueue("ada")  # an async def task: run on the worker's event loop
    assert app.AsyncResult(hello.id).get(timeout=10).startswith("hello ada")
    hello.refresh()
    assert hello.status == "SUCCESSFUL"
    assert hello.return_value.startswith("hello ada")


def test_tasks_backend_pending_revoked_and_unknown_results(worker: Any, app: AioQueue) -> None:
    from demo.tasks import count_orders
    from django.utils import timezone

    later = timezone.now() + timedelta(minutes=5)
    result = count_orders.using(run_after=later).enqueue(confirmed=False)
    pending = count_orders.get_result(result.id)
    assert pending.status == "READY"
    assert pending.kwargs == {"confirmed": False}
    assert pending.task.run_after is not None
    assert abs((pending.task.run_after - later).total_seconds()) < 0.01

    failing = count_orders.enqueue(no_such_argument=1)  # TypeError on the worker
    with pytest.raises(TypeError):
        app.AsyncResult(failing.id).get(timeout=10)
    failing.refresh()
    assert failing.status == "FAILED"
    assert [e.exception_class_path for e in failing.errors] == ["builtins.TypeError"]
    assert "no_such_argument" in failing.errors[0].traceback

    app.AsyncResult(result.id).revoke()
    result.refresh()
    assert result.status == "FAILED"
    assert [e.exception_class_path for e in result.errors] == ["aioqueue.errors.TaskRevoked"]

    try:
        from django.tasks.exceptions import TaskResultDoesNotExist
    except ImportError:
        from django_tasks.exceptions import TaskResultDoesNotExist
    with pytest.raises(TaskResultDoesNotExist):
        count_orders.get_result("no-such-result")


async def test_tasks_backend_from_async_code(worker: Any, app: AioQueue) -> None:
    from demo.tasks import count_orders

    result = await count_orders.aenqueue()
    assert (await app.AsyncResult(result.id).get(timeout=10))["attempt"] == 1
    await result.arefresh()
    assert result.status == "SUCCESSFUL"
    await app.close()  # this test's event loop ends here


# -- the worker fix-up ---------------------------------------------------------------------------
def test_worker_closes_old_connections_around_sync_tasks(worker: Any, app: AioQueue) -> None:
    from demo.tasks import db_connections_left_open

    counts = [db_connections_left_open.delay().get(timeout=10) for _ in range(3)]
    assert counts == [0, 0, 0]


def test_fixup_task_context_closes_connections_in_the_task_thread(
        project: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import django.core.cache
    import django.db

    import aioqueue.app
    from aioqueue.contrib.django import fixup, install

    # The apps made below would become the current app (@shared_task's): put it back after.
    monkeypatch.setattr(aioqueue.app, "_current_app", aioqueue.app._current_app)
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(django.db, "close_old_connections",
                        lambda: calls.append(("db", threading.get_ident())))
    monkeypatch.setattr(django.core.cache, "close_caches",
                        lambda: calls.append(("cache", threading.get_ident())))
    queue = AioQueue("fixup-test", broker="memory://")
    installed = install(queue)
    assert install(queue) is installed and fixup(queue) is installed  # once per app
    assert queue.task_contexts == [installed.task_context]

    @queue.task
    def noop() -> None:
        pass

    def run_task() -> None:
        with installed.task_context(noop, None):
            calls.append(("task", threading.get_ident()))

    thread = threading.Thread(target=run_task)
    thread.start()
    thread.join()
    assert [what for what, _ in calls] == ["db", "task", "db", "cache"]
    assert {ident for _, ident in calls} == {thread.ident}

    monkeypatch.delenv("DJANGO_SETTINGS_MODULE")
    assert fixup(AioQueue("no-django", broker="memory://")) is None


# -- configuration --------------------------------------------------------------------------------
def test_settings_autodiscovery_and_the_periodic_task(worker: Any, app: AioQueue) -> None:
    from demo.models import Order
    from demo.tasks import expire_unconfirmed_orders

    from aioqueue.contrib.django import installed_app_modules

    assert "demo" in installed_app_modules()
    assert {"demo.tasks.add", "demo.tasks.send_confirmation",
            "demo.tasks.expire_unconfirmed_orders"} <= set(app.tasks)
    assert app.conf.broker_url == os.environ["AIOQUEUE_BROKER"]  # CELERY_BROKER_URL
    entry = app.conf.beat_schedule["expire-unconfirmed-orders"]
    assert entry["task"] == "demo.tasks.expire_unconfirmed_orders"

    Order.objects.create(item="forgotten")
    assert expire_unconfirmed_orders.delay(older_than_s=0).get(timeout=10) >= 1
    assert not Order.objects.filter(item="forgotten").exists()


def test_tasks_backend_maps_django_priorities_onto_lanes(worker: Any, app: AioQueue) -> None:
    from demo.tasks import count_orders

    from aioqueue.contrib.django.backend import lane_of

    assert [lane_of(p) for p in (100, 1, 0, -1, -50, -100)] == [0, 0, 0, 1, 5, 9]
    low = count_orders.using(priority=-100).enqueue(confirmed=True)  # lane 9, still runs
    assert app.AsyncResult(low.id).get(timeout=10)["attempt"] == 1
    lanes = lanes_sent(app)
    assert 9 in lanes


def lanes_sent(app: AioQueue) -> set[int]:
    """The priorities sent to the default queue (its lanes set in Redis)."""
    import redis

    client = redis.Redis.from_url(app.conf.broker_url)
    try:
        return {int(m) for m in client.smembers(app.keys.lanes("default"))}
    finally:
        client.close()
