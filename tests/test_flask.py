"""The Flask example (``examples/flask``) against a real worker: tasks run in the app context.

``examples/flask`` goes on ``sys.path`` and ``app`` is imported as ``flask --app app`` and
``aioqueue worker app:aioqueue_app`` import it (task names follow the module name). The
worker runs from that directory with ``AIOQUEUE_BROKER`` pointed at the session's
redis-server; requests go through Flask's test client, which calls the views from this
(loop-less) thread, as a WSGI server does.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from aioqueue.testing import RedisServer
from tests.cli_worker import cli_worker

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flask"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def example(redis_server: RedisServer) -> Iterator[ModuleType]:
    """The example module ``app``, its aioqueue app on the session's Redis."""
    assert redis_server.command("FLUSHALL") == b"+OK"
    saved = os.environ.get("AIOQUEUE_BROKER")
    os.environ["AIOQUEUE_BROKER"] = redis_server.url
    sys.path.insert(0, str(EXAMPLE))
    try:
        assert "app" not in sys.modules, "another module named app is already imported"
        module = importlib.import_module("app")
        assert Path(module.__file__ or "").parent == EXAMPLE, "app imported from elsewhere"
        yield module
        asyncio.run(module.aioqueue_app.close())
    finally:
        sys.modules.pop("app", None)
        sys.path.remove(str(EXAMPLE))
        if saved is None:
            os.environ.pop("AIOQUEUE_BROKER", None)
        else:
            os.environ["AIOQUEUE_BROKER"] = saved


@pytest.fixture(scope="module")
def worker(example: ModuleType, redis_server: RedisServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    """``aioqueue worker app:aioqueue_app`` run from the example directory; SIGTERM at the end."""
    log_path = tmp_path_factory.mktemp("flask-worker") / "worker.log"
    path = os.pathsep.join(p for p in (str(EXAMPLE), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "AIOQUEUE_BROKER": redis_server.url, "PYTHONPATH": path}
    with cli_worker(["app:aioqueue_app", "-l", "info"], cwd=EXAMPLE, env=env,
                    log_path=log_path) as process:
        yield process


@pytest.fixture
def client(example: ModuleType) -> Any:
    return example.app.test_client()


def test_view_enqueues_and_a_later_request_reads_the_result(
        worker: Any, client: Any, example: ModuleType) -> None:
    response = client.post("/add?x=2&y=3")
    assert response.status_code == 202
    task_id = response.get_json()["task_id"]
    assert example.aioqueue_app.AsyncResult(task_id).get(timeout=10) == 5

    status = client.get(f"/tasks/{task_id}").get_json()
    assert status == {"task_id": task_id, "state": "SUCCESS", "result": 5, "error": None}
    assert client.get("/tasks/no-such-task").get_json()["state"] == "PENDING"


def test_tasks_see_current_app(worker: Any, client: Any, example: ModuleType) -> None:
    response = client.post("/greet/ada")
    assert response.status_code == 202
    task_id = response.get_json()["task_id"]
    assert example.aioqueue_app.AsyncResult(task_id).get(timeout=10) == (
        "Hello, ada! (from app)")
    assert client.get(f"/tasks/{task_id}").get_json()["result"] == "Hello, ada! (from app)"

    # An async def task, on the worker's event loop: the context is there too.
    assert example.app_config.delay("GREETING").get(timeout=10) == "Hello"


def test_init_app_registers_once(example: ModuleType) -> None:
    from aioqueue.contrib.flask import init_app

    queue = example.aioqueue_app
    assert example.app.extensions["aioqueue"] is queue
    contexts = list(queue.task_contexts)
    assert init_app(queue, example.app) is queue
    assert queue.task_contexts == contexts
    with queue.task_contexts[0](example.greet, None):
        assert example.greet("bob") == "Hello, bob! (from app)"  # run here, in the context
