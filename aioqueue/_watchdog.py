"""Reports an ``async def`` task that blocks the worker's event loop.

The first mistake of everyone porting sync code: ``time.sleep(3)`` or a blocking client
call inside ``async def`` stops every other task of the worker, its heartbeat and its
settling. The loop stamps a clock a few times per blocking threshold; a thread notices a
stale stamp, asks asyncio which task is running on the loop right now, and logs a warning
naming it, then how long the loop was blocked in all once it runs again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

__all__ = ("LoopWatchdog",)

log = logging.getLogger("aioqueue.worker")


class LoopWatchdog:
    """Warn when the loop has not run for ``threshold_s``; ``describe`` names a task."""

    def __init__(self, threshold_s: float,
                 describe: Callable[[asyncio.Task[object] | None], str]) -> None:
        self.threshold_s = threshold_s
        self.describe = describe
        self._stamp = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tick()
        self._thread = threading.Thread(target=self._watch, name="aioqueue-loop-watchdog",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()

    def _tick(self) -> None:
        self._stamp = time.monotonic()
        if not self._stop.is_set() and self._loop is not None:
            self._timer = self._loop.call_later(self.threshold_s / 4, self._tick)

    def _watch(self) -> None:
        reported: float | None = None  # the stamp of the blocking episode already reported
        what = ""
        while not self._stop.wait(self.threshold_s / 4):
            stamp = self._stamp
            stalled = time.monotonic() - stamp
            if stalled >= self.threshold_s and reported != stamp:
                reported = stamp
                running = asyncio.current_task(self._loop) if self._loop else None
                what = self.describe(running)
                log.warning(
                    "%s has blocked the event loop for %.1fs: every other task of this worker "
                    "waits meanwhile. In an `async def` task use non-blocking calls (await "
                    "asyncio.sleep, not time.sleep), or make it a plain `def` task: those run "
                    "in a thread", what, stalled)
            elif reported is not None and reported != stamp:
                # The loop ran again: the episode is over.
                log.warning("%s blocked the event loop for %.1fs in all", what,
                            stamp - reported - self.threshold_s / 4)
                reported = None
