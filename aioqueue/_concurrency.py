"""The one place where synchronous code meets the event loop.

Two bridges, named by direction:

* :func:`run_in_thread` -- a plain ``def`` task runs in a worker thread under a capacity
  limiter, so it never blocks the loop. A thread cannot be killed: when a sync task's time
  limit passes (or it is revoked with ``terminate``), the worker stops waiting for it
  (``abandon_on_cancel``), records the failure and frees the slot, but the thread runs on
  to its end and its return value is discarded. Sync tasks that may hang should check a
  deadline themselves.
* :func:`run_main` -- the CLI's entry into async code, on uvloop when it is installed.
  ``asyncio.Runner(loop_factory=...)`` rather than an event-loop policy (deprecated).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.to_thread

__all__ = ("new_thread_limiter", "run_in_thread", "run_main")

T = TypeVar("T")


def new_thread_limiter(threads: int) -> anyio.CapacityLimiter:
    """A limiter for sync tasks' threads."""
    return anyio.CapacityLimiter(threads)


async def run_in_thread(
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    limiter: anyio.CapacityLimiter,
) -> T:
    """Run ``fn(*args, **kwargs)`` in a thread; cancelling abandons (does not kill) it.

    Context variables (the task's ``request``) are copied into the thread by anyio.
    """
    call = functools.partial(fn, *args, **kwargs)
    return await anyio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=limiter)


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


def loop_name() -> str:
    """The running loop's implementation, for the banner."""
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__.split('.')[0]}"
