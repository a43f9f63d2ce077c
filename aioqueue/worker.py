"""The worker: one task group per process that fetches, runs and settles tasks.

Shape (one ``anyio`` task group):

* the **fetch loop** asks the broker only for as many messages as there are free slots
  (``XREADGROUP COUNT free``), so a busy worker never hoards work an idle one could run;
  it also reclaims messages of dead workers (idle past ``visibility_timeout``);
* each delivery runs in its own task under a cancel scope (time limit, revoke, shutdown);
* the **flusher** settles finished deliveries in batches: one atomic pipeline stores the
  results, wakes the producers and acknowledges, for every task that finished since the
  last flush (group commit: one round trip under load, no added latency when idle);
* **maintenance** moves due delayed messages and keeps long-running tasks claimed;
* the **control listener** applies revocations as they are broadcast.

Stopping: :meth:`Worker.stop` stops fetching (unblocking the blocked read server-side, never
by cancelling it), waits ``shutdown_timeout`` for running tasks, then cancels the rest and
hands their messages back to the queue so another worker runs them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ._concurrency import new_thread_limiter
from ._runner import Running, TaskRunner
from .broker import Delivery, Enqueue, Outcome
from .control import decode_control
from .errors import BrokerConnectionError, BrokerError, ConfigurationError

if TYPE_CHECKING:
    from .app import AioQueue

__all__ = ("Worker",)

log = logging.getLogger("aioqueue.worker")

#: The longest a fetch blocks server-side; stop() unblocks it sooner.
FETCH_BLOCK_S = 2.0


class _Outage:
    """One loop's back-off while the broker is away. Logs one line when the broker goes
    away and one when it is back: per worker, not per loop nor per retry (the loops of a
    worker share ``down``, which holds ``"since"`` while the outage is reported)."""

    def __init__(self, what: str, down: dict[str, float], max_delay_s: float = 2.0) -> None:
        self.what = what
        self.down = down
        self.failing = False
        self.delay = 0.05
        self.max_delay_s = max_delay_s

    def failed(self, exc: Exception) -> float:
        if not self.failing:
            self.failing = True
            if "since" not in self.down:
                self.down["since"] = time.monotonic()
                log.warning("%s: %s; retrying with back-off", self.what, exc)
        delay = self.delay
        self.delay = min(self.delay * 2, self.max_delay_s)
        return delay

    def ok(self) -> None:
        if self.failing:
            self.failing = False
            self.delay = 0.05
        # Whichever loop reaches the broker first reports it back (the control channel
        # only calls ok() when a message arrives, so it must not be the only one who can).
        since = self.down.pop("since", None)
        if since is not None:
            self.down["recovered"] = time.monotonic()
            log.warning("%s: broker reachable again after %.1fs", self.what,
                        time.monotonic() - since)


class Worker:
    """Runs an app's tasks from its queues. Use ``async with app.worker(...)`` or :meth:`run`."""

    def __init__(
        self,
        app: AioQueue,
        *,
        concurrency: int,
        queues: Sequence[str],
        burst: bool = False,
        beat: bool = False,
        name: str,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, not {concurrency}")
        self.app = app
        self.concurrency = concurrency
        self.queues = list(dict.fromkeys(queues))
        self.burst = burst
        self.beat = beat
        self.name = name
        self.revoked: set[str] = set()
        self._thread_limiter = new_thread_limiter(min(concurrency, 40))
        self.running: dict[str, Running] = {}
        self.processed = 0
        self._free = concurrency
        self._slot_freed = anyio.Event()
        self._outcomes: list[Outcome] = []
        self._outcome_added = anyio.Event()
        self._settled = anyio.Event()
        self._unsettled = 0
        self._stopping = False
        self._stop_requested = anyio.Event()
        self._hard_stop = False
        self._started = anyio.Event()
        self._stopped = anyio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Shared by the loops' _Outage trackers: one log line per outage, not per loop.
        self._down: dict[str, float] = {}
        vt = app.conf.visibility_timeout
        self._reclaim_every_s = max(0.05, min(vt / 2, 5.0))
        self._heartbeat_every_s = max(0.05, vt / 3)

    # -- embedding -------------------------------------------------------------------------
    async def __aenter__(self) -> Worker:
        # A plain task on the host's loop: the host's code between enter and exit must not
        # run inside the worker's cancel scopes.
        self._task = asyncio.get_running_loop().create_task(self.run())
        started = asyncio.ensure_future(self._started.wait())
        done, _ = await asyncio.wait({self._task, started}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            started.cancel()
            self._task.result()  # re-raise why it could not start
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._task is not None:
            await self._task

    def stop(self, *, now: bool = False) -> None:
        """Stop fetching and shut down gracefully; ``now=True`` hands running tasks back at once."""
        self._stopping = True
        self._hard_stop = self._hard_stop or now
        self._stop_requested.set()
        self._slot_freed.set()

    async def wait_started(self) -> None:
        """Return once the worker is consuming."""
        await self._started.wait()

    # -- main ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until stopped (or, in burst mode, until the queues are drained)."""
        # Bound here, on the loop that runs the worker (the app makes one broker per loop).
        self.broker = self.app.broker
        self.runner = TaskRunner(self.app, self.broker, self.name, self._thread_limiter,
                                 self.revoked)
        scheduler = None
        if self.beat:
            from .beat import Beat

            scheduler = Beat(self.app)  # here, so a bad schedule fails start-up plainly
        if not await self._prepare():
            log.warning("worker %s stopped before it could reach the broker", self.name)
            return
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._flusher)
                tg.start_soon(self._maintenance)
                tg.start_soon(self._control_listener)
                tg.start_soon(self._stop_watcher)
                if scheduler is not None:
                    tg.start_soon(scheduler.run, self._stop_requested)
                log.info("worker %s consuming %s with concurrency %d", self.name,
                         ",".join(self.queues), self.concurrency)
                self._started.set()
                await self._fetch_loop()
                await self._drain()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._hand_back_running()
                await self._flush_remaining()
                with contextlib.suppress(BrokerError):
                    await self.broker.forget_consumer(self.queues, self.name)
            self._stopped.set()
            log.info("worker %s stopped after %d tasks", self.name, self.processed)

    async def _prepare(self) -> bool:
        """Connect and set up; False if stopped meanwhile (a SIGTERM while Redis is away
        must not wait for the whole connection timeout)."""
        log.info("worker %s connecting to %s", self.name, self.broker.display_url)
        async with anyio.create_task_group() as tg:

            async def stop_waiting() -> None:
                await self._stop_requested.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(stop_waiting)
            await self.broker.connect()
            await self.broker.ensure_queues(self.queues)
            self.revoked.update(await self.broker.revoked_ids(time.time()))
            tg.cancel_scope.cancel()
        return not self._stopping

    async def _hand_back_running(self) -> None:
        """If the worker itself was cancelled, its tasks (not children of its task group, see
        _fetch_loop) are cancelled here and hand their messages back before it exits."""
        if not self.running:
            return
        self._cancel_running("shutdown")
        tasks = [r.task for r in self.running.values() if r.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    async def serve(self) -> None:
        """Run with signal handling, as the CLI does: SIGTERM/SIGINT stop gracefully, a
        second signal stops at once (running tasks are handed back, nothing is lost)."""
        async with anyio.create_task_group() as tg:

            async def on_signals(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    task_status.started()
                    async for signum in signals:
                        if self._hard_stop:
                            # Cold shutdown: unsettled messages are redelivered after
                            # visibility_timeout, so even this loses nothing.
                            log.warning("third signal: exiting immediately")
                            os._exit(1)
                        if self._stopping:
                            log.warning("second signal: stopping now (again to exit at once)")
                            self.stop(now=True)
                        else:
                            log.warning("%s: stopping gracefully (again to stop now)",
                                        signal.Signals(signum).name)
                            self.stop()

            await tg.start(on_signals)  # handlers in place before anything can block
            await self.run()
            tg.cancel_scope.cancel()

    async def _stop_watcher(self) -> None:
        await self._stop_requested.wait()
        await self.broker.interrupt_fetch()
        if self._hard_stop:
            self._cancel_running("shutdown")

    # -- fetching --------------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        outage = _Outage(f"worker {self.name}: fetch", self._down)
        create_task = asyncio.get_running_loop().create_task
        next_reclaim = time.monotonic() + self._reclaim_every_s
        while not self._stopping:
            if self._free <= 0:
                self._slot_freed = anyio.Event()
                await self._slot_freed.wait()
                continue
            free = self._free
            self._free -= free  # reserve the slots for the duration of the call
            got: list[Delivery] = []
            try:
                now = time.monotonic()
                if now >= next_reclaim and not self._just_recovered(now):
                    next_reclaim = now + self._reclaim_every_s
                    got = await self.broker.reclaim(self.queues, self.name,
                                                    self.app.conf.visibility_timeout, free)
                if not got:
                    timeout = 0.05 if self.burst else min(FETCH_BLOCK_S, self._reclaim_every_s)
                    got = await self.broker.fetch(self.queues, self.name, free, timeout)
                outage.ok()
            except (BrokerConnectionError, BrokerError) as exc:
                self._free += free
                await self._sleep_unless_stopping(outage.failed(exc))
                continue
            self._free += free - len(got)
            now = time.monotonic()
            for delivery in got:
                running = Running(delivery, started=now)
                self.running[delivery.message_id] = running
                # A plain asyncio task, not a task-group child: anyio's start_soon cost a
                # fifth of the worker's CPU per no-op task (py-spy). The worker tracks these
                # in self.running and cancels and hands them back itself when it exits.
                running.task = create_task(self._run_one(running))
            if self.burst and not got and not self.running and await self._drained():
                return

    def _just_recovered(self, now: float) -> bool:
        """True shortly after a broker outage. Every message then looks idle for longer than
        the visibility timeout, its owner included; reclaiming at once would rerun the tasks
        of live workers. Waiting for one heartbeat lets each owner re-claim its own first."""
        recovered = self._down.get("recovered")
        return recovered is not None and now - recovered < self._heartbeat_every_s * 1.5

    async def _drained(self) -> bool:
        await self._wait_settled()
        sizes = await self.broker.queue_sizes(self.queues)
        return all(ready == 0 and delayed == 0 for ready, delayed, _ in sizes.values())

    async def _run_one(self, running: Running) -> None:
        delivery = running.delivery
        try:
            outcome = await self.runner.run(running)
        except Exception:
            # The runner turns every task error into an outcome, so this is ours (or the
            # broker's, e.g. a STARTED write during an outage). Leave the message
            # unacknowledged: it is redelivered after visibility_timeout, and a message that
            # keeps failing this way ends in dead letters after max_deliveries.
            log.exception("worker %s: message %s left for redelivery after an internal error",
                          self.name, delivery.message_id)
            self._release(running)
            return
        except BaseException:
            # Cancelled from outside the task's own handling: hand the message back.
            self._add_outcome(Outcome(delivery=delivery,
                                      requeue=Enqueue(delivery.queue, delivery.payload)))
            self._release(running)
            raise
        self._add_outcome(outcome)
        self._release(running)

    def _release(self, running: Running) -> None:
        self.running.pop(running.delivery.message_id, None)
        self.processed += 1
        self._free += 1
        self._slot_freed.set()

    def _cancel_running(self, reason: str) -> None:
        for running in list(self.running.values()):
            running.cancel(reason)

    # -- settling --------------------------------------------------------------------------
    def _add_outcome(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        self._unsettled += 1
        self._outcome_added.set()

    async def _flusher(self) -> None:
        # Short back-off: once the broker is back, stored results beat any reclaimer.
        outage = _Outage(f"worker {self.name}: settle", self._down, max_delay_s=0.25)
        while True:
            if not self._outcomes:
                self._outcome_added = anyio.Event()
                await self._outcome_added.wait()
                continue
            batch, self._outcomes = self._outcomes, []
            # Shielded: a half-sent pipeline must not be abandoned by a cancellation.
            with anyio.CancelScope(shield=True):
                try:
                    await self.broker.settle(batch)
                    outage.ok()
                except (BrokerConnectionError, BrokerError) as exc:
                    # Never drop an outcome: put the batch back and try again.
                    self._outcomes[:0] = batch
                    await anyio.sleep(outage.failed(exc))
                    continue
            self._unsettled -= len(batch)
            if self._unsettled == 0:
                self._settled.set()
                self._settled = anyio.Event()

    async def _wait_settled(self) -> None:
        while self._unsettled:
            await self._settled.wait()

    async def _flush_remaining(self) -> None:
        outage = _Outage(f"worker {self.name}: final settle", self._down)
        deadline = time.monotonic() + max(5.0, self.app.conf.broker_connection_timeout)
        while self._outcomes and time.monotonic() < deadline:
            batch, self._outcomes = self._outcomes, []
            try:
                await self.broker.settle(batch)
                self._unsettled -= len(batch)
            except (BrokerConnectionError, BrokerError) as exc:
                self._outcomes[:0] = batch
                await anyio.sleep(outage.failed(exc))
        if self._outcomes:
            # Unsettled messages stay unacknowledged: another worker reclaims and reruns them.
            log.error("worker %s: %d results could not be stored; their messages will be "
                      "redelivered after visibility_timeout", self.name, len(self._outcomes))

    async def _drain(self) -> None:
        if self.running and not self._hard_stop:
            log.warning("worker %s: waiting up to %.1fs for %d running tasks", self.name,
                        self.app.conf.shutdown_timeout, len(self.running))
            with anyio.move_on_after(self.app.conf.shutdown_timeout):
                while self.running and not self._hard_stop:
                    self._slot_freed = anyio.Event()
                    await self._slot_freed.wait()
        if self.running:
            self._cancel_running("shutdown")
            while self.running:
                self._slot_freed = anyio.Event()
                await self._slot_freed.wait()
        await self._wait_settled()

    # -- maintenance -----------------------------------------------------------------------
    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._stop_requested.wait()

    async def _maintenance(self) -> None:
        outage = _Outage(f"worker {self.name}: maintenance", self._down, max_delay_s=0.5)
        interval = self.app.conf.delayed_poll_interval
        next_heartbeat = time.monotonic() + self._heartbeat_every_s
        while True:
            try:
                await self.broker.move_due(self.queues, time.time())
                now = time.monotonic()
                if now >= next_heartbeat or outage.failing:
                    # Right after an outage too: re-claim what we hold before others reclaim.
                    next_heartbeat = now + self._heartbeat_every_s
                    await self._heartbeat(now, everything=outage.failing)
                outage.ok()
            except (BrokerConnectionError, BrokerError) as exc:
                await anyio.sleep(outage.failed(exc))
                continue
            await anyio.sleep(interval)

    async def _heartbeat(self, now: float, *, everything: bool = False) -> None:
        # Only tasks that have run a while need it: a short task is acked long before. After
        # an outage every held message has looked idle for the outage's length: claim all.
        old = [r.delivery for r in self.running.values()
               if everything or now - r.started >= self._heartbeat_every_s]
        # Finished but not yet stored (the broker was away): still ours, keep them claimed
        # so no other worker reruns them when the broker returns.
        old += [o.delivery for o in self._outcomes if o.delivery is not None]
        if old:
            await self.broker.keep_claimed(self.name, old)
        self.revoked.update(await self.broker.revoked_ids(time.time()))

    async def _control_listener(self) -> None:
        outage = _Outage(f"worker {self.name}: control channel", self._down)
        while True:
            try:
                async for raw in self.broker.control_messages():
                    outage.ok()
                    self._on_control(raw)
                return
            except (BrokerConnectionError, BrokerError) as exc:
                await anyio.sleep(outage.failed(exc))

    def _on_control(self, raw: bytes) -> None:
        message = decode_control(raw)
        if message is None:
            log.warning("ignoring an undecodable control message")
            return
        if message.destination is not None and message.destination != self.name:
            return
        if message.op == "revoke" and message.task_id:
            self.revoked.add(message.task_id)
            if message.terminate:
                for running in self.running.values():
                    if running.task_id == message.task_id:
                        running.cancel("revoked")
        elif message.op == "shutdown":
            self.stop()


