"""The worker: one task group per process that fetches, runs and settles tasks.

Shape (one ``anyio`` task group):

* the **fetch loop** asks the broker only for as many messages as there are free slots,
  over all its queues together, so a busy worker never hoards work an idle one could run
  and ``concurrency`` is a hard limit; it also reclaims messages of dead workers (idle past
  ``visibility_timeout``) and removes their consumers once they hold nothing;
* each delivery runs in its own asyncio task (cancelled for time limits, revoke, shutdown);
* the **flusher** settles finished deliveries in capped batches: one script call stores the
  results, acknowledges and wakes the producers, for every task that finished since the
  last flush (group commit: one round trip under load, no added latency when idle). An
  outcome the broker refuses fails alone: the rest of its batch settles;
* the **heartbeat** keeps long-running tasks claimed and refreshes revocations, in a loop of
  its own so that nothing else failing can make a live worker look dead;
* **maintenance** moves due delayed messages;
* the **control listener** applies revocations as they are broadcast.

Every internal loop survives any single error: it logs it, backs off and carries on.

Stopping: :meth:`Worker.stop` stops fetching (unblocking the blocked read server-side, never
by cancelling it), waits ``shutdown_timeout`` for running tasks, then cancels the rest and
hands their messages back to the queue so another worker runs them at once. Storing what is
left gets a bounded time too (``max(5 s, broker_connection_timeout)``): what cannot be
stored stays unacknowledged and is redelivered, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import msgspec

from . import signals
from ._concurrency import new_thread_limiter
from ._runner import PARKED, Running, TaskRunner
from ._watchdog import LoopWatchdog
from .broker import Delivery, Enqueue, Outcome
from .control import ControlMessage, decode_control
from .errors import BrokerConnectionError, BrokerError, ConfigurationError
from .events import (
    PAYLOAD_MAX,
    TRACEBACK_MAX,
    Event,
    EventType,
    describe_exception,
    encode_event,
    minute_of,
    short_repr,
    stat_field,
)
from .message import State
from .monitor import WorkerInfo, encode_worker_info

if TYPE_CHECKING:
    from .app import AioQueue
    from .metrics import WorkerMetrics

__all__ = ("Worker",)

log = logging.getLogger("aioqueue.worker")

#: The longest a fetch blocks server-side; stop() unblocks it sooner.
FETCH_BLOCK_S = 2.0
#: How often a worker looks for the messages of dead workers, and how long such a message
#: must have been left unacknowledged (both at most visibility_timeout's share).
TAKE_OVER_EVERY_S = 1.0
TAKE_OVER_IDLE_S = 2.0


class _Outage:
    """One loop's view of a failing broker: back-off, and log lines that tell the truth.

    Logs when the loop starts failing, every ``remind_s`` while it still fails (with how
    long), and when that same loop succeeds again. Each loop has its own: one loop
    recovering says nothing about another.
    """

    def __init__(self, what: str, max_delay_s: float = 2.0, remind_s: float = 30.0) -> None:
        self.what = what
        self.failing_since: float | None = None
        self.recovered_at: float | None = None
        self.delay = 0.05
        self.max_delay_s = max_delay_s
        self.remind_s = remind_s
        self._next_reminder = 0.0

    @property
    def failing(self) -> bool:
        """True while the last attempt failed."""
        return self.failing_since is not None

    def failed(self, exc: BaseException) -> float:
        """Note a failure; returns how long to back off."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
            self._next_reminder = now + self.remind_s
            log.warning("%s: %s; retrying with back-off", self.what, exc)
        elif now >= self._next_reminder:
            self._next_reminder = now + self.remind_s
            log.error("%s: still failing after %.0fs: %s", self.what,
                      now - self.failing_since, exc)
        delay = self.delay
        self.delay = min(self.delay * 2, self.max_delay_s)
        return delay

    def ok(self) -> None:
        """Note a success."""
        if self.failing_since is not None:
            now = time.monotonic()
            log.warning("%s: working again after %.1fs", self.what, now - self.failing_since)
            self.failing_since = None
            self.recovered_at = now
            self.delay = 0.05


_EVENT_OF_STATE = {
    State.SUCCESS: EventType.SUCCEEDED, State.FAILURE: EventType.FAILED,
    State.RETRY: EventType.RETRIED, State.REVOKED: EventType.REVOKED,
}


def _sent_at(entry_id: str) -> float | None:
    """When a stream entry was added (its id's milliseconds): sent, or moved when due."""
    ms, _, _ = entry_id.partition("-")
    return int(ms) / 1000 if ms.isdigit() else None


class Worker:
    """Runs an app's tasks from its queues. Use ``async with app.worker(...)`` or :meth:`run`."""

    #: Most outcomes settled in one script call, and their most bytes: one huge call would
    #: hold Redis (single-threaded) for everyone else.
    SETTLE_BATCH = 500
    SETTLE_BATCH_BYTES = 8 << 20
    #: How often revocations are re-read (the broadcast is the fast path; this is the one
    #: that survives a lost broadcast).
    REVOCATIONS_EVERY_S = 1.0
    #: How often a worker refreshes its entry in the registry (monitors read it), and how
    #: long that entry lives without a refresh (a killed worker leaves the list then).
    REGISTER_EVERY_S = 2.0
    REGISTER_TTL_S = 10.0
    #: A worker-heartbeat event every this many registry refreshes (20 s).
    HEARTBEAT_EVENT_EVERY = 10

    def __init__(
        self,
        app: AioQueue,
        *,
        concurrency: int,
        queues: Sequence[str],
        burst: bool = False,
        beat: bool = False,
        name: str,
        max_tasks: int | None = None,
        retry_on_startup: bool = False,
        events: bool | None = None,
        metrics_port: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, not {concurrency}")
        if not queues:
            raise ConfigurationError("a worker needs at least one queue")
        self.app = app
        self.concurrency = concurrency
        self.queues = list(dict.fromkeys(queues))
        self.burst = burst
        self.beat = beat
        self.name = name
        #: Stop gracefully after this many tasks (``--max-tasks-per-child``).
        self.max_tasks = max_tasks
        #: Record task events (``-E``; default: the ``worker_send_task_events`` setting).
        self.events = app.conf.worker_send_task_events if events is None else events
        #: Serve Prometheus metrics on 127.0.0.1:PORT/metrics while running (aioqueue.metrics).
        self.metrics_port = metrics_port
        self.metrics: WorkerMetrics | None = None
        self.started_at = time.time()
        self._registrations = 0
        #: Task ids this worker cancelled on a revoke with terminate (the last minute).
        self._terminated: dict[str, float] = {}
        #: Keep retrying, with a log line per attempt, while the broker is unreachable at
        #: start-up (``broker_connection_retry_on_startup``; the CLI's default).
        self.retry_on_startup = retry_on_startup
        #: Ids not to run. Replaced (in place: the runner holds it) at each refresh, so it
        #: holds exactly what the broker holds, plus broadcasts newer than the last refresh.
        self.revoked: set[str] = set()
        self._broadcast_revoked: dict[str, float] = {}
        self._thread_limiter = new_thread_limiter(min(concurrency, 40))
        self.running: dict[str, Running] = {}
        self.processed = 0
        #: Runs parked by flow control (rate limits, concurrency limits) on their way.
        self.parked = 0
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
        self._subscribed = anyio.Event()
        self._stopped = anyio.Event()
        self._task: asyncio.Task[None] | None = None
        self._settle_deadline: float | None = None
        self._rotation = 0
        vt = app.conf.visibility_timeout
        self._reclaim_every_s = max(0.05, min(vt / 2, 5.0))
        self._heartbeat_every_s = max(0.05, vt / 3)
        #: A dead worker's messages (its connection gone: see Broker.take_over_dead) are
        #: looked for this often, and taken once unacknowledged this long: seconds after a
        #: crash instead of visibility_timeout.
        self._take_over_every_s = max(0.05, min(vt / 2, TAKE_OVER_EVERY_S))
        self._take_over_idle_s = min(vt, TAKE_OVER_IDLE_S)
        #: Consumers of dead workers are removed once idle this long and holding nothing
        #: (a live worker's consumer is never idle longer than one blocking fetch).
        self._prune_idle_s = max(3 * vt, 3 * FETCH_BLOCK_S)
        #: When the broker last came back after an outage (see _just_recovered), and an
        #: event that wakes the heartbeat then, to re-claim everything this worker holds.
        self._recovered_at: float | None = None
        self._recovered = anyio.Event()

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
        if self.metrics_port is None:
            await self._run()
            return
        from .metrics import serve_worker_metrics  # prometheus_client: an optional extra

        # Served from before connecting: a scrape then says the process lives, not consuming.
        async with serve_worker_metrics(self, self.metrics_port):
            await self._run()

    async def _run(self) -> None:
        # Bound here, on the loop that runs the worker (the app makes one broker per loop).
        self.broker = self.app.broker
        self.runner = TaskRunner(self.app, self.broker, self.name, self._thread_limiter,
                                 self.revoked)
        if self.events:
            self.runner.on_start = self._record_started
        scheduler = None
        if self.beat:
            from .beat import Beat

            scheduler = Beat(self.app)  # here, so a bad schedule fails start-up plainly
        if os.environ.get("DJANGO_SETTINGS_MODULE"):
            # Celery's Django fix-up: database connections closed around each task run in
            # its thread, django.setup(), the Tasks backend's runners. Imported on use.
            import importlib

            importlib.import_module("aioqueue.contrib.django").fixup(self.app)
        self.app.import_tasks()
        for notice in getattr(self.app, "config_notices", ()):
            log.warning("configuration: %s", notice)
        if signals.worker_init:
            await signals.worker_init.send(self)
        if not await self._prepare():
            log.warning("worker %s stopped before it could reach the broker", self.name)
            return
        async with contextlib.AsyncExitStack() as lifespans:
            for factory in self.app.lifespans:
                opened = await lifespans.enter_async_context(factory())
                if isinstance(opened, Mapping):
                    self.app.resources.update(opened)
                elif opened is not None:
                    self.app.resources[getattr(factory, "__name__", repr(factory))] = opened
            try:
                await self._consume(scheduler)
            finally:
                self.app.resources.clear()
                if signals.worker_shutdown:
                    with anyio.CancelScope(shield=True):
                        await signals.worker_shutdown.send(self)

    def _describe(self, task: asyncio.Task[object] | None) -> str:
        """Name the task of this worker that ``task`` runs (for the loop watchdog)."""
        for running in list(self.running.values()):
            if running.task is task and task is not None:
                return f"Task {running.task_name}[{running.task_id}]"
        return f"worker {self.name}'s own code" if task is not None else "a callback"

    async def _consume(self, scheduler: Any) -> None:
        # A worker starting just after a Redis restart sees every message idle since before
        # the restart, its live owner's included: like a worker that saw the outage, it
        # lets owners re-claim theirs (one heartbeat) before it reclaims anything.
        self._recovered_at = time.monotonic()
        threshold = getattr(self.app.conf, "worker_blocked_loop_warning", 1.0)
        watchdog = None if not threshold else LoopWatchdog(float(threshold), self._describe)
        if watchdog is not None:
            watchdog.start()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._flusher)
                tg.start_soon(self._maintenance)
                tg.start_soon(self._heartbeat_loop)
                tg.start_soon(self._control_listener)
                tg.start_soon(self._stop_watcher)
                if scheduler is not None:
                    tg.start_soon(scheduler.run, self._stop_requested)
                # Started once revocations are heard (bounded: the durable refresh covers
                # a control channel that cannot subscribe).
                with anyio.move_on_after(2.0):
                    await self._subscribed.wait()
                log.info("worker %s consuming %s with concurrency %d", self.name,
                         ",".join(self.queues), self.concurrency)
                await self._announce(EventType.WORKER_ONLINE)
                self._started.set()
                if signals.worker_ready:
                    await signals.worker_ready.send(self)
                await self._fetch_loop()
                if signals.worker_shutting_down:
                    await signals.worker_shutting_down.send(self)
                await self._drain()
                tg.cancel_scope.cancel()
        finally:
            if watchdog is not None:
                watchdog.stop()
            with anyio.CancelScope(shield=True):
                await self._hand_back_running()
                await self._flush_remaining()
                with contextlib.suppress(BrokerError):
                    await self.broker.forget_consumer(self.queues, self.name)
                with anyio.move_on_after(2.0):  # best effort: the registry expires anyway
                    await self._announce(EventType.WORKER_OFFLINE)
            self._stopped.set()
            log.info("worker %s stopped after %d tasks", self.name, self.processed)

    async def _prepare(self) -> bool:
        """Connect and set up; False if stopped meanwhile (a SIGTERM while Redis is away
        must not wait for the whole connection timeout)."""
        log.info("worker %s connecting to %s", self.name, self.broker.display_url)
        try:
            async with anyio.create_task_group() as tg:

                async def stop_waiting() -> None:
                    await self._stop_requested.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(stop_waiting)
                await self._connect()
                await self.broker.ensure_queues(self.queues)
                await self._refresh_revocations()
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # One error (Redis refused or unreachable) reads better as itself: callers
            # catch BrokerError around ``async with app.worker()``, not a group.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        return not self._stopping

    async def _connect(self) -> None:
        """Connect; with ``retry_on_startup``, keep trying (a log line per attempt) until
        the broker answers or the worker is stopped."""
        attempt, delay = 0, 1.0
        while True:
            try:
                await self.broker.connect()
                await self.broker.refresh_lanes(self.queues)
                self.runner.set_rate_overrides(await self.broker.rate_limits())
                if attempt:
                    log.warning("worker %s: connected to %s after %d attempts", self.name,
                                self.broker.display_url, attempt + 1)
                return
            except BrokerConnectionError as exc:
                if not self.retry_on_startup:
                    raise
                attempt += 1
                log.error("worker %s: cannot connect to %s (attempt %d): %s; trying again "
                          "in %.0fs", self.name, self.broker.display_url, attempt, exc, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, 30.0)

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
        second signal stops at once (running tasks are handed back, nothing is lost).

        Under ``--processes N`` (``AIOQUEUE_SUPERVISED``), a signal sent to the whole
        process group reaches a child twice (directly and forwarded by the supervisor), so
        there SIGTERM/SIGINT only ever mean "gracefully"; the supervisor asks for a stop
        now with SIGQUIT when it gets a second signal itself.
        """
        supervised = os.environ.get("AIOQUEUE_SUPERVISED") == "1"
        # As Celery's worker: Redis down at start-up is waited for, not a crash.
        self.retry_on_startup = bool(getattr(self.app.conf,
                                             "broker_connection_retry_on_startup", True))
        signals = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGQUIT] if supervised else [])
        async with anyio.create_task_group() as tg:

            async def on_signals(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                with anyio.open_signal_receiver(*signals) as received:
                    task_status.started()
                    async for signum in received:
                        self._on_signal(signum, supervised)

            await tg.start(on_signals)  # handlers in place before anything can block
            await self.run()
            tg.cancel_scope.cancel()

    def _on_signal(self, signum: int, supervised: bool) -> None:
        name = signal.Signals(signum).name
        if supervised:
            if signum == signal.SIGQUIT:
                log.warning("SIGQUIT from the supervisor: stopping now")
                self.stop(now=True)
            elif not self._stopping:
                log.warning("%s: stopping gracefully", name)
                self.stop()
            return
        if self._hard_stop:
            # Cold shutdown: unsettled messages are redelivered after
            # visibility_timeout, so even this loses nothing.
            log.warning("third signal: exiting immediately")
            os._exit(1)
        if self._stopping:
            log.warning("second signal: stopping now (again to exit at once)")
            self.stop(now=True)
        else:
            log.warning("%s: stopping gracefully (again to stop now)", name)
            self.stop()

    async def _stop_watcher(self) -> None:
        await self._stop_requested.wait()
        with contextlib.suppress(Exception):  # best effort: the read ends at its block anyway
            await self.broker.interrupt_fetch()
        if self._hard_stop:
            self._cancel_running("shutdown")

    # -- fetching --------------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        outage = _Outage(f"worker {self.name}: fetch")
        create_task = asyncio.get_running_loop().create_task
        next_reclaim = time.monotonic() + self._reclaim_every_s
        next_take_over = time.monotonic() + self._take_over_every_s
        next_prune = time.monotonic() + self._prune_idle_s
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
                    got = self._not_mine_already(await self.broker.reclaim(
                        self.queues, self.name, self.app.conf.visibility_timeout, free))
                    if now >= next_prune:
                        next_prune = now + self._prune_idle_s
                        await self.broker.prune_consumers(self.queues, self.name,
                                                          self._prune_idle_s)
                if not got and now >= next_take_over and not self._just_back(now):
                    next_take_over = now + self._take_over_every_s
                    # A registration renewed within two intervals expires after this.
                    expires_before = time.time() + self.REGISTER_TTL_S - (
                        2 * self.REGISTER_EVERY_S)
                    got = self._not_mine_already(await self.broker.take_over_dead(
                        self.queues, self.name, self._take_over_idle_s, free,
                        expires_before))
                if not got:
                    timeout = 0.05 if self.burst else min(FETCH_BLOCK_S, self._reclaim_every_s)
                    got = await self.broker.fetch(self._queue_order(), self.name, free, timeout)
                self._note(outage, ok=True)
            except Exception as exc:  # any error: log, back off, carry on
                self._free += free
                await self._sleep_unless_stopping(self._note(outage, exc=exc))
                continue
            now = time.monotonic()
            fetched = [Running(delivery, started=now) for delivery in got]
            if fetched and self.runner.flow_controlled:
                try:
                    started = await self.runner.admit_fetched(fetched)
                except BaseException:
                    self._free += free - len(got)
                    raise
                self.parked += len(fetched) - len(started)
                fetched = started
            self._free += free - len(fetched)
            for running in fetched:
                delivery = running.delivery
                self.running[delivery.message_id] = running
                # A plain asyncio task, not a task-group child: anyio's start_soon cost a
                # fifth of the worker's CPU per no-op task (py-spy). The worker tracks these
                # in self.running and cancels and hands them back itself when it exits.
                running.task = create_task(self._run_one(running))
            if self.burst and not got and not self.running and await self._drained():
                return

    def _queue_order(self) -> list[str]:
        """The queues, starting one further each time, so none is starved by the others."""
        queues = self.queues
        if len(queues) == 1:
            return queues
        self._rotation = (self._rotation + 1) % len(queues)
        return queues[self._rotation:] + queues[:self._rotation]

    def _not_mine_already(self, reclaimed: list[Delivery]) -> list[Delivery]:
        """Drop reclaimed messages this worker is still running or settling (its heartbeat
        failed for a while, so they looked idle): running them again here would run them
        twice and lose track of the first run."""
        if not reclaimed:
            return reclaimed
        held = {d.message_id for d in (o.delivery for o in self._outcomes) if d is not None}
        return [d for d in reclaimed
                if d.message_id not in self.running and d.message_id not in held]

    def _note(self, outage: _Outage, *, ok: bool = False,
              exc: BaseException | None = None) -> float:
        """Record a loop's success or failure; returns the back-off after a failure."""
        if ok:
            was_failing = outage.failing
            outage.ok()
            if was_failing:
                self._recovered_at = outage.recovered_at
                self._recovered.set()
            return 0.0
        assert exc is not None
        if not isinstance(exc, BrokerError):
            log.exception("%s: unexpected error (the loop carries on)", outage.what,
                          exc_info=exc)
        return outage.failed(exc)

    def _just_back(self, now: float) -> bool:
        """True shortly after a broker outage (or start-up), for the dead-worker take-over:
        long enough for every live worker to renew its registration (two intervals)."""
        recovered = self._recovered_at
        return recovered is not None and now - recovered < 2 * self.REGISTER_EVERY_S

    def _just_recovered(self, now: float) -> bool:
        """True shortly after a broker outage (or start-up). Every message then looks idle
        for longer than the visibility timeout, its owner included; reclaiming at once
        would rerun the tasks of live workers. Waiting for one heartbeat lets each owner
        re-claim its own first."""
        recovered = self._recovered_at
        return recovered is not None and now - recovered < self._heartbeat_every_s * 1.5

    async def _drained(self) -> bool:
        await self._wait_settled()
        sizes = await self.broker.queue_sizes(self.queues)
        return all(ready == 0 and delayed == 0 for ready, delayed, _ in sizes.values())

    async def _run_one(self, running: Running) -> None:
        delivery = running.delivery
        try:
            outcome = await self.runner.run(running)
            if outcome is PARKED:  # flow control: acknowledged and waiting in Redis
                self._release(running, parked=True)
                return
            msg = running.message
            if running.slot is not None or (msg is not None and (msg.unique or msg.order)):
                outcome.release = self.runner.release_of(running, outcome)
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
            self._add_outcome(Outcome(
                delivery=delivery,
                requeue=Enqueue(delivery.queue, delivery.payload, None, delivery.priority),
                release=self.runner.release_of(running, Outcome(requeue=Enqueue("", b"")))))
            self._release(running)
            raise
        if self.events:
            outcome.events = self._task_events(running, outcome)
        if self.metrics is not None:
            self.metrics.finished(running, outcome)
        self._add_outcome(outcome)
        self._release(running)

    # -- events ----------------------------------------------------------------------------
    def _record_started(self, running: Running) -> None:
        """A task-started event, settled with the next batch (see ``aioqueue.events``)."""
        msg = running.message
        if msg is None:
            return
        now = time.time()
        event = Event(EventType.STARTED, now, task_id=msg.id, name=msg.task,
                      queue=running.delivery.queue, worker=self.name,
                      args=short_repr(msg.args), kwargs=short_repr(msg.kwargs),
                      retries=msg.retries, sent_at=_sent_at(running.delivery.message_id),
                      started_at=now)
        self._add_outcome(Outcome(events=((encode_event(event),
                                           stat_field(msg.task, EventType.STARTED),
                                           minute_of(now)),)))

    def _task_events(self, running: Running, outcome: Outcome) -> tuple[tuple[bytes, str, int],
                                                                        ...]:
        """The event of how a run ended (none for a task handed back at shutdown)."""
        msg, state, delivery = running.message, running.state, running.delivery
        if outcome.dead_reason is not None:
            kind = EventType.DEAD
        elif state is None:
            return ()
        else:
            kind = _EVENT_OF_STATE.get(state, "")
            if not kind:
                return ()
        now = time.time()
        started = None if running.started == 0.0 else now - (time.monotonic() - running.started)
        exc = running.exc
        keep_payload = kind in (EventType.FAILED, EventType.DEAD) and len(
            delivery.payload) <= PAYLOAD_MAX
        event = Event(
            kind, now, task_id=None if msg is None else msg.id,
            name=None if msg is None else msg.task, queue=delivery.queue, worker=self.name,
            args=None if msg is None else short_repr(msg.args),
            kwargs=None if msg is None else short_repr(msg.kwargs),
            result=short_repr(running.retval) if kind == EventType.SUCCEEDED else None,
            exception=None if exc is None else describe_exception(exc),
            traceback=None if running.tb is None else running.tb[-TRACEBACK_MAX:],
            retries=0 if msg is None else msg.retries,
            sent_at=_sent_at(delivery.message_id), started_at=started,
            runtime=None if started is None else now - started,
            payload=delivery.payload if keep_payload else None,
            info=None if outcome.dead_reason is None else {"reason": outcome.dead_reason},
        )
        name = None if msg is None else msg.task
        return ((encode_event(event), stat_field(name, kind), minute_of(now)),)

    def info(self) -> WorkerInfo:
        """What this worker says of itself in the registry and in ``inspect stats``."""
        from . import __version__

        try:
            load: float | None = os.getloadavg()[0]
        except OSError:
            load = None
        return WorkerInfo(name=self.name, hostname=os.uname().nodename, pid=os.getpid(),
                          queues=list(self.queues), concurrency=self.concurrency,
                          started_at=self.started_at, last_seen=time.time(),
                          running=len(self.running), processed=self.processed, load=load,
                          events=self.events, version=__version__)

    async def _register(self) -> None:
        info = self.info()
        await self.broker.register_worker(self.name, encode_worker_info(info),
                                          self.REGISTER_TTL_S)
        self._registrations += 1
        if self._registrations % self.HEARTBEAT_EVENT_EVERY == 0:
            await self._worker_event(EventType.WORKER_HEARTBEAT, info)

    async def _announce(self, kind: str) -> None:
        """Online: into the registry; offline: out of it. An event either way."""
        try:
            if kind == EventType.WORKER_OFFLINE:
                await self.broker.unregister_worker(self.name)
            else:
                await self.broker.register_worker(self.name, encode_worker_info(self.info()),
                                                  self.REGISTER_TTL_S)
            await self._worker_event(kind, self.info())
        except Exception as exc:  # monitoring must never stop a worker
            log.warning("worker %s: could not record %s: %s", self.name, kind, exc)

    async def _worker_event(self, kind: str, info: WorkerInfo) -> None:
        event = Event(kind, time.time(), worker=self.name,
                      info=msgspec.structs.asdict(info))
        await self.broker.append_log("events", [encode_event(event)],
                                     self.app.conf.events_max_len)

    def _release(self, running: Running, *, parked: bool = False) -> None:
        if self.running.get(running.delivery.message_id) is running:
            del self.running[running.delivery.message_id]
        if parked:
            self.parked += 1
        else:
            self.processed += 1
        self._free += 1
        self._slot_freed.set()
        if self.max_tasks is not None and self.processed >= self.max_tasks and not self._stopping:
            log.info("worker %s: %d tasks done (max_tasks): stopping to be replaced",
                     self.name, self.processed)
            self.stop()

    def _cancel_running(self, reason: str) -> None:
        for running in list(self.running.values()):
            running.cancel(reason)

    # -- settling --------------------------------------------------------------------------
    def _add_outcome(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        self._unsettled += 1
        self._outcome_added.set()

    def _next_batch(self) -> list[Outcome]:
        outcomes = self._outcomes
        size = count = 0
        for outcome in outcomes:
            if count >= self.SETTLE_BATCH or (count and size >= self.SETTLE_BATCH_BYTES):
                break
            size += len(outcome.record or b"") + len(outcome.requeue.payload
                                                       if outcome.requeue else b"")
            count += 1
        batch, self._outcomes = outcomes[:count], outcomes[count:]
        return batch

    def _settled_some(self, n: int) -> None:
        self._unsettled -= n
        if self._unsettled <= 0:
            self._unsettled = 0
            self._settled.set()
            self._settled = anyio.Event()

    async def _settle(self, batch: list[Outcome], outage: _Outage) -> bool:
        """Settle one batch; outcomes that must be tried again go back to the buffer.
        Returns False when the batch (or part of it) failed for a reason worth a back-off."""
        try:
            # Shielded: a half-sent script call must not be abandoned by a cancellation.
            with anyio.CancelScope(shield=True):
                failures = await self.broker.settle(batch)
        except BaseException:
            self._outcomes[:0] = batch  # never drop an outcome: put the batch back
            raise
        retry: list[Outcome] = []
        done = len(batch)
        for failure in failures:
            outcome = batch[failure.index]
            if failure.transient:
                retry.append(outcome)
                done -= 1
                continue
            replacement = self.runner.unsettleable(outcome, failure.error)
            if replacement is None:
                log.error("worker %s: giving up on settling message %s: %s; it will be "
                          "redelivered after visibility_timeout", self.name,
                          outcome.delivery.message_id if outcome.delivery else "-",
                          failure.error)
                continue
            retry.append(replacement)
            done -= 1
        self._outcomes[:0] = retry
        self._settled_some(done)
        if any(f.transient for f in failures):
            first = next(f for f in failures if f.transient)
            self._note(outage, exc=BrokerError(
                f"{len(retry)} of {len(batch)} results refused: {first.error}"))
            return False
        self._note(outage, ok=True)
        return True

    async def _flusher(self) -> None:
        # Short back-off: once the broker is back, stored results beat any reclaimer.
        outage = _Outage(f"worker {self.name}: settle", max_delay_s=0.25)
        while True:
            if not self._outcomes:
                self._outcome_added = anyio.Event()
                await self._outcome_added.wait()
                continue
            try:
                ok = await self._settle(self._next_batch(), outage)
            except Exception as exc:  # any error: log, back off, carry on
                await anyio.sleep(self._note(outage, exc=exc))
                continue
            if not ok:
                await anyio.sleep(outage.delay)

    async def _wait_settled(self) -> None:
        while self._unsettled:
            await self._settled.wait()

    async def _flush_remaining(self) -> None:
        outage = _Outage(f"worker {self.name}: final settle")
        deadline = self._settle_deadline
        if deadline is None:
            deadline = time.monotonic() + self._settle_grace_s()
        deadline = max(deadline, time.monotonic() + 1.0)
        while self._outcomes and time.monotonic() < deadline:
            try:
                # Bounded by the broker's own call deadline and read timeout.
                await self._settle(self._next_batch(), outage)
            except Exception as exc:
                await anyio.sleep(min(self._note(outage, exc=exc),
                                      max(0.0, deadline - time.monotonic())))
        if self._outcomes:
            # Unsettled messages stay unacknowledged: another worker reclaims and reruns them.
            log.error("worker %s: %d results could not be stored; their messages will be "
                      "redelivered after visibility_timeout", self.name, len(self._outcomes))

    def _settle_grace_s(self) -> float:
        return max(5.0, self.app.conf.broker_connection_timeout)

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
        # Bounded: during an outage the flusher may never succeed; what is left then goes
        # to _flush_remaining, which shares this deadline, and after that to redelivery.
        self._settle_deadline = time.monotonic() + self._settle_grace_s()
        with anyio.move_on_after(self._settle_grace_s()):
            await self._wait_settled()

    # -- maintenance -----------------------------------------------------------------------
    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._stop_requested.wait()

    async def _maintenance(self) -> None:
        outage = _Outage(f"worker {self.name}: moving due delayed tasks", max_delay_s=0.5)
        interval = self.app.conf.delayed_poll_interval
        promote_every = self._reclaim_every_s
        next_promote = time.monotonic() + promote_every
        while True:
            try:
                await self.broker.move_due(self.queues, time.time())
                if time.monotonic() >= next_promote:
                    # Slots of killed workers lapse: start the runs parked for them.
                    next_promote = time.monotonic() + promote_every
                    await self.broker.promote_slots(self.app.conf.visibility_timeout)
                self._note(outage, ok=True)
            except Exception as exc:  # any error: log, back off, carry on
                await anyio.sleep(self._note(outage, exc=exc))
                continue
            await anyio.sleep(interval)

    async def _heartbeat_loop(self) -> None:
        outage = _Outage(f"worker {self.name}: heartbeat", max_delay_s=0.5)
        next_heartbeat = time.monotonic() + self._heartbeat_every_s
        next_refresh = time.monotonic() + self.REVOCATIONS_EVERY_S
        next_register = time.monotonic() + self.REGISTER_EVERY_S
        while True:
            # After an outage seen by this loop or any other, every held message has looked
            # idle for the outage's length: re-claim them all before others reclaim them.
            everything = outage.failing or self._recovered.is_set()
            try:
                now = time.monotonic()
                if now >= next_heartbeat or everything:
                    self._recovered = anyio.Event()
                    await self._heartbeat(now, everything=everything)
                    next_heartbeat = now + self._heartbeat_every_s
                if now >= next_refresh or everything:
                    await self._refresh_revocations()
                    next_refresh = now + self.REVOCATIONS_EVERY_S
                if now >= next_register:
                    next_register = now + self.REGISTER_EVERY_S
                    await self._register()
                    await self.broker.refresh_lanes(self.queues)
                self._note(outage, ok=True)
            except Exception as exc:  # any error: log, back off, carry on
                await anyio.sleep(self._note(outage, exc=exc))
                continue
            with anyio.move_on_after(max(0.01, min(next_heartbeat, next_refresh, next_register)
                                         - time.monotonic())):
                await self._recovered.wait()

    async def _heartbeat(self, now: float, *, everything: bool = False) -> None:
        # Only tasks that have run a while need it: a short task is acked long before. After
        # an outage every held message has looked idle for the outage's length: claim all.
        running = [r for r in self.running.values()
                   if everything or now - r.started >= self._heartbeat_every_s]
        held = [r.delivery for r in running]
        # Finished but not yet stored (the broker was away): still ours, keep them claimed
        # so no other worker reruns them when the broker returns.
        held += [o.delivery for o in self._outcomes if o.delivery is not None]
        if not held:
            return
        slots = [(r.slot, r.task_id) for r in running if r.slot is not None and r.task_id]
        if slots:
            await self.broker.renew_slots(slots, self.app.conf.visibility_timeout)
        lost = {d.message_id for d in await self.broker.keep_claimed(self.name, held)}
        for r in running:
            if r.delivery.message_id in lost and self.running.get(r.delivery.message_id) is r:
                # Another worker took it over while this one looked dead: it runs there too
                # now. Not claimed back (that would toss it between two live workers).
                log.warning("worker %s: task %s (message %s) was taken over by another "
                            "worker while running here", self.name, r.task_id,
                            r.delivery.message_id)

    async def _refresh_revocations(self) -> None:
        # Rate limits set at run time ride along (the broadcast is the fast path).
        self.runner.set_rate_overrides(await self.broker.rate_limits())
        now = time.time()
        found = await self.broker.revocations(now)
        # A broadcast may beat the write it announces into this read's reply: keep those
        # until a later read (one interval on) surely holds them.
        recent = time.monotonic() - 3 * self.REVOCATIONS_EVERY_S
        self._broadcast_revoked = {k: t for k, t in self._broadcast_revoked.items()
                                   if t > recent}
        revoked = found.revoked | self._broadcast_revoked.keys()
        self.revoked.intersection_update(revoked)
        self.revoked.update(revoked)
        if found.terminate:
            for running in list(self.running.values()):
                if running.task_id in found.terminate:
                    running.cancel("revoked")

    async def _control_listener(self) -> None:
        outage = _Outage(f"worker {self.name}: control channel")
        while True:
            try:
                async for raw in self.broker.control_messages():
                    self._note(outage, ok=True)
                    if raw:
                        message = self._on_control(raw)
                        if message is not None and message.op == "lanes":
                            # A queue got a new priority: read it, then fetch again with it.
                            await self.broker.refresh_lanes(self.queues)
                            await self.broker.interrupt_fetch()
                        if message is not None and message.reply_to is not None:
                            await self._answer(message)
                        continue
                    # (Re)subscribed: what was broadcast meanwhile is in the durable sets.
                    await self._refresh_revocations()
                    self._subscribed.set()
                return
            except Exception as exc:  # any error: log, back off, carry on
                await anyio.sleep(self._note(outage, exc=exc))

    def _on_control(self, raw: bytes) -> ControlMessage | None:
        """Act on a broadcast; returns it when it is for this worker."""
        message = decode_control(raw)
        if message is None:
            log.warning("ignoring an undecodable control message")
            return None
        if message.destination is not None and message.destination != self.name:
            return None
        if message.op == "revoke" and message.task_id:
            self.revoked.add(message.task_id)
            self._broadcast_revoked[message.task_id] = time.monotonic()
            if message.terminate:
                for running in self.running.values():
                    if running.task_id == message.task_id:
                        running.cancel("revoked")
                        # For a "cancel" request, which follows its revoke on the channel.
                        self._terminated[message.task_id] = time.monotonic()
        elif message.op == "shutdown":
            self.stop()
        elif message.op == "rate_limit" and message.arguments:
            task, rate = message.arguments.get("task"), message.arguments.get("rate")
            if isinstance(task, str):
                overrides = dict(self.runner.rate_overrides)
                if rate in (None, "", "0"):
                    overrides.pop(task, None)
                else:
                    overrides[task] = str(rate)
                self.runner.set_rate_overrides(overrides)
        return message

    async def _answer(self, message: ControlMessage) -> None:
        """Answer a request (``Monitor.inspect``/``control``) in its reply list."""
        try:
            answer = self._answer_for(message.op, message.arguments or {})
            reply = msgspec.msgpack.encode({"worker": self.name, "answer": answer})
            assert message.reply_to is not None
            if not self.app.keys.is_control_reply(message.reply_to):
                log.warning("ignoring a control request answering to %.80r: not a reply "
                            "list of this app", message.reply_to)
                return
            await self.broker.push_control_reply(message.reply_to, reply)
        except Exception as exc:  # a bad request never stops the listener
            log.warning("worker %s: could not answer control %r: %s", self.name, message.op,
                        exc)

    def _answer_for(self, op: str, arguments: dict[str, Any]) -> Any:
        if op == "ping":
            return "pong"
        if op == "shutdown":
            return "shutting down"
        if op == "cancel":
            task_id = str(arguments.get("task_id"))
            now = time.monotonic()
            self._terminated = {t: at for t, at in self._terminated.items() if now - at < 60}
            if task_id in self._terminated:
                return f"cancelled {task_id}"
            if any(r.task_id == task_id for r in self.running.values()):
                return f"cancelling {task_id}"
            return "not running here"
        if op == "rate_limit":
            task = self.app.tasks.get(str(arguments.get("task")))
            if task is None:
                return f"unknown task {arguments.get('task')!r}"
            return "new rate limit set successfully"  # Celery's answer
        if op == "inspect":
            what = arguments.get("what")
            if what == "active":
                now = time.monotonic()
                return [{"id": r.task_id, "name": r.task_name, "queue": r.delivery.queue,
                         "args": None if r.message is None else short_repr(r.message.args),
                         "kwargs": None if r.message is None else short_repr(
                             r.message.kwargs),
                         "running_for": round(now - r.started, 3)}
                        for r in self.running.values()]
            if what == "reserved":
                return []  # a worker takes only what it starts: nothing waits in it
            if what == "scheduled":
                return []  # delayed tasks wait in Redis (`aioqueue queues`), not here
            if what == "registered":
                return sorted(self.app.tasks)
            if what == "stats":
                return msgspec.structs.asdict(self.info())
            if what == "revoked":
                return sorted(self.revoked)
            return f"unknown inspect {what!r}"
        return f"unknown control {op!r}"
