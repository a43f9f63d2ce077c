"""The examples work: the FastAPI service against real Redis, and the end-to-end demo.

The examples are scripts run from ``examples/`` (``aioqueue worker tasks:app``, ``uvicorn
fastapi_app:api``), so that directory goes on ``sys.path`` and they are imported as the
top-level modules ``tasks`` and ``fastapi_app``, exactly as those commands import them.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from aioqueue import AioQueue

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _import_example(name: str) -> ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    module = importlib.import_module(name)
    assert Path(module.__file__ or "").parent == EXAMPLES, f"{name} imported from elsewhere"
    return module


tasks = _import_example("tasks")
fastapi_app = _import_example("fastapi_app")


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[AioQueue]:
    """The example app, pointed at the test Redis (its broker is made lazily, on first use)."""
    app: AioQueue = tasks.app
    original = app.conf.broker_url
    await app.close()  # forget any broker made for another URL or another event loop
    app.conf.update(broker_url=redis_url)
    try:
        yield app
    finally:
        await app.close()
        app.conf.update(broker_url=original)


@pytest.fixture
async def client(queue: AioQueue) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the FastAPI example (ASGITransport does not run the lifespan)."""
    transport = httpx.ASGITransport(app=fastapi_app.api)
    async with httpx.AsyncClient(transport=transport, base_url="http://example") as http:
        yield http


async def poll(client: httpx.AsyncClient, task_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """GET /tasks/{id} until the task is finished."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get(f"/tasks/{task_id}")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        if body["state"] in ("SUCCESS", "FAILURE", "REVOKED"):
            return body
        assert time.monotonic() < deadline, f"task {task_id} still {body['state']}"
        await asyncio.sleep(0.02)


async def test_add_awaits_the_result(queue: AioQueue, client: httpx.AsyncClient) -> None:
    async with queue.worker(concurrency=50):
        response = await client.post("/add", params={"x": 1, "y": 2})
        assert response.status_code == 200
        body = response.json()
        assert body["result"] == 3
        status = await client.get(f"/tasks/{body['task_id']}")
    assert status.status_code == 200
    info = status.json()
    assert info["task_id"] == body["task_id"]
    assert info["task"] == "examples.add"
    assert info["state"] == "SUCCESS"
    assert info["result"] == 3
    assert info["error"] is None
    assert info["date_done"] is not None


async def test_add_without_worker_times_out_with_504_and_runs_later(
    queue: AioQueue, client: httpx.AsyncClient
) -> None:
    start = time.monotonic()
    response = await client.post("/add", params={"x": 40, "y": 2, "timeout": 0.2})
    assert time.monotonic() - start < 5
    assert response.status_code == 504
    detail = response.json()["detail"]
    assert "no result after 0.2s" in detail["error"]
    task_id = detail["task_id"]

    pending = await client.get(f"/tasks/{task_id}")
    assert pending.json()["state"] == "PENDING"
    assert pending.json()["result"] is None

    # The call was queued, not lost: a worker that starts later runs it.
    async with queue.worker(concurrency=5):
        info = await poll(client, task_id)
    assert info["state"] == "SUCCESS"
    assert info["result"] == 42


async def test_report_is_accepted_at_once_and_polled(
    queue: AioQueue, client: httpx.AsyncClient
) -> None:
    response = await client.post("/reports/7")
    assert response.status_code == 202
    body = response.json()
    task_id = body["task_id"]
    assert body["status_url"] == f"/tasks/{task_id}"
    # Accepted before any worker exists: the report is still to do.
    assert (await client.get(body["status_url"])).json()["state"] == "PENDING"

    async with queue.worker(concurrency=50):
        info = await poll(client, task_id)
    assert info["state"] == "SUCCESS"
    assert info["task"] == "examples.fetch_report"
    report = info["result"]
    assert report["report"] == 7
    assert report["rows"] == 10
    assert report["total"] == sum((7 * 7 + i) % 101 for i in range(10))


async def test_many_reports_concurrently(queue: AioQueue, client: httpx.AsyncClient) -> None:
    async with queue.worker(concurrency=50):
        accepted = await asyncio.gather(*(client.post(f"/reports/{n}") for n in range(40)))
        assert {r.status_code for r in accepted} == {202}
        infos = await asyncio.gather(*(poll(client, r.json()["task_id"]) for r in accepted))
    assert [info["result"]["report"] for info in infos] == list(range(40))


async def test_unknown_task_id_is_pending(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks/no-such-task")
    assert response.status_code == 200
    assert response.json() == {
        "task_id": "no-such-task", "task": None, "state": "PENDING", "result": None,
        "error": None, "retries": 0, "date_done": None,
    }


async def test_failed_task_shows_its_error(queue: AioQueue, client: httpx.AsyncClient) -> None:
    async with queue.worker(concurrency=5):
        handle = await tasks.add.delay("one", 2)  # str + int: TypeError on the worker
        with pytest.raises(TypeError):
            await handle.get(timeout=10)
    info = (await client.get(f"/tasks/{handle.id}")).json()
    assert info["state"] == "FAILURE"
    assert info["result"] is None
    assert info["error"].startswith("TypeError: ")


async def test_bad_parameters_are_rejected(client: httpx.AsyncClient) -> None:
    assert (await client.post("/add", params={"x": "one", "y": 2})).status_code == 422
    assert (await client.post("/add", params={"x": 1})).status_code == 422
    assert (await client.post("/add", params={"x": 1, "y": 2, "timeout": 0})).status_code == 422
    assert (await client.post("/reports/seven")).status_code == 422


async def test_lifespan_with_embedded_worker(
    queue: AioQueue, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBED_WORKER", "1")
    async with fastapi_app.lifespan(fastapi_app.api):
        # No other worker: the one the lifespan started on this loop answers.
        response = await client.post("/add", params={"x": 20, "y": 22, "timeout": 10})
        assert response.status_code == 200
        assert response.json()["result"] == 42
    # Shutdown closed the app's connections.
    assert queue._broker is None


async def test_lifespan_without_embedded_worker_only_closes(
    queue: AioQueue, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EMBED_WORKER", raising=False)
    async with fastapi_app.lifespan(fastapi_app.api):
        response = await client.post("/add", params={"x": 1, "y": 1, "timeout": 0.1})
        assert response.status_code == 504
    assert queue._broker is None


async def test_sync_and_bound_tasks(queue: AioQueue) -> None:
    async with queue.worker(concurrency=10):
        digest = await (await tasks.checksum.delay("hello")).get(timeout=10)
        handle = await tasks.notify.delay(7)
        note = await handle.get(timeout=10)
    expected = b"hello"
    for _ in range(1_000):
        expected = hashlib.sha256(expected).digest()
    assert digest == expected.hex()
    # Bound: it saw its own id; it failed once and was retried under the same id.
    assert note["task_id"] == handle.id
    assert note["user_id"] == 7
    assert note["attempts"] == 2
    info = await handle.info()
    assert info.state == "SUCCESS"
    assert info.retries == 1


def test_demo_runs_end_to_end() -> None:
    """``make demo``: its own redis, a CLI worker, uvicorn and HTTP traffic; exit 0."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py")],
        capture_output=True, text=True, timeout=90, check=False,
        env={**_clean_env(), "COLUMNS": "120"},
    )
    elapsed = time.monotonic() - start
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert elapsed < 60, f"the demo took {elapsed:.1f}s\n{output}"
    assert "add(1, 2) = 3" in output
    assert "add(20, 22) = 42" in output
    assert "200 tasks completed" in output
    assert "tasks done │ 200/200" in output
    assert "[0, 2, 4, 6, 8]" in output
    assert "'attempts': 2" in output
    assert "\n5\n" in output  # aioqueue call ... --wait printed the sum
    assert "succeeded in" in output  # the worker's log
    assert "worker exited 0" in output


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("EMBED_WORKER", None)
    env.pop("AIOQUEUE_BROKER", None)
    return env
