"""``AsyncResult[R]``: an awaitable handle on a task's result, and the per-process waiter.

How ``await handle`` finds its result:

* **Replies.** A message sent by this process names its app's reply list (one per app per
  process; a forked child rolls a new one). The worker pushes the final record there in the
  same atomic step as the ack. One listener task per app pops replies (``BLMPOP``) and
  resolves every waiting handle at once. The listener starts when such a handle is first
  awaited. It runs while this process holds a live handle whose reply comes here (or a
  wait is pending), and stops after its current ``BLMPOP`` (at most
  :attr:`ResultWaiter.BLOCK_S`) once none is left. A fire-and-forget sender never starts
  it: its replies stay in Redis until the list's TTL.
* **Only wanted replies.** The waiter counts live handles per task id (a handle registers in
  ``__init__`` and unregisters in ``__del__``). A reply for an id with neither a live handle
  nor a pending wait is dropped after reading only its id: its result is never decoded or
  kept. The records it does keep (replies that arrived before their handle was awaited, and
  results already returned, for awaiting again) live only as long as their handle. They are
  also capped in bytes (:attr:`ResultWaiter.CACHE_MAX_BYTES`).
* **The safety net.** A reply can be lost: a Redis restart, a trimmed or expired list, a
  record written by another process (a revoke). So a fast wait also re-reads its stored
  record, with per-handle exponential back-off (after 1 s, then 2, 4, ... up to 60 s), in
  ``MGET`` batches paced to a fixed rate. After the listener recovers from any error, it
  re-reads every pending id once.
* **Failures.** The listener never dies. Every error (connection lost, ``LOADING``,
  ``WRONGPASS``, ``WRONGTYPE``, an unknown command, a bug) is logged once per outage, then
  retried with capped exponential back-off; recovery is logged too. A record that cannot be
  decoded fails only the waits for that task id, with a ``SerializationError`` naming it.
* **Handles by id.** A handle from ``app.AsyncResult(id)`` gets no reply. It polls the
  stored record with bounded back-off.

Exception types in failure records are looked up only among modules already imported
(``sys.modules``). A record can never make this process import a module.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import msgspec

from ._time import from_epoch
from .errors import BrokerError, RemoteTaskError, SerializationError, TaskRevoked
from .message import READY_STATES, ResultRecord, Serializer, State

if TYPE_CHECKING:
    from .app import AioQueue
    from .broker import Broker

__all__ = ("AsyncResult", "ResultInfo", "ResultWaiter", "exception_from_record")

R = TypeVar("R")
log = logging.getLogger("aioqueue.result")
_get_ident = threading.get_ident


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
    """Rebuild the task's exception: its own type when already imported here, else
    :class:`~aioqueue.errors.RemoteTaskError`.

    The type is looked up only in modules this process has already imported. A record
    never causes an import: importing runs a module's top-level code, and whoever can
    write to Redis must not be able to run code here. Celery fixed the same hole as
    CVE-2021-23727.
    """
    message = record.exc_message or ""
    if record.state is State.REVOKED:
        return TaskRevoked(message or "revoked", task_name=record.task, task_id=record.id)
    type_name = record.exc_type or "builtins.Exception"
    exc: BaseException = RemoteTaskError(type_name, message, task_id=record.id)
    cls = _imported_exception_type(type_name)
    if cls is not None:
        # A constructor that wants other arguments keeps the RemoteTaskError.
        with contextlib.suppress(Exception):
            exc = cls(*record.exc_args) if record.exc_args is not None else cls(message)
    if record.traceback:
        exc.add_note(f"Traceback on worker {record.worker or '?'}:\n{record.traceback}")
    return exc


def _imported_exception_type(type_name: str) -> type[Exception] | None:
    """The exception class ``type_name`` names (``module.Qual.Name``), if already imported.

    The longest dotted prefix found in ``sys.modules`` is the module; the rest is walked
    through ``vars()``, so that neither a module ``__getattr__`` (which may import lazily)
    nor a descriptor runs.
    """
    parts = type_name.split(".") if type_name else []
    if len(parts) == 1:
        parts = ["builtins", *parts]
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is None:
            continue
        obj: Any = module
        for name in parts[split:]:
            try:
                obj = vars(obj).get(name)
            except TypeError:  # an object without __dict__
                obj = None
            if obj is None:
                break
        # Only exception classes: a record must not make us call arbitrary objects.
        if isinstance(obj, type) and issubclass(obj, Exception):
            return obj
        return None
    return None


class _RecordId(msgspec.Struct):
    """Just the ``id`` of a result record: msgspec skips the other fields without building
    them, so a reply nobody waits for costs a scan, not a decode of its result."""

    id: str


def _id_reader(serializer: Serializer) -> Callable[[bytes], str]:
    """A function reading the task id of an encoded record (raises on a malformed one)."""
    decoder: Any
    if serializer.name == "msgpack":
        decoder = msgspec.msgpack.Decoder(_RecordId)
    elif serializer.name == "json":
        decoder = msgspec.json.Decoder(_RecordId)
    else:
        # pickle (opt-in) cannot be read in part: decode the whole record.
        return lambda raw: serializer.decode_record(raw).id
    decode = decoder.decode
    return lambda raw: str(decode(raw).id)


class ResultWaiter:
    """Resolves the waits of one app in one process: replies, re-reads and a small cache.

    One per app and event loop (``app.waiter``). Handles register themselves while alive
    (:meth:`adopt` / :meth:`release`); ``await handle`` calls :meth:`wait`.
    """

    #: Records kept for live handles (arrived before being awaited, or already returned),
    #: at most this many bytes in all (as encoded); the least recently used go first.
    CACHE_MAX_BYTES = 16 * 1024 * 1024
    #: The longest single ``BLMPOP``: also how long the listener outlives the last handle.
    BLOCK_S = 1.0
    #: A fast wait re-reads its stored record this long after it began, then at doubling
    #: intervals up to ``RECHECK_MAX_S``: the safety net for a reply that never comes.
    RECHECK_FIRST_S = 1.0
    RECHECK_MAX_S = 60.0
    #: Re-reads go out in ``MGET``s of this many ids, at most one per ``RECHECK_PACE_S``. That
    #: caps the steady cost at 5,000 keys/s however many handles wait. With very many waits
    #: the back-off stretches instead.
    RECHECK_CHUNK = 500
    RECHECK_PACE_S = 0.1
    #: Back-off of the listener after an error: first pause, then doubling up to the cap.
    RETRY_FIRST_S = 0.05
    RETRY_MAX_S = 2.0
    #: How long :meth:`close` lets the listener finish its current step.
    CLOSE_TIMEOUT_S = 3.0

    def __init__(self, broker: Broker, serializer: Serializer, reply_to: str) -> None:
        self.broker = broker
        self.serializer = serializer
        self.reply_to = reply_to
        self._read_id = _id_reader(serializer)
        #: Pending waits per task id.
        self._futures: dict[str, list[asyncio.Future[ResultRecord]]] = {}
        #: Live fast handles per task id (almost always 1).
        self._live: dict[str, int] = {}
        #: task id -> (record, encoded size); only ids in ``_live``.
        self._cache: OrderedDict[str, tuple[ResultRecord, int]] = OrderedDict()
        #: Live ids whose record arrived but was pushed out of the cache: read it at once
        #: when awaited.
        self._evicted: set[str] = set()
        #: Fast waits' re-read schedule: task id -> (interval, due), and a heap of
        #: (due, id). A heap entry whose due differs from ``_backoff`` is stale and skipped.
        self._backoff: dict[str, tuple[float, float]] = {}
        self._due: list[tuple[float, str]] = []
        self._next_recheck = 0.0
        self._recheck_all = False
        self._listener: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._closed = False
        self._cached_bytes = 0
        #: The thread of the event loop; handles dropped on other threads are released
        #: through ``_released_elsewhere`` (a deque's append and popleft are thread-safe).
        self._thread = _get_ident()
        self._released_elsewhere: deque[str] = deque()
        #: Replies dropped unread because nothing here waits for them (for tests and ops).
        self.dropped_replies = 0
        #: ``handle.progress()`` iterators per task id: where PROGRESS replies go.
        self._progress: dict[str, list[asyncio.Queue[ResultRecord]]] = {}
        #: Ids waited for by :meth:`wait_all` (a ``ResultSet``), to their group: one
        #: future and one re-read schedule per group instead of one of each per id.
        self._groups: dict[str, _Group] = {}
        self._group_list: list[_Group] = []

    # -- progress --------------------------------------------------------------------------
    def watch_progress(self, task_id: str) -> asyncio.Queue[ResultRecord]:
        """A queue that receives the PROGRESS records pushed for ``task_id``."""
        queue: asyncio.Queue[ResultRecord] = asyncio.Queue()
        self._progress.setdefault(task_id, []).append(queue)
        return queue

    def unwatch_progress(self, task_id: str, queue: asyncio.Queue[ResultRecord]) -> None:
        queues = self._progress.get(task_id)
        if queues is not None and queue in queues:
            queues.remove(queue)
            if not queues:
                del self._progress[task_id]

    # -- handles ---------------------------------------------------------------------------
    def adopt(self, task_id: str) -> None:
        """Count a live handle whose reply comes to this waiter (from ``AsyncResult``)."""
        live = self._live
        live[task_id] = live.get(task_id, 0) + 1

    def release(self, task_id: str) -> None:
        """Uncount a handle (from ``AsyncResult.__del__``); forget its record with the last.

        Runs wherever the last reference goes, possibly on another thread (a handle
        returned to sync code). There it only queues the id, because the counts and the
        byte total are not safe to update from two threads at once.
        """
        if _get_ident() != self._thread:
            self._released_elsewhere.append(task_id)
            return
        # Inlined _release_here: this runs for every handle ever made.
        live = self._live
        count = live.pop(task_id, 0)
        if count > 1:
            live[task_id] = count - 1
            return
        if not live:
            # A dict never shrinks as it empties: 100,000 handles left ~4 MB behind.
            self._live = {}
        if self._cache:
            entry = self._cache.pop(task_id, None)
            if entry is not None:
                self._cached_bytes -= entry[1]
        if self._evicted:
            self._evicted.discard(task_id)

    def _release_here(self, task_id: str) -> None:
        live = self._live
        count = live.pop(task_id, 0)
        if count > 1:
            live[task_id] = count - 1
            return
        if not live:
            self._live = {}
        entry = self._cache.pop(task_id, None)
        if entry is not None:
            self._cached_bytes -= entry[1]
        self._evicted.discard(task_id)

    def _drain_released(self) -> None:
        queued = self._released_elsewhere
        while queued:
            self._release_here(queued.popleft())

    @property
    def live_handles(self) -> int:
        """How many task ids have a live fast handle."""
        self._drain_released()
        return len(self._live)

    @property
    def cached_bytes(self) -> int:
        """Bytes of encoded records in the cache."""
        self._drain_released()
        return self._cached_bytes

    @property
    def listening(self) -> bool:
        """True while the listener task runs."""
        return self._listener is not None

    # -- waiting ---------------------------------------------------------------------------
    async def wait(
        self, task_id: str, timeout_s: float | None, *, fast: bool, poll_s: float,
        poll_max_s: float,
    ) -> ResultRecord:
        """The final record of ``task_id``; raises ``TimeoutError`` after ``timeout_s``.

        ``fast`` waits (their reply comes to this process) wait for the listener, which
        re-reads the stored record with back-off in case the reply is lost. Others poll
        the stored record with back-off from ``poll_s`` to ``poll_max_s``. Raises
        ``SerializationError`` when the record cannot be decoded, and ``BrokerError`` when
        the waiter is closed meanwhile.
        """
        cached = self._cache.get(task_id)
        if cached is not None:
            self._cache.move_to_end(task_id)
            return cached[0]
        if self._closed:
            raise BrokerError(f"result waiter closed: cannot wait for task {task_id}")
        if fast and task_id in self._evicted:
            # Its reply came and was pushed out of the cache: the stored copy is current.
            record = await self._read_one(task_id)
            if record is not None:
                return record
        future: asyncio.Future[ResultRecord] = asyncio.get_running_loop().create_future()
        waiting = self._futures.get(task_id)
        if waiting is None:
            self._futures[task_id] = [future]
        else:
            waiting.append(future)
        try:
            if fast:
                if task_id not in self._backoff:
                    due = time.monotonic() + self.RECHECK_FIRST_S
                    self._backoff[task_id] = (self.RECHECK_FIRST_S, due)
                    heapq.heappush(self._due, (due, task_id))
                if self._listener is None:
                    # A background task rather than a task group: a producer (a FastAPI
                    # handler, a script) has no group to host it; close() ends it.
                    self._listener = asyncio.get_running_loop().create_task(self._listen())
                if timeout_s is None:
                    return await future
                async with asyncio.timeout(timeout_s):
                    return await future
            return await self._poll(task_id, future, timeout_s, poll_s, poll_max_s)
        except TimeoutError:
            raise TimeoutError(f"task {task_id} not ready after {timeout_s}s") from None
        finally:
            self._forget_future(task_id, future)

    async def wait_all(self, task_ids: list[str], timeout_s: float | None) -> list[ResultRecord]:
        """The final records of ``task_ids`` (fast handles of this waiter), in order.

        What :meth:`wait` does for one id, for many at once and at a fraction of the memory:
        a wait costs one dict entry per id here and one future, re-read schedule and
        listener registration per call, where awaiting each handle on its own costs a
        future, a schedule entry and (under ``asyncio.gather``) a Task per id.
        """
        if self._closed:
            raise BrokerError("result waiter closed: cannot wait for a result set")
        records: list[ResultRecord | None] = [None] * len(task_ids)
        group = _Group(records, asyncio.get_running_loop().create_future(),
                       self.RECHECK_FIRST_S)
        groups, cache = self._groups, self._cache
        for index, task_id in enumerate(task_ids):
            cached = cache.get(task_id)
            if cached is not None:
                records[index] = cached[0]
            elif group.add(task_id, index):  # a second index of an id goes to ``extra``
                other = groups.get(task_id)
                if other is not None:
                    group.shared[task_id] = other  # rare: two sets wait for one id
                groups[task_id] = group
        evicted = [task_id for task_id in group.pending if task_id in self._evicted]
        for task_id in evicted:
            record = await self._read_one(task_id)
            if record is not None:
                self.resolve(record)
        try:
            if group.pending:
                self._group_list.append(group)
                if self._listener is None:
                    self._listener = asyncio.get_running_loop().create_task(self._listen())
                if timeout_s is None:
                    await group.future
                else:
                    async with asyncio.timeout(timeout_s):
                        await group.future
        except TimeoutError:
            raise TimeoutError(f"{len(group.pending)} of {len(task_ids)} tasks not ready "
                               f"after {timeout_s}s") from None
        finally:
            self._leave(group)
        return records  # type: ignore[return-value]  # every slot is filled by now

    def _leave(self, group: _Group) -> None:
        groups = self._groups
        for task_id in group.pending:
            if groups.get(task_id) is group:
                other = group.shared.get(task_id)
                if other is not None and task_id in other.pending:
                    groups[task_id] = other
                else:
                    del groups[task_id]
        if group in self._group_list:
            self._group_list.remove(group)
        if not groups:
            self._groups = {}  # a dict never shrinks: let a big one go

    def _resolve_group(self, group: _Group, task_id: str, record: ResultRecord) -> None:
        group.resolve(task_id, record)
        other = group.shared.pop(task_id, None)
        if other is not None:
            self._resolve_group(other, task_id, record)

    async def _poll(
        self, task_id: str, future: asyncio.Future[ResultRecord], timeout_s: float | None,
        poll_s: float, poll_max_s: float,
    ) -> ResultRecord:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        interval = poll_s
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            wait_s = interval if remaining is None else min(interval, remaining)
            done, _ = await asyncio.wait((future,), timeout=wait_s)
            if done:
                return future.result()
            record = await self._read_one(task_id)
            if record is not None:
                self.resolve(record)
                return record
            interval = min(interval * 2, poll_max_s)

    async def _read_one(self, task_id: str) -> ResultRecord | None:
        """The stored final record of ``task_id``, or None while not finished."""
        raw = await self.broker.get_result(task_id)
        if raw is None:
            return None
        record = self._decode(task_id, raw)
        return record if record.state in READY_STATES else None

    def _decode_or_fail(self, task_id: str, raw: bytes) -> ResultRecord | None:
        """The record, or None after failing only this task's waits (undecodable)."""
        try:
            return self._decode(task_id, raw)
        except SerializationError as exc:
            self._fail(task_id, exc)
            return None

    def _decode(self, task_id: str, raw: bytes) -> ResultRecord:
        try:
            record = self.serializer.decode_record(raw)
        except SerializationError as exc:
            raise SerializationError(f"task {task_id}: {exc}") from exc
        if record.id != task_id:
            raise SerializationError(
                f"task {task_id}: the stored record names another task ({record.id!r})")
        return record

    def _forget_future(self, task_id: str, future: asyncio.Future[ResultRecord]) -> None:
        waiting = self._futures.get(task_id)
        if waiting is not None:
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                del self._futures[task_id]
                self._backoff.pop(task_id, None)

    # -- resolving -------------------------------------------------------------------------
    def resolve(self, record: ResultRecord, size: int = 256) -> None:
        """Hand a final record to everyone waiting for it, and keep it while a live handle
        may ask again. ``size`` is its encoded size, for the cache's byte cap."""
        task_id = record.id
        waiting = self._futures.pop(task_id, None)
        self._backoff.pop(task_id, None)
        if self._groups:
            group = self._groups.pop(task_id, None)
            if group is not None:
                self._resolve_group(group, task_id, record)
                if not waiting:
                    return
        if waiting:
            for future in waiting:
                if not future.done():
                    future.set_result(record)
        elif task_id in self._live:
            # Arrived before anyone awaited it: keep it for them. (A record handed to a
            # wait is not kept: awaiting the same handle again reads it back from Redis.)
            self._keep(task_id, record, size)

    def _fail(self, task_id: str, error: Exception) -> None:
        """Fail every wait for ``task_id`` (and only those) with ``error``."""
        log.error("result of task %s: %s", task_id, error)
        group = self._groups.pop(task_id, None)
        if group is not None and not group.future.done():
            group.future.set_exception(SerializationError(str(error)))
        waiting = self._futures.pop(task_id, None)
        self._backoff.pop(task_id, None)
        for future in waiting or ():
            if not future.done():
                # One exception object each: they are raised in different tasks.
                future.set_exception(SerializationError(str(error)))

    def _keep(self, task_id: str, record: ResultRecord, size: int) -> None:
        self._drain_released()
        cache = self._cache
        old = cache.pop(task_id, None)
        if old is not None:
            self._cached_bytes -= old[1]
        if size > self.CACHE_MAX_BYTES:
            self._evicted.add(task_id)
            return
        cache[task_id] = (record, size)
        self._cached_bytes += size
        self._evicted.discard(task_id)
        while self._cached_bytes > self.CACHE_MAX_BYTES:
            evicted, (_, evicted_size) = cache.popitem(last=False)
            self._cached_bytes -= evicted_size
            if evicted in self._live:
                self._evicted.add(evicted)

    def discard(self, task_id: str) -> None:
        """Forget a cached record (the result was deleted)."""
        entry = self._cache.pop(task_id, None)
        if entry is not None:
            self._cached_bytes -= entry[1]
        self._evicted.discard(task_id)

    def _take(self, replies: list[bytes]) -> None:
        """Resolve waits from popped replies; drop, unread, those nobody here wants."""
        futures, live, progress = self._futures, self._live, self._progress
        decode = self.serializer.decode_record
        for raw in replies:
            try:
                # Whole at once: nearly every reply is wanted, and one decode beats two.
                record = decode(raw)
            except SerializationError as exc:
                self._undecodable_reply(raw, exc)
                continue
            task_id = record.id
            if task_id not in futures and task_id not in live and task_id not in progress:
                self.dropped_replies += 1
                continue
            if record.state not in READY_STATES:  # update_state(): not the end of the wait
                for queue in self._progress.get(task_id, ()):
                    queue.put_nowait(record)
                continue
            self.resolve(record, len(raw))

    def _undecodable_reply(self, raw: bytes, exc: SerializationError) -> None:
        """Fail only the waits of the task a bad reply names, if its id can be read."""
        try:
            task_id = self._read_id(raw)
        except Exception as id_error:
            # No id, so no wait to fail: the waits re-read the stored record instead.
            log.error("dropping a reply with no readable task id (%d bytes): %s",
                      len(raw), id_error)
            return
        if task_id in self._futures or task_id in self._live:
            self._fail(task_id, SerializationError(f"task {task_id}: {exc}"))

    # -- re-reading ------------------------------------------------------------------------
    def _next_due(self) -> float | None:
        """When the earliest live re-read is due (dropping stale heap entries on the way)."""
        due_heap, backoff = self._due, self._backoff
        while due_heap:
            due, task_id = due_heap[0]
            entry = backoff.get(task_id)
            if entry is not None and entry[1] == due:
                return due
            heapq.heappop(due_heap)
        return None

    async def _recheck_due(self, now: float) -> None:
        """Re-read up to one chunk of waits whose re-read is due, and reschedule them."""
        due_heap, backoff = self._due, self._backoff
        ids: list[str] = []
        while due_heap and len(ids) < self.RECHECK_CHUNK:
            due, task_id = due_heap[0]
            if due > now:
                break
            heapq.heappop(due_heap)
            entry = backoff.get(task_id)
            if entry is None or entry[1] != due:
                continue
            interval = min(entry[0] * 2, self.RECHECK_MAX_S)
            backoff[task_id] = (interval, now + interval)
            heapq.heappush(due_heap, (now + interval, task_id))
            ids.append(task_id)
        for group in self._group_list:
            if len(ids) >= self.RECHECK_CHUNK:
                break
            if group.due <= now:
                group.interval = min(group.interval * 2, self.RECHECK_MAX_S)
                group.due = now + group.interval
                ids += list(itertools.islice(group.pending, self.RECHECK_CHUNK - len(ids)))
        if ids:
            self._next_recheck = now + self.RECHECK_PACE_S
            await self._reread(ids)

    async def _reread(self, ids: list[str]) -> None:
        """Read the stored records of ``ids`` (in chunks) and resolve the finished ones."""
        for start in range(0, len(ids), self.RECHECK_CHUNK):
            chunk = ids[start:start + self.RECHECK_CHUNK]
            raws = await self.broker.get_results(chunk)
            for task_id, raw in zip(chunk, raws, strict=False):
                if raw is None or (task_id not in self._futures
                                   and task_id not in self._groups):
                    continue
                record = self._decode_or_fail(task_id, raw)
                if record is not None and record.state in READY_STATES:
                    self.resolve(record, len(raw))

    # -- the listener ----------------------------------------------------------------------
    def _block_timeout(self, now: float) -> float:
        timeout = self.BLOCK_S
        due = self._next_due()
        for group in self._group_list:
            due = group.due if due is None else min(due, group.due)
        if due is not None:
            timeout = min(timeout, max(due, self._next_recheck) - now)
        return max(timeout, 0.001)

    async def _listen(self) -> None:
        failing_since: float | None = None
        pause = self.RETRY_FIRST_S
        try:
            while True:
                self._drain_released()
                if self._closed or not (self._futures or self._live or self._groups):
                    break
                try:
                    now = time.monotonic()
                    if now >= self._next_recheck:
                        await self._recheck_due(now)
                    replies = await self.broker.wait_replies(
                        self.reply_to, self._block_timeout(time.monotonic()))
                    self._take(replies)
                    if self._recheck_all:
                        # Redis answers again after an error: replies may have been lost
                        # meanwhile (a restart, a pop whose answer never came), so re-read
                        # every pending id once.
                        self._recheck_all = False
                        await self._reread(list(self._futures))
                except Exception as exc:
                    # Never die: fast waits have no other way to resolve. Every error is
                    # worth a retry (a restart's LOADING, a rotated password, a bug), once
                    # per outage in the log, then with back-off.
                    if failing_since is None:
                        failing_since = time.monotonic()
                        log.warning("result listener on %s: %s; retrying with back-off",
                                    self.reply_to, exc)
                    else:
                        log.debug("result listener on %s still failing: %s", self.reply_to,
                                  exc)
                    self._recheck_all = True
                    await self._pause(pause)
                    pause = min(pause * 2, self.RETRY_MAX_S)
                    continue
                if failing_since is not None:
                    log.warning("result listener on %s: working again after %.1fs",
                                self.reply_to, time.monotonic() - failing_since)
                    failing_since = None
                    pause = self.RETRY_FIRST_S
        finally:
            self._listener = None
            if not self._futures:
                # Only stale entries are left: free them with the listener (new objects:
                # emptied dicts keep their size).
                self._futures, self._due, self._backoff = {}, [], {}

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if :meth:`close` is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def close(self) -> None:
        """Stop the listener. Waits still pending on this waiter then raise ``BrokerError``.

        If the caller is cancelled meanwhile, the listener is cancelled and the
        ``CancelledError`` propagates.
        """
        self._closed = True
        with contextlib.suppress(RuntimeError):  # the event's loop is already closed
            self._stop.set()
        listener = self._listener
        if listener is not None and listener.get_loop() is asyncio.get_running_loop():
            # A BLMPOP is never cancelled mid-call (the server may have popped replies
            # already): ask the server to end it, then let the listener finish its step.
            await self.broker.interrupt_replies()
            try:
                done, _ = await asyncio.wait((listener,), timeout=self.CLOSE_TIMEOUT_S)
            except asyncio.CancelledError:
                listener.cancel()
                raise
            if not done:
                listener.cancel()
        for group in self._group_list:
            if not group.future.done():
                with contextlib.suppress(RuntimeError):  # its loop is already closed
                    group.future.set_exception(BrokerError(
                        f"result waiter closed while waiting for {len(group.pending)} tasks"))
        pending, self._futures = self._futures, {}
        self._backoff.clear()
        self._due.clear()
        for task_id, waiting in pending.items():
            for future in waiting:
                if not future.done():
                    with contextlib.suppress(RuntimeError):  # its loop is already closed
                        future.set_exception(
                            BrokerError(f"result waiter closed while waiting for task {task_id}")
                        )


#: A wait whose reply does not come here polls the stored record, first after this long.
POLL_FIRST_S = 0.005


class _Group:
    """One :meth:`ResultWaiter.wait_all` call: where each id's record goes, what is left."""

    __slots__ = ("due", "extra", "future", "interval", "pending", "records", "shared")

    def __init__(self, records: list[ResultRecord | None], future: asyncio.Future[None],
                 recheck_s: float) -> None:
        self.records = records
        self.future = future
        #: id -> its index in ``records``; ids whose record has not come yet.
        self.pending: dict[str, int] = {}
        #: More indices of an id listed twice (rare).
        self.extra: dict[str, list[int]] = {}
        #: Another group that waits for the same id (rare): resolved in turn.
        self.shared: dict[str, _Group] = {}
        self.interval = recheck_s
        self.due = time.monotonic() + recheck_s

    def add(self, task_id: str, index: int) -> bool:
        """Wait for ``task_id`` at ``index``; False if it was already waited for here."""
        if task_id in self.pending:
            self.extra.setdefault(task_id, []).append(index)
            return False
        self.pending[task_id] = index
        return True

    def resolve(self, task_id: str, record: ResultRecord) -> None:
        index = self.pending.pop(task_id, None)
        if index is None:
            return
        self.records[index] = record
        for other in self.extra.pop(task_id, ()):
            self.records[other] = record
        if not self.pending and not self.future.done():
            self.future.set_result(None)


class AsyncResult(Generic[R]):
    """A handle on one task's result. ``await handle`` is ``await handle.get()``."""

    __slots__ = ("_waiter", "app", "id", "task_name")

    def __init__(
        self, task_id: str, app: AioQueue | None = None, task_name: str | None = None, *,
        waiter: ResultWaiter | None = None,
    ) -> None:
        self.id = task_id
        if app is None:  # Celery's bare AsyncResult(task_id): the current app
            from .app import current_app

            app = current_app()
        self.app = app
        self.task_name = task_name
        #: The waiter whose reply list receives this task's result (the fast path), or
        #: None: the handle polls the stored record.
        self._waiter = waiter
        if waiter is not None:
            # waiter.adopt(task_id), inlined: this runs for every delay().
            live = waiter._live
            live[task_id] = live.get(task_id, 0) + 1

    def __del__(self) -> None:
        # The waiter keeps a reply only while a handle for it lives: this is how it learns
        # that one no longer does.
        try:
            waiter = self._waiter
        except AttributeError:  # __init__ failed before setting it
            return
        if waiter is not None:
            waiter.release(self.id)

    def __copy__(self) -> AsyncResult[R]:
        # A copy made without __init__ would release a registration it never made.
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> AsyncResult[R]:
        return self

    def __repr__(self) -> str:
        return f"<AsyncResult {self.task_name or 'task'}[{self.id}]>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __await__(self) -> Generator[Any, None, R]:
        return _raw_get(self).__await__()

    @property
    def task_id(self) -> str:
        """Celery's other name for :attr:`id`."""
        return self.id

    def _track(self, waiter: ResultWaiter) -> bool:
        """Point a fast handle at ``waiter`` (the app's current one); False if not fast.

        A handle made under another event loop, or before ``app.close()``, moves to the
        new waiter, which reads the same reply list. One inherited from a parent process
        stops being fast: its reply goes to the parent's list.
        """
        old = self._waiter
        if old is waiter:
            return True
        if old is None:
            return False
        old.release(self.id)
        if old.reply_to != waiter.reply_to:
            self._waiter = None
            return False
        self._waiter = waiter
        waiter.adopt(self.id)
        return True

    @overload
    async def get(self, timeout: float | None = None, propagate: Literal[True] = True) -> R: ...

    @overload
    async def get(
        self, timeout: float | None = None, *, propagate: Literal[False]
    ) -> R | BaseException: ...

    async def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Wait for the result and return it.

        A failed task re-raises its exception (its own type when that is already imported
        here, else :class:`~aioqueue.errors.RemoteTaskError`); a revoked one raises
        :class:`~aioqueue.errors.TaskRevoked`. With ``propagate=False`` the exception is
        returned instead. Raises ``TimeoutError`` when not ready within ``timeout``
        seconds, and :class:`~aioqueue.errors.SerializationError` when the stored record
        cannot be decoded.
        """
        # app._wait_for inlined: one coroutine frame less on every await of a handle
        # (about a sixth of what an awaited handle holds while it waits).
        app = self.app
        waiter = app.waiter
        record = await waiter.wait(self.id, timeout, fast=self._track(waiter),
                                   poll_s=POLL_FIRST_S,
                                   poll_max_s=app.conf.result_poll_max_interval)
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

    async def progress(self, *, poll_max_s: float = 1.0) -> AsyncIterator[Any]:
        """The task's ``update_state`` metas as they come: ``async for meta in
        handle.progress(): ...``; ends when the task does (then ``await handle``).

        Updates are pushed to this process when the handle came from ``delay()`` here;
        a handle made from a bare id re-reads the stored record instead (up to every
        ``poll_max_s`` seconds). An iterator that starts late sees the latest update first.
        """
        app = self.app
        waiter = app.waiter
        fast = self._track(waiter)
        queue = waiter.watch_progress(self.id)
        final = asyncio.ensure_future(waiter.wait(
            self.id, None, fast=fast, poll_s=0.05, poll_max_s=app.conf.result_poll_max_interval))
        try:
            raw_seen = await app.broker.get_result(self.id)
            stored = None if raw_seen is None else waiter._decode(self.id, raw_seen)
            last = stored  # the read and a push can carry the same update: yield it once
            if stored is not None and stored.state is State.PROGRESS:
                yield stored.result
            interval = 0.05
            while not final.done():
                got = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({got, final}, timeout=None if fast else interval,
                                             return_when=asyncio.FIRST_COMPLETED)
                if got in done:
                    record = got.result()
                    if record != last:
                        last = record
                        yield record.result
                    continue
                got.cancel()
                if not done:  # a polling handle: has the stored progress changed?
                    interval = min(interval * 2, poll_max_s)
                    raw = await app.broker.get_result(self.id)
                    if raw is not None and raw != raw_seen:
                        raw_seen = raw
                        record = waiter._decode(self.id, raw)
                        if record.state is State.PROGRESS and record != last:
                            last = record
                            yield record.result
            while not queue.empty():  # pushed just before the end
                record = queue.get_nowait()
                if record != last:
                    last = record
                    yield record.result
        finally:
            if final.done() and not final.cancelled():
                final.exception()  # retrieved: the caller sees it when awaiting the handle
            final.cancel()
            waiter.unwatch_progress(self.id, queue)

    async def wait(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Celery's older name for :meth:`get`."""
        return await _raw_get(self, timeout, propagate=propagate)  # type: ignore[call-overload]

    # Celery's blocking attributes, made dual below (blocking in sync code).
    async def _status(self) -> State:
        return await _raw_state(self)

    async def _result(self) -> Any:
        return (await self.info()).result

    async def _traceback(self) -> str | None:
        return (await self.info()).traceback

    async def _date_done(self) -> datetime | None:
        return (await self.info()).date_done


_raw_get = AsyncResult.get
_raw_state = AsyncResult.state


def _install_dual_methods() -> None:
    """Make Celery's sync habits on a handle work in sync code and fail loudly in async code.

    In a thread without a running loop, ``res.state`` / ``res.result`` ... read the record
    (blocking, through the sync portal) and ``res.get(timeout=5)`` / ``res.ready()`` block,
    as Celery's. In async code they stay coroutine methods, but ``res.state == "SUCCESS"``,
    ``if res.ready():`` and ``f"{res.result}"`` raise ``TypeError`` naming the ``await``
    spelling instead of being silently False, True or a bound method's repr.
    """
    from ._dual import DualMethod

    methods = ("get", "wait", "ready", "successful", "failed", "forget", "revoke")
    for name in methods:
        setattr(AsyncResult, name, DualMethod(getattr(AsyncResult, name), name, value=False))
    # Read as attributes in Celery (res.state, res.result): values in sync code.
    for name, fn in (("state", AsyncResult.state), ("status", AsyncResult._status),
                     ("result", AsyncResult._result), ("traceback", AsyncResult._traceback),
                     ("date_done", AsyncResult._date_done)):
        setattr(AsyncResult, name, DualMethod(fn, name, value=True))
    # ``await handle.info()`` is a ResultInfo snapshot; Celery's ``res.info`` is the result.
    AsyncResult.info = DualMethod(  # type: ignore[method-assign, assignment]
        AsyncResult.info, "info", value=True, sync_fn=AsyncResult._result)


_install_dual_methods()
