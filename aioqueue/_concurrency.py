"""The one place where synchronous code meets the event loop.

Two bridges, named by direction:

* :func:`run_in_thread` -- a plain ``def`` task runs in a worker thread under a capacity
  limiter, so it never blocks the loop. A thread cannot be killed: when a sync task's time
  limit passes (or it is revoked with ``terminate``), the worker stops waiting for it
  (``abandon_on_cancel``), records the failure and frees the task's concurrency slot, but
  the thread runs on to its end and its return value is discarded. That thread keeps its
  place in the thread limiter until it really ends, so abandoned threads can never add up
  past the limit: new sync tasks wait for a thread instead. Sync tasks that may hang should
  check a deadline themselves.
* :func:`run_main` -- the CLI's entry into async code, on uvloop when it is installed.
  ``asyncio.Runner(loop_factory=...)`` rather than an event-loop policy (deprecated).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.to_thread

__all__ = ("new_thread_limiter", "run_in_thread", "run_main")

T = TypeVar("T")


def new_thread_limiter(threads: int) -> anyio.CapacityLimiter:
    """A limiter for sync tasks' threads."""
    return anyio.CapacityLimiter(threads)


#: anyio's own limiter for run_sync is not the one that bounds our threads (ours is held
#: for a thread's whole life, see below), so this one only has to never be the bottleneck.
_UNBOUNDED = 1_000_000


async def run_in_thread(
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    limiter: anyio.CapacityLimiter,
) -> T:
    """Run ``fn(*args, **kwargs)`` in a thread; cancelling abandons (does not kill) it.

    The thread's token of ``limiter`` is released when the thread ends, not when the caller
    stops waiting for it: anyio releases its limiter when a wait is abandoned, which let
    abandoned threads grow without bound. Context variables (the task's ``request``) are
    copied into the thread by anyio.
    """
    borrower = object()
    await limiter.acquire_on_behalf_of(borrower)
    loop = asyncio.get_running_loop()
    # Exactly one side releases the token: the thread when it ran, else the caller. A
    # cancelled caller cannot tell whether the thread was already handed its work, so the
    # two agree under a lock.
    lock = threading.Lock()
    state = {"started": False, "given_up": False}

    def release() -> None:
        limiter.release_on_behalf_of(borrower)

    def call() -> T:
        with lock:
            if state["given_up"]:
                raise anyio.get_cancelled_exc_class()()
            state["started"] = True
        try:
            return fn(*args, **kwargs)
        finally:
            loop.call_soon_threadsafe(release)

    try:
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True,
                                              limiter=_unbounded_limiter())
    except BaseException:
        with lock:
            never_ran = not state["started"]
            state["given_up"] = True
        if never_ran:
            release()
        raise


_limiters: dict[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = {}


def _unbounded_limiter() -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        _limiters.clear()  # one loop at a time in practice; never keep dead loops alive
        limiter = _limiters[loop] = anyio.CapacityLimiter(_UNBOUNDED)
    return limiter


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # Windows, or a platform without wheels: the stdlib loop works too
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_main(main: Callable[[], Coroutine[Any, Any, T]], *, use_uvloop: bool = True) -> T:
    """Run ``main()`` to completion on a fresh event loop (uvloop when available)."""
    factory = _loop_factory() if use_uvloop else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())
