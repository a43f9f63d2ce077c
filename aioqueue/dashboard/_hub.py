"""Live updates: one reader of the events stream per dashboard, fanned out to every page.

However many browsers are open, the dashboard runs one loop (started with the first
subscriber, stopped with the last) that follows the events stream with a blocking read and
takes an overview snapshot every ``interval_s``; each subscriber gets both through its own
bounded queue. A subscriber that cannot keep up is told to ``resync`` (re-read everything)
instead of holding memory or slowing the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..monitor import Monitor
from ._views import event_json

log = logging.getLogger("aioqueue.dashboard")

#: Messages a subscriber may have waiting before it is told to resync.
QUEUE_SIZE = 200
#: Events read per call of the stream.
BATCH = 500

_json = msgspec.json.Encoder()


def sse(event: str, data: Any, entry_id: str | None = None) -> bytes:
    """One Server-Sent Events message (JSON data on one line)."""
    head = f"id: {entry_id}\n" if entry_id else ""
    return f"{head}event: {event}\ndata: ".encode() + _json.encode(data) + b"\n\n"


@dataclass(eq=False)
class Subscriber:
    """One open stream: what the hub has sent it and not yet written out."""

    queue: asyncio.Queue[bytes | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def offer(self, message: bytes | None) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            # Too slow: drop what waits and ask the page to re-read everything (or, when
            # the stream is ending, just end it).
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None if message is None else
                                  sse("resync", {"reason": "too slow"}))


class Hub:
    """Follows the events and the overview for every subscriber (see the module doc)."""

    def __init__(self, monitor: Monitor, snapshot: Callable[[], Awaitable[Any]], *,
                 interval_s: float = 2.0, block_s: float = 1.0) -> None:
        self.monitor = monitor
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.block_s = block_s
        self.subscribers: set[Subscriber] = set()
        #: The newest event id sent to subscribers.
        self.cursor: str | None = None
        self.closed = False
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._failing = False

    async def subscribe(self, ready_timeout_s: float = 5.0) -> Subscriber:
        """A new subscriber, once the reader knows where the stream ends (so every event
        recorded after this returns reaches it)."""
        sub = Subscriber()
        if self.closed:
            sub.offer(None)
            return sub
        self.subscribers.add(sub)
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self._task = asyncio.create_task(self._run(self._ready),
                                             name="aioqueue-dashboard-hub")
        assert self._ready is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), ready_timeout_s)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if not self.subscribers and self._task is not None:
            self._task.cancel()
            self._task = None

    def publish(self, message: bytes | None) -> None:
        for sub in list(self.subscribers):
            sub.offer(message)

    async def close(self) -> None:
        """End every stream and stop the reader."""
        self.closed = True
        self.publish(None)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- the reader ------------------------------------------------------------------------
    async def _run(self, ready: asyncio.Event) -> None:
        self.cursor = None  # a restarted reader starts at the end: pages re-read the rest
        while self.cursor is None:
            try:
                newest = await self.monitor.broker.read_log("events", count=1)
                self.cursor = newest[-1][0] if newest else "0-0"
                self._recovered()
            except Exception as exc:
                self._failed(exc)
                ready.set()  # do not hold the page: it shows the error meanwhile
                await asyncio.sleep(1.0)
        ready.set()
        next_snapshot = 0.0
        while True:
            now = time.monotonic()
            try:
                if now >= next_snapshot:
                    next_snapshot = now + self.interval_s
                    self.publish(sse("overview", await self.snapshot()))
                block_s = max(0.01, min(self.block_s, next_snapshot - time.monotonic()))
                batch = await self.monitor.events_after(self.cursor, BATCH, block_s=block_s)
                self._recovered()
            except Exception as exc:  # Redis down, a bug: say so, keep going
                self._failed(exc)
                await asyncio.sleep(1.0)
                continue
            if batch:
                self.cursor = batch[-1][0]
                self.publish(sse("events", [event_json(i, e) for i, e in batch], self.cursor))

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            log.warning("dashboard: cannot read events: %s", exc)
        self._failing = True
        self.publish(sse("status", {"ok": False, "error": str(exc)[:500]}))

    def _recovered(self) -> None:
        if self._failing:
            log.warning("dashboard: reading events again")
            self._failing = False
            self.publish(sse("status", {"ok": True}))
