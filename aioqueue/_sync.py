"""Sync callers: ``add.delay(1, 2).get(timeout=10)`` from a Django or Flask view.

Code without a running event loop (a WSGI view, a management command, a script, a thread
of gunicorn) reaches the broker through the *portal*: one event loop per process, on a
daemon thread, started on first use and started again in a forked child. A sync call
hands a coroutine to that loop and blocks on its result, so:

* many threads share one connection set (the portal's), safely: only the portal's thread
  ever touches it;
* it works while another event loop runs in another thread (the portal's connections,
  waiter and reply list are its own: :meth:`AioQueue._portal_connections`);
* after ``fork()`` (prefork servers) the child makes a new portal, since threads do not
  survive a fork.

:class:`SyncResult` is Celery's ``AsyncResult`` (blocking ``get``, ``state``, ``ready()``,
``result``, ``traceback``...). It is also what ``delay()`` is typed to return: in async
code ``delay()`` returns a :class:`PendingSend` (a ``SyncResult`` subclass) that sends
when awaited and refuses the blocking API with the right spelling, so a Celery habit in
async code fails at once instead of silently doing nothing.
"""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Generator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from .message import READY_STATES, State

if TYPE_CHECKING:
    from .app import AioQueue
    from .result import AsyncResult

__all__ = ("MustAwait", "PendingSend", "SyncResult", "in_async_context", "portal")

R = TypeVar("R")
T = TypeVar("T")


def in_async_context() -> bool:
    """True when this thread is running an event loop (the caller could ``await``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Portal:
    """One event loop on a daemon thread, per process, for sync callers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._thread_id = 0

    @property
    def running_loop(self) -> asyncio.AbstractEventLoop | None:
        """The portal's loop, if one was started (maybe in a parent process: only
        compare it with the running loop)."""
        return self._loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The portal's loop if it runs in this process (for ``AioQueue.broker``)."""
        return self._loop if self._pid == os.getpid() else None

    def _ensure(self) -> asyncio.AbstractEventLoop:
        loop = self.loop
        if loop is not None:
            return loop
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: a new thread
                started = threading.Event()
                holder: list[asyncio.AbstractEventLoop] = []

                def run() -> None:
                    self._thread_id = threading.get_ident()
                    new = _new_loop()
                    asyncio.set_event_loop(new)
                    holder.append(new)
                    started.set()
                    new.run_forever()

                threading.Thread(target=run, name="aioqueue-sync-portal", daemon=True).start()
                started.wait()
                self._loop, self._pid = holder[0], os.getpid()
            assert self._loop is not None
            return self._loop

    def call(self, make: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``await make()`` on the portal's loop and block until it is done."""
        if in_async_context():
            raise RuntimeError(
                f"{what} blocks, and this thread runs an event loop: in async code write "
                f"`await` with the async handle (e.g. `await handle.get()`)")
        loop = self._ensure()
        if threading.get_ident() == self._thread_id:
            raise RuntimeError(f"{what} called from the sync portal's own thread")

        async def run() -> T:
            return await make()  # made here, on the portal's thread: handles live there

        return asyncio.run_coroutine_threadsafe(run(), loop).result()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


#: The process's portal (see the module docstring).
portal = _Portal()


class SyncResult(Generic[R]):
    """A blocking handle on one task's result: Celery's ``AsyncResult``, for sync code.

    ``add.delay(1, 2)`` returns one when called without a running event loop;
    ``app.AsyncResult(task_id)`` too. ``get(timeout=...)`` waits for the result; ``state``,
    ``status``, ``result``, ``info``, ``traceback``, ``date_done`` read the stored record
    each time they are read, as in Celery.
    """

    __slots__ = ("_handle",)

    def __init__(self, handle: AsyncResult[R]) -> None:
        self._handle = handle

    # -- identity ----------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._handle.id

    @property
    def task_id(self) -> str:
        """Celery's other name for :attr:`id`."""
        return self._handle.id

    @property
    def name(self) -> str | None:
        """The task's name, when known."""
        return self._handle.task_name

    @property
    def app(self) -> AioQueue:
        return self._handle.app

    def __str__(self) -> str:
        return self.id  # as Celery's: str(result) is the task id

    def __repr__(self) -> str:
        return f"<SyncResult {self.name or 'task'}[{self.id}]>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __await__(self) -> Generator[Any, None, AsyncResult[R]]:
        # ``await`` in async code on a handle made in sync code: the async handle.
        from .result import AsyncResult

        async def async_handle() -> AsyncResult[R]:
            return AsyncResult(self.id, self.app, self.name)

        return async_handle().__await__()

    # -- waiting -----------------------------------------------------------------------------
    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float | None = None) -> R:
        """Wait for the result and return it (re-raising a failure when ``propagate``).

        Raises ``TimeoutError`` when not ready within ``timeout`` seconds. ``interval`` is
        accepted for Celery's signature: results are pushed, nothing polls at an interval.
        """
        handle = self._handle
        result: R = portal.call(lambda: handle.get(timeout, propagate=propagate),  # type: ignore[call-overload]
                                "SyncResult.get()")
        return result

    def wait(self, timeout: float | None = None, propagate: bool = True,
             interval: float | None = None) -> R:
        """Celery's older name for :meth:`get`."""
        return self.get(timeout, propagate, interval)

    # -- reading the stored record -------------------------------------------------------------
    # Each call builds its coroutine inside a lambda: the handle's methods are resolved on
    # the portal's thread, where they are coroutine methods (see aioqueue._dual).
    def _info(self) -> Any:
        handle = self._handle
        return portal.call(lambda: handle.info(), "reading a SyncResult")

    @property
    def state(self) -> State:
        """The current state: ``res.state == "SUCCESS"`` works (State is a str)."""
        handle = self._handle
        state: State = portal.call(lambda: handle.state(), "SyncResult.state")
        return state

    @property
    def status(self) -> State:
        """Celery's other name for :attr:`state`."""
        return self.state

    @property
    def result(self) -> Any:
        """The return value, the exception of a failed task, or None while pending."""
        return self._info().result

    @property
    def info(self) -> Any:
        """As :attr:`result` (Celery: also the meta of a custom state)."""
        return self._info().result

    @property
    def traceback(self) -> str | None:
        return self._info().traceback  # type: ignore[no-any-return]

    @property
    def date_done(self) -> datetime | None:
        return self._info().date_done  # type: ignore[no-any-return]

    @property
    def retries(self) -> int:
        return self._info().retries  # type: ignore[no-any-return]

    def ready(self) -> bool:
        """True once the task has finished (SUCCESS, FAILURE or REVOKED)."""
        return self.state in READY_STATES

    def successful(self) -> bool:
        return self.state is State.SUCCESS

    def failed(self) -> bool:
        return self.state is State.FAILURE

    # -- acting --------------------------------------------------------------------------------
    def forget(self) -> None:
        """Delete the stored result."""
        handle = self._handle
        portal.call(lambda: handle.forget(), "SyncResult.forget()")

    def revoke(self, terminate: bool = False) -> None:
        """Revoke the task: never run it; with ``terminate`` cancel it where it runs."""
        handle = self._handle
        portal.call(lambda: handle.revoke(terminate=terminate), "SyncResult.revoke()")


class MustAwait(Generic[T]):
    """An awaitable that warns when dropped unawaited (its work would silently not happen)."""

    __slots__ = ("_coro", "_what")

    def __init__(self, coro: Coroutine[Any, Any, T] | None, what: str = "") -> None:
        self._coro = coro
        self._what = what

    @classmethod
    def done(cls) -> MustAwait[Any]:
        """One whose work is already done (a blocking call from a thread)."""
        return cls(None)

    def __await__(self) -> Generator[Any, None, T | None]:
        coro, self._coro = self._coro, None
        if coro is None:
            return None
        return (yield from coro.__await__())

    def __del__(self) -> None:
        coro = getattr(self, "_coro", None)
        if coro is not None:
            coro.close()
            warnings.warn(f"{self._what} was never awaited, so it did nothing: write "
                          f"`await {self._what}` in an async def task", RuntimeWarning,
                          stacklevel=2)


class PendingSend(SyncResult[R]):
    """What ``delay()``/``apply_async()`` return in async code: ``await`` it to send.

    Awaiting gives the :class:`~aioqueue.AsyncResult`. The blocking API of
    :class:`SyncResult` raises at once with the async spelling, and one never awaited
    warns (the task was not sent), rather than leaving a Celery habit silently broken.
    """

    __slots__ = ("_send", "_what")

    def __init__(self, send: Coroutine[Any, Any, AsyncResult[R]], what: str) -> None:
        self._send: Coroutine[Any, Any, AsyncResult[R]] | None = send
        self._what = what

    def __await__(self) -> Generator[Any, None, AsyncResult[R]]:
        send, self._send = self._send, None
        if send is None:
            raise RuntimeError(f"{self._what} was already awaited: it sends once")
        return send.__await__()

    def __del__(self) -> None:
        send = getattr(self, "_send", None)
        if send is not None:
            send.close()  # no second warning about the coroutine inside
            warnings.warn(f"{self._what} was never awaited, so the task was NOT sent: write "
                          f"`handle = await {self._what}` in async code", RuntimeWarning,
                          stacklevel=2)

    def __repr__(self) -> str:
        return f"<PendingSend {self._what}: await it to send>"

    # By identity: asyncio.gather() puts awaitables in a dict.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def _refuse(self, what: str) -> NoReturn:
        raise TypeError(
            f"{self._what} in async code returns something to await, not a result: write "
            f"`handle = await {self._what}` and then `await handle` (the result) or "
            f"`await handle.{what}`")

    @property
    def _handle(self) -> NoReturn:  # type: ignore[override]
        self._refuse("get()")

    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float | None = None) -> NoReturn:
        self._refuse("get()")

    @property
    def state(self) -> NoReturn:
        self._refuse("state()")

    @property
    def id(self) -> NoReturn:
        self._refuse("id")

    def ready(self) -> NoReturn:
        self._refuse("ready()")
