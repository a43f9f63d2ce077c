"""Checked by mypy (``make typecheck``/``make test``), never run: the API's static types."""

from __future__ import annotations

from typing import Any, assert_type

from aioqueue import AioQueue, AsyncResult, State, SyncResult, Task

app = AioQueue("typing", broker="memory://")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="typing.concat", queue="q")
def concat(a: str, b: str) -> str:
    return a + b


@app.task(bind=True)
async def bound(self: Task[..., Any], n: int) -> float:
    return float(n)


async def producer() -> None:
    assert_type(add.name, str)
    handle = await add.delay(1, 2)
    assert_type(handle, AsyncResult[int])
    assert_type(await handle, int)
    assert_type(await handle.get(timeout=1.0), int)
    assert_type(await handle.get(propagate=False), int | BaseException)
    assert_type(await handle.state(), State)
    assert_type(await (await concat.delay("a", "b")), str)
    assert_type(await (await bound.delay(3)), float)
    handles = await add.delay_many([(1, 2)])
    assert_type(handles, list[AsyncResult[int]])
    await add.delay("one", 2)  # type: ignore[arg-type]
    await add.delay(1)  # type: ignore[call-arg]


def sync_view() -> None:
    # A Django/Flask view: Celery's spelling, blocking.
    res = add.delay(1, 2)
    assert_type(res, SyncResult[int])
    assert_type(res.get(timeout=10), int)
    assert_type(res.state, State)
    assert_type(res.ready(), bool)
    assert_type(concat.apply_async(("a", "b"), countdown=1).get(), str)
