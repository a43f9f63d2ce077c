"""``AsyncResult[R]``: an awaitable handle on a task's result, and the per-process waiter.

``await handle`` waits without polling on the fast path: the producer's envelope names a
reply list (one per app per process); the worker pushes the finished record there in the
same atomic step as the ack, and one background listener per app pops replies for every
pending handle at once (``BLMPOP``). A handle made from a bare id in another process
(``app.AsyncResult(id)``) still works: it polls the stored record with bounded back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from ._time import from_epoch
from .errors import BrokerConnectionError, RemoteTaskError, SerializationError, TaskRevoked
from .message import READY_STATES, ResultRecord, Serializer, State

if TYPE_CHECKING:
    from .app import AioQueue
    from .broker import Broker

__all__ = ("AsyncResult", "ResultInfo", "ResultWaiter", "exception_from_record")

R = TypeVar("R")
log = logging.getLogger("aioqueue.result")


@dataclass(frozen=True, slots=True)
class ResultInfo:
    """A snapshot of a task's stored result."""

    id: str
    state: State
    #: The return value (SUCCESS), or the rebuilt exception (FAILURE, RETRY, REVOKED).
    result: Any = None
    traceback: str | None = None
    date_done: datetime | None = None
    retries: int = 0
    task: str | None = None
    worker: str | None = None


def exception_from_record(record: ResultRecord) -> BaseException:
    """Rebuild the task's exception: its own type when importable, else ``RemoteTaskError``."""
    message = record.exc_message or ""
    if record.state is State.REVOKED:
        return TaskRevoked(message or "revoked", task_name=record.task, task_id=record.id)
    type_name = record.exc_type or "builtins.Exception"
    exc: BaseException = RemoteTaskError(type_name, message, task_id=record.id)
    cls = _import_exception_type(type_name)
    if cls is not None:
        # A constructor that wants other arguments keeps the RemoteTaskError.
        with contextlib.suppress(Exception):
            exc = cls(*record.exc_args) if record.exc_args is not None else cls(message)
    if record.traceback:
        exc.add_note(f"Traceback on worker {record.worker or '?'}:\n{record.traceback}")
    return exc


def _import_exception_type(type_name: str) -> type[Exception] | None:
    module_name, _, qualname = type_name.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name or "builtins")
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        return None
    # Only exception classes: a record must not make us call arbitrary objects.
    if isinstance(obj, type) and issubclass(obj, Exception):
        return obj
    return None


class ResultWaiter:
    """Resolves every pending handle of one app from its reply list, in one listener."""

    #: Recent final records are kept, up to this many, so a handle awaited again (or a
    #: reply that arrives before its handle is awaited) resolves without a round trip.
    CACHE_SIZE = 20_000
    #: The listener keeps draining this long after the last send or wait.
    LINGER_S = 30.0
    #: How often waits older than this are checked against the stored records.
    SWEEP_S = 1.0

    def __init__(self, broker: Broker, serializer: Serializer, reply_to: str) -> None:
        self.broker = broker
        self.serializer = serializer
        self.reply_to = reply_to
        self._futures: dict[str, list[asyncio.Future[ResultRecord]]] = {}
        #: When the oldest wait on each id began (for the listener's safety sweep).
        self._since: dict[str, float] = {}
        self._recent: OrderedDict[str, ResultRecord] = OrderedDict()
        self._listener: asyncio.Task[None] | None = None
        self._last_activity = 0.0
        self._closed = False

    def expect(self) -> None:
        """Note that a message naming our reply list was sent: keep the listener draining."""
        self._last_activity = time.monotonic()
        if self._listener is None and not self._closed:
            # A background task rather than a task group: a producer (a FastAPI handler,
            # a script) has no group to host it; close() ends it.
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def wait(
        self, task_id: str, timeout_s: float | None, *, fast: bool, poll_s: float,
        poll_max_s: float,
    ) -> ResultRecord:
        """The final record of ``task_id``; raises ``TimeoutError`` after ``timeout_s``.

        ``fast`` handles (their reply comes to this process) just wait: the listener's
        periodic sweep is their safety net. Others poll the stored record with back-off.
        """
        recent = self._recent.get(task_id)
        if recent is not None:
            return recent
        future: asyncio.Future[ResultRecord] = asyncio.get_running_loop().create_future()
        waiting = self._futures.get(task_id)
        if waiting is None:
            self._futures[task_id] = [future]
            self._since[task_id] = time.monotonic()
        else:
            waiting.append(future)
        self.expect()
        if fast:
            try:
                if timeout_s is None:
                    return await future
                async with asyncio.timeout(timeout_s):
                    return await future
            except TimeoutError:
                raise TimeoutError(f"task {task_id} not ready after {timeout_s}s") from None
            finally:
                self._forget_future(task_id, future)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            interval = poll_s
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"task {task_id} not ready after {timeout_s}s")
                wait_s = interval if remaining is None else min(interval, remaining)
                done, _ = await asyncio.wait((future,), timeout=wait_s)
                if done:
                    return future.result()
                # The safety net: the reply may never come (a bare-id handle, a lost list).
                raw = await self.broker.get_result(task_id)
                if raw is not None:
                    record = self.serializer.decode_record(raw)
                    if record.state in READY_STATES:
                        self.resolve(record)
                        return record
                interval = min(interval * 2, poll_max_s)
        finally:
            self._forget_future(task_id, future)

    def _forget_future(self, task_id: str, future: asyncio.Future[ResultRecord]) -> None:
        waiting = self._futures.get(task_id)
        if waiting is not None:
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                del self._futures[task_id]
                self._since.pop(task_id, None)

    def resolve(self, record: ResultRecord) -> None:
        """Hand a final record to everyone waiting for it, and keep it for later waits."""
        waiting = self._futures.pop(record.id, None)
        self._since.pop(record.id, None)
        if waiting:
            for future in waiting:
                if not future.done():
                    future.set_result(record)
        self._recent[record.id] = record
        if len(self._recent) > self.CACHE_SIZE:
            self._recent.popitem(last=False)

    def discard(self, task_id: str) -> None:
        """Forget a cached record (the result was deleted)."""
        self._recent.pop(task_id, None)

    async def _sweep(self) -> None:
        """Read the stored records of long waits: the safety net for lost replies (a reply
        list lost with a Redis restart, a handle that was not the one sending the task)."""
        cutoff = time.monotonic() - self.SWEEP_S
        stale = [task_id for task_id, since in self._since.items() if since < cutoff]
        for start in range(0, len(stale), 500):
            chunk = stale[start:start + 500]
            for raw in await self.broker.get_results(chunk):
                if raw is not None:
                    record = self.serializer.decode_record(raw)
                    if record.state in READY_STATES:
                        self.resolve(record)
        for task_id in stale:
            if task_id in self._since:
                self._since[task_id] = time.monotonic()

    async def _listen(self) -> None:
        outage = False
        next_sweep = time.monotonic() + self.SWEEP_S
        try:
            while not self._closed and (
                self._futures or time.monotonic() - self._last_activity < self.LINGER_S
            ):
                try:
                    if time.monotonic() >= next_sweep:
                        next_sweep = time.monotonic() + self.SWEEP_S
                        await self._sweep()
                    replies = await self.broker.wait_replies(self.reply_to, self.SWEEP_S)
                except BrokerConnectionError as exc:
                    if not outage:
                        log.warning("result listener: %s; retrying", exc)
                        outage = True
                    await asyncio.sleep(0.5)
                    continue
                if outage:
                    log.warning("result listener: broker reachable again")
                    outage = False
                for raw in replies:
                    try:
                        self.resolve(self.serializer.decode_record(raw))
                    except SerializationError as exc:
                        log.error("dropping an undecodable reply: %s", exc)
        finally:
            self._listener = None

    async def close(self) -> None:
        """Stop the listener (pending waits fall back to polling until they time out)."""
        self._closed = True
        listener = self._listener
        if listener is not None:
            await self.broker.interrupt_replies()
            try:
                await asyncio.wait_for(asyncio.shield(listener), 3.0)
            except (TimeoutError, asyncio.CancelledError):
                listener.cancel()


class AsyncResult(Generic[R]):
    """A handle on one task's result. ``await handle`` is ``await handle.get()``."""

    __slots__ = ("_fast", "app", "id", "task_name")

    def __init__(
        self, task_id: str, app: AioQueue, task_name: str | None = None, *, fast: bool = False
    ) -> None:
        self.id = task_id
        self.app = app
        self.task_name = task_name
        #: True when this process's reply list will receive the result (no polling needed).
        self._fast = fast

    def __repr__(self) -> str:
        return f"<AsyncResult {self.task_name or 'task'}[{self.id}]>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __await__(self) -> Generator[Any, None, R]:
        return self.get().__await__()

    @overload
    async def get(self, timeout: float | None = None, propagate: Literal[True] = True) -> R: ...

    @overload
    async def get(
        self, timeout: float | None = None, *, propagate: Literal[False]
    ) -> R | BaseException: ...

    async def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Wait for the result and return it.

        A failed task re-raises its exception (its own type when importable here, else
        :class:`~aioqueue.errors.RemoteTaskError`); a revoked one raises
        :class:`~aioqueue.errors.TaskRevoked`. With ``propagate=False`` the exception is
        returned instead. Raises ``TimeoutError`` when not ready within ``timeout`` seconds.
        """
        record = await self.app._wait_for(self.id, timeout, fast=self._fast)
        if record.state is State.SUCCESS:
            return record.result
        exc = exception_from_record(record)
        if propagate:
            raise exc
        return exc

    async def _record(self) -> ResultRecord | None:
        return await self.app._load_record(self.id)

    async def info(self) -> ResultInfo:
        """A snapshot: state, result or exception, traceback, date_done, retries."""
        record = await self._record()
        if record is None:
            return ResultInfo(self.id, State.PENDING, task=self.task_name)
        value = record.result
        if record.state in (State.FAILURE, State.RETRY, State.REVOKED):
            value = exception_from_record(record)
        return ResultInfo(
            id=self.id,
            state=record.state,
            result=value,
            traceback=record.traceback,
            date_done=None if record.date_done is None else from_epoch(record.date_done),
            retries=record.retries,
            task=record.task or self.task_name,
            worker=record.worker,
        )

    async def state(self) -> State:
        """The current state (PENDING when nothing is stored yet)."""
        record = await self._record()
        return State.PENDING if record is None else record.state

    async def ready(self) -> bool:
        """True once the task has finished (SUCCESS, FAILURE or REVOKED)."""
        return await self.state() in READY_STATES

    async def successful(self) -> bool:
        """True if the task finished with SUCCESS."""
        return await self.state() is State.SUCCESS

    async def failed(self) -> bool:
        """True if the task finished with FAILURE."""
        return await self.state() is State.FAILURE

    async def forget(self) -> None:
        """Delete the stored result."""
        self.app.waiter.discard(self.id)
        await self.app.broker.delete_result(self.id)

    async def revoke(self, terminate: bool = False) -> None:
        """Revoke the task: never run it; with ``terminate`` cancel it where it runs."""
        await self.app.revoke(self.id, terminate=terminate)
