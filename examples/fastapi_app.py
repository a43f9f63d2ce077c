"""A FastAPI service that enqueues tasks from its handlers and awaits their results.

Run it from this directory, next to a worker::

    cd examples
    aioqueue worker tasks:app -c 100 -l info &
    uvicorn fastapi_app:api --port 8000

or, with no separate worker, run one inside the web process on the same event loop::

    EMBED_WORKER=1 uvicorn fastapi_app:api --port 8000

Endpoints:

* ``POST /add?x=1&y=2`` -- enqueue, await the result (``timeout`` seconds, default 5) and
  answer ``{"task_id": ..., "result": 3}``; 504 if no worker finished it in time.
* ``POST /reports/{n}`` -- enqueue and answer 202 with the task id at once.
* ``GET /tasks/{task_id}`` -- the task's state and, once finished, its result or error.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any

import tasks
from fastapi import FastAPI, HTTPException, Query, status

from aioqueue import State


def embed_worker_enabled() -> bool:
    """``EMBED_WORKER=1`` (read at startup) runs a worker inside this process."""
    return os.environ.get("EMBED_WORKER", "").strip().lower() in {"1", "true", "yes", "on"}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """Close the queue's connections on shutdown; optionally run an embedded worker."""
    async with AsyncExitStack() as stack:
        # Registered first, so it runs last: after the embedded worker has stopped.
        stack.push_async_callback(tasks.app.close)
        if embed_worker_enabled():
            # The embedding pattern: the worker runs as a task on uvicorn's own event loop.
            # On shutdown it stops fetching, lets running tasks finish (shutdown_timeout)
            # and hands any leftovers back to the queue.
            await stack.enter_async_context(tasks.app.worker(concurrency=50))
        yield


api = FastAPI(title="aioqueue example", lifespan=lifespan)


@api.post("/add")
async def add(
    x: int,
    y: int,
    timeout: Annotated[float, Query(gt=0, le=60, description="Seconds to wait for it.")] = 5.0,
) -> dict[str, Any]:
    """Enqueue ``add(x, y)`` and wait for its result."""
    handle = await tasks.add.delay(x, y)
    try:
        result = await handle.get(timeout=timeout)
    except TimeoutError:
        raise HTTPException(
            status.HTTP_504_GATEWAY_TIMEOUT,
            detail={"task_id": handle.id, "error": f"no result after {timeout:g}s"},
        ) from None
    return {"task_id": handle.id, "result": result}


@api.post("/reports/{n}", status_code=status.HTTP_202_ACCEPTED)
async def create_report(n: int) -> dict[str, Any]:
    """Enqueue a report and answer at once; poll ``status_url`` for the result."""
    handle = await tasks.fetch_report.delay(n)
    return {"task_id": handle.id, "status_url": f"/tasks/{handle.id}"}


@api.get("/tasks/{task_id}")
async def task_status(task_id: str) -> dict[str, Any]:
    """The state of any task by id (PENDING when unknown or not started yet)."""
    info = await tasks.app.AsyncResult(task_id).info()
    body: dict[str, Any] = {
        "task_id": info.id,
        "task": info.task,
        "state": info.state.value,
        "result": None,
        "error": None,
        "retries": info.retries,
        "date_done": info.date_done.isoformat() if info.date_done else None,
    }
    if info.state is State.SUCCESS:
        body["result"] = info.result
    elif isinstance(info.result, BaseException):
        body["error"] = f"{type(info.result).__name__}: {info.result}"
    return body
