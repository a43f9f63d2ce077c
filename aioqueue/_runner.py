"""Running one delivery to its :class:`~aioqueue.broker.Outcome`.

The worker's fetch loop hands each delivery here; what comes back says how to settle it.
Nothing in this module raises for a bad message: every path ends in an outcome, so a
worker keeps serving after any single bad message and nothing vanishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from . import signals
from ._concurrency import run_in_thread
from ._keys import Keys
from .broker import Broker, Delivery, Enqueue, Outcome
from .broker.base import Release
from .errors import (
    ConfigurationError,
    DeadLettered,
    NotRegistered,
    Retry,
    SerializationError,
    TaskRevoked,
    TimeLimitExceeded,
)
from .flow import Admission, parse_rate
from .message import ResultRecord, State, TaskMessage, get_serializer
from .task import Request, Task, _current_request

if TYPE_CHECKING:
    from .app import AioQueue

__all__ = ("Running", "TaskRunner")

log = logging.getLogger("aioqueue.worker")

_UNSETTLEABLE = "unsettleable: "

#: What :meth:`TaskRunner.run` returns for a run parked by flow control: already
#: acknowledged (and waiting in Redis), nothing to settle.
PARKED = Outcome()


@dataclass(slots=True)
class Running:
    """A task running on this worker: what to cancel, and why it was cancelled."""

    delivery: Delivery
    task_id: str | None = None
    task_name: str | None = None
    #: The decoded message (for events), once decoded.
    message: TaskMessage | None = None
    started: float = 0.0
    task: asyncio.Task[None] | None = None
    #: Set before cancelling from outside: "revoked" or "shutdown".
    cancel_reason: str | None = None
    #: How the run ended, for hooks and signals (None: handed back, never finished).
    state: State | None = None
    retval: Any = None
    exc: BaseException | None = None
    tb: str | None = None
    #: The concurrency key whose slot it holds (renewed by the heartbeat), if any.
    slot: str | None = None
    #: Admitted by flow control before it was started (the fetch loop's group admission).
    admitted: bool = False

    def cancel(self, reason: str) -> None:
        """Cancel the running task, saying why."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self.task is not None:
            self.task.cancel()


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


class TaskRunner:
    """Turns deliveries into outcomes for one worker."""

    def __init__(
        self, app: AioQueue, broker: Broker, worker_name: str,
        thread_limiter: anyio.CapacityLimiter, revoked: set[str],
    ) -> None:
        self.app = app
        self.broker = broker
        self.worker_name = worker_name
        self.serializer = app.serializer
        self.thread_limiter = thread_limiter
        self.revoked = revoked
        self.result_ttl_s = app.conf.result_expires_s
        self.keys = Keys(app.conf.key_prefix)
        self.max_deliveries = app.conf.max_deliveries
        self.log_info = log.isEnabledFor(logging.INFO)
        #: Called as a run starts (the worker records a task-started event with it).
        self.on_start: Callable[[Running], None] | None = None
        #: Rate limits set at run time (task name -> rate), kept current by the worker.
        self.rate_overrides: dict[str, str] = {}
        self._intervals: dict[str, float | None] = {}
        #: A concurrency slot's lease (renewed by the heartbeat).
        self.lease_s = app.conf.visibility_timeout
        self._admissions = _AdmissionBatch(broker, self.lease_s)
        self.rate_limits_enabled = not app.conf.worker_disable_rate_limits
        self._flow: bool | None = None
        self._flow_tasks = 0

    def set_rate_overrides(self, overrides: dict[str, str]) -> None:
        """Rate limits set at run time changed (``aioqueue control rate-limit``)."""
        if overrides != self.rate_overrides:
            self.rate_overrides = overrides
            self._intervals.clear()
            self._flow = None

    @property
    def flow_controlled(self) -> bool:
        """True when some run may need admission (a rate limit or a concurrency limit
        somewhere): only then does the fetch loop look at what it fetched."""
        if self._flow is None or len(self.app.tasks) != self._flow_tasks:
            self._flow_tasks = len(self.app.tasks)
            self._flow = bool(self.rate_limits_enabled and (
                self.rate_overrides or self.app.conf.task_default_rate_limit)) or any(
                t.options.rate_limit or t.options.max_concurrency
                for t in self.app.tasks.values())
        return self._flow

    async def admit_fetched(self, fetched: list[Running]) -> list[Running]:
        """Group admission, in the fetch loop: decode what was fetched, admit every run
        that needs it in one broker call, and return the runs to start (the others are
        parked in Redis). On a broker error the runs start as fetched and each asks for
        itself (the per-run path)."""
        asking: list[tuple[Running, Admission]] = []
        for running in fetched:
            try:
                msg = self.serializer.decode_message(running.delivery.payload)
            except SerializationError:
                continue  # run() records it
            running.task_id, running.task_name, running.message = msg.id, msg.task, msg
            task = self.app.tasks.get(msg.task)
            if task is None:
                continue
            try:
                admission = self._admission(task, msg)
            except Exception:
                continue  # run() fails it, naming the key function
            if admission is not None:
                asking.append((running, admission))
        if not asking:
            return fetched
        try:
            decisions = await self.broker.admit_many(
                [(r.delivery, a) for r, a in asking], self.lease_s)
        except Exception as exc:
            log.warning("worker %s: group admission failed (%s); each run asks alone",
                        self.worker_name, exc)
            return fetched
        parked: set[int] = set()
        for (running, admission), admitted in zip(asking, decisions, strict=True):
            if admitted:
                running.admitted, running.slot = True, admission.slot_key
            else:
                parked.add(id(running))
        return [r for r in fetched if id(r) not in parked]

    def rate_interval(self, task: Task[Any, Any]) -> float | None:
        """Seconds between two runs of ``task`` cluster-wide, or None (no rate limit)."""
        try:
            return self._intervals[task.name]
        except KeyError:
            pass
        interval: float | None = None
        if self.rate_limits_enabled:
            rate = self.rate_overrides.get(task.name)
            if rate is None:
                rate = task.options.rate_limit or self.app.conf.task_default_rate_limit
            try:
                interval = parse_rate(rate, f"rate limit of {task.name}")
            except ConfigurationError as exc:
                log.error("%s: not enforced", exc)
        self._intervals[task.name] = interval
        return interval

    def _admission(self, task: Task[Any, Any], msg: TaskMessage) -> Admission | None:
        """What this run must be admitted for (rate, concurrency), or None (most runs)."""
        interval = self.rate_interval(task)
        slots = task.options.max_concurrency
        if interval is None and not slots:
            return None
        slot_key: str | None = None
        if slots:
            key_fn = task.options.concurrency_key
            key = "" if key_fn is None else task.key_of(key_fn, msg.args, msg.kwargs)
            slot_key = f"{task.name}:{key}"
        return Admission(msg.id, task.name if interval is not None else None, interval or 0.0,
                         slot_key, slots or 0)

    async def _admit(self, running: Running, admission: Admission) -> bool:
        """Ask the broker to admit the run (batched with every other run started in this
        turn of the loop). Not abandoned on cancellation: a run parked meanwhile is
        already acknowledged, so handing it back would run it twice."""
        decision = self._admissions.submit(running.delivery, admission)
        try:
            admitted = await asyncio.shield(decision)
        except asyncio.CancelledError:
            admitted = await decision
            if not admitted:
                return False  # parked: safe in Redis, nothing to hand back
            running.slot = admission.slot_key  # handed back: its slot is freed with it
            raise
        if admitted:
            running.slot = admission.slot_key
        return admitted

    def _slot_key_or_none(self, task: Task[Any, Any], msg: TaskMessage) -> str | None:
        try:
            admission = self._admission(task, msg)
        except Exception:
            return None
        return None if admission is None else admission.slot_key

    def release_of(self, running: Running, outcome: Outcome) -> Release | None:
        """What the run frees with its outcome: its slot always; its unique lock and its
        order key's turn only when the task ended for good (not a retry or hand-back)."""
        msg = running.message
        if msg is None:
            return None
        final = outcome.requeue is None
        unique = msg.unique if final else None
        order = msg.order if final else None
        if running.slot is None and unique is None and order is None:
            return None
        return Release(msg.id, unique, order, running.slot, self.lease_s)

    # -- records ---------------------------------------------------------------------------
    def _outcome(
        self,
        delivery: Delivery,
        msg: TaskMessage,
        state: State,
        *,
        result: Any = None,
        exc: BaseException | None = None,
        tb: str | None = None,
        retries: int | None = None,
        requeue: Enqueue | None = None,
        dead_reason: str | None = None,
    ) -> Outcome:
        final = state in (State.SUCCESS, State.FAILURE, State.REVOKED)
        if msg.ignore_result:
            return Outcome(delivery=delivery, requeue=requeue, dead_reason=dead_reason)
        record = ResultRecord(
            id=msg.id,
            state=state,
            result=result,
            exc_type=None if exc is None else _type_name(exc),
            exc_message=None if exc is None else str(exc),
            traceback=tb,
            date_done=time.time(),
            retries=msg.retries if retries is None else retries,
            task=msg.task,
            worker=self.worker_name,
            exc_args=None if exc is None else self._portable_args(exc),
        )
        try:
            data = self.serializer.encode(record)
        except SerializationError as ser:
            what = "return value" if state is State.SUCCESS else "exception"
            error = SerializationError(
                f"{msg.task}[{msg.id}]: the {what} of type "
                f"{type(result if exc is None else exc).__name__} is not serializable with "
                f"{self.serializer.name} ({ser})"
            )
            log.error("%s", error)
            record = ResultRecord(
                id=msg.id, state=State.FAILURE, exc_type=_type_name(error),
                exc_message=str(error), date_done=time.time(), retries=record.retries,
                task=msg.task, worker=self.worker_name,
            )
            data = self.serializer.encode(record)
            final = True
        return Outcome(
            delivery=delivery,
            task_id=msg.id,
            record=data,
            result_ttl_s=self.result_ttl_s,
            reply_to=msg.reply_to if final and self._may_reply(msg) else None,
            requeue=requeue,
            dead_reason=dead_reason,
        )

    def _undecodable(self, delivery: Delivery, exc: SerializationError) -> Outcome:
        """A message this app cannot decode: dead-lettered, and when another safe
        serializer reads it (an app sharing this Redis with another ``task_serializer``),
        also a FAILURE its producer can read, in its own format, so it never waits on
        PENDING forever."""
        log.error("dead-lettering undecodable message %s on queue %s: %s",
                  delivery.message_id, delivery.queue, exc)
        for name in ("msgpack", "json"):
            if name == self.serializer.name:
                continue
            other = get_serializer(name)
            try:
                msg = other.decode_message(delivery.payload)
            except SerializationError:
                continue
            error = SerializationError(
                f"{msg.task}[{msg.id}] was sent encoded with {name}, but the worker's app "
                f"{self.app.main!r} uses {self.serializer.name}: give apps that share a Redis "
                f"the same task_serializer, or each its own key_prefix")
            log.error("%s", error)
            record = other.encode(ResultRecord(
                id=msg.id, state=State.FAILURE, exc_type=_type_name(error),
                exc_message=str(error), date_done=time.time(), task=msg.task,
                worker=self.worker_name))
            return Outcome(delivery=delivery, task_id=msg.id, record=record,
                           result_ttl_s=self.result_ttl_s,
                           reply_to=msg.reply_to if self._may_reply(msg) else None,
                           dead_reason=f"undecodable: {exc}")
        return Outcome(delivery=delivery, dead_reason=f"undecodable: {exc}")

    def _may_reply(self, msg: TaskMessage) -> bool:
        reply_to = msg.reply_to
        if reply_to is None:
            return False
        if self.keys.is_reply(reply_to):
            return True
        # Whoever wrote this message could otherwise make the worker push to any key.
        log.warning("Task %s[%s]: ignoring reply_to %.80r: not a reply list of this app",
                    msg.task, msg.id, reply_to)
        return False

    def unsettleable(self, outcome: Outcome, error: str) -> Outcome | None:
        """What to settle instead of an outcome the broker refused for good (say a key of
        the wrong type where the queue's stream should be): a FAILURE record and a dead
        letter, so the message is neither lost nor retried forever. None when that was
        already the replacement: then the message is left for redelivery."""
        delivery = outcome.delivery
        if delivery is None or (outcome.dead_reason or "").startswith(_UNSETTLEABLE):
            return None
        record: bytes | None = None
        if outcome.task_id is not None:
            record = self.serializer.encode(ResultRecord(
                id=outcome.task_id, state=State.FAILURE,
                exc_type="aioqueue.errors.BrokerError",
                exc_message=f"its outcome could not be stored: {error}",
                date_done=time.time(), worker=self.worker_name,
            ))
        log.error("worker %s: message %s (task %s) could not be settled (%s): moved to dead "
                  "letters", self.worker_name, delivery.message_id, outcome.task_id, error)
        return Outcome(delivery=delivery, task_id=outcome.task_id, record=record,
                       result_ttl_s=self.result_ttl_s, dead_reason=f"{_UNSETTLEABLE}{error}")

    def _portable_args(self, exc: BaseException) -> tuple[Any, ...] | None:
        args = tuple(exc.args)
        try:
            self.serializer.encode(ResultRecord(id="", state=State.FAILURE, exc_args=args))
        except SerializationError:
            return None
        return args

    # -- running ---------------------------------------------------------------------------
    async def run(self, running: Running) -> Outcome:
        """Run one delivery and say how to settle it."""
        delivery = running.delivery
        msg = running.message  # decoded already when the fetch loop admitted it
        if msg is None:
            try:
                msg = self.serializer.decode_message(delivery.payload)
            except SerializationError as exc:
                return self._undecodable(delivery, exc)
            running.task_id, running.task_name, running.message = msg.id, msg.task, msg

        if delivery.deliveries > self.max_deliveries:
            error = DeadLettered(
                f"{msg.task}[{msg.id}] was delivered {delivery.deliveries} times "
                f"(max_deliveries={self.max_deliveries}) without an outcome: its worker "
                f"died each time, or failed before running it (see the workers' logs)",
                task_name=msg.task, task_id=msg.id,
            )
            log.error("%s; moved to dead letters", error)
            return self._outcome(delivery, msg, State.FAILURE, exc=error,
                                 dead_reason=f"max_deliveries: {error}")

        task = self.app.tasks.get(msg.task)
        if task is None:
            unknown = NotRegistered(
                f"task {msg.task!r} is not registered with app {self.app.main!r} (is its "
                f"module imported by the worker, e.g. include=[...]? apps that share a "
                f"Redis need each their own key_prefix)",
                task_name=msg.task, task_id=msg.id,
            )
            log.error("%s (message %s); moved to dead letters", unknown, msg.id)
            return self._outcome(delivery, msg, State.FAILURE, exc=unknown,
                                 dead_reason=f"not registered: {msg.task}")

        now = time.time()
        if task.options.max_concurrency and (msg.id in self.revoked or (
                msg.expires is not None and msg.expires < now)):
            # It may hold a slot given when it was parked: free it with the outcome.
            running.slot = self._slot_key_or_none(task, msg)
        if msg.expires is not None and msg.expires < now:
            log.info("Task %s[%s] expired before it started", msg.task, msg.id)
            running.state = State.REVOKED
            return self._outcome(delivery, msg, State.REVOKED, exc=TaskRevoked(
                f"expired at {msg.expires:.3f} before it started"))
        if msg.id in self.revoked:
            log.info("Task %s[%s] revoked: not run", msg.task, msg.id)
            running.state = State.REVOKED
            return self._outcome(delivery, msg, State.REVOKED, exc=TaskRevoked("revoked"))
        if msg.eta is not None and msg.eta > now + 0.001:
            # Arrived early (a dead letter requeued by hand, a clock step): wait in the set.
            return Outcome(delivery=delivery, requeue=Enqueue(
                delivery.queue, delivery.payload, msg.eta, delivery.priority))
        try:
            # Admitted already (the fetch loop's group admission): nothing to ask.
            admission = None if running.admitted else self._admission(task, msg)
        except Exception as exc:  # the user's concurrency_key: fail the task, say why
            bad_key = ConfigurationError(f"{msg.task}[{msg.id}]: its concurrency_key raised "
                                         f"{type(exc).__name__}: {exc}")
            log.error("%s", bad_key)
            running.state = State.FAILURE
            return self._outcome(delivery, msg, State.FAILURE, exc=bad_key)
        if admission is not None and not await self._admit(running, admission):
            return PARKED  # acknowledged and waiting in Redis for its turn
        if self.on_start is not None:
            self.on_start(running)
        if self.app.around_run is not None:  # instrumented (aioqueue.contrib.otel)
            execution = (self._execute_hooked if task.has_hooks or signals.task_receivers
                         else self._execute_plain)(running, delivery, msg, task)
            return await self.app.around_run(running, execution)
        if task.has_hooks or signals.task_receivers:
            return await self._execute_hooked(running, delivery, msg, task)
        # No hooks: straight to the run (one coroutine frame less per task).
        return await self._execute_plain(running, delivery, msg, task)

    async def _execute_hooked(
        self, running: Running, delivery: Delivery, msg: TaskMessage, task: Task[Any, Any]
    ) -> Outcome:
        """A run with Celery's task hooks and signals around it (see ``aioqueue.signals``).

        A hook or receiver that raises is logged; it never changes the task's outcome.
        """
        base = {"task_id": msg.id, "task": task, "args": msg.args, "kwargs": msg.kwargs}
        if signals.task_prerun:
            await signals.task_prerun.send(task, **base)
        outcome = await self._execute_plain(running, delivery, msg, task)
        state, exc, tb = running.state, running.exc, running.tb
        if state is None:  # handed back (shutdown): it will run again
            return outcome
        opts = task.options
        if state is State.SUCCESS:
            if signals.task_success:
                await signals.task_success.send(task, result=running.retval, task_id=msg.id)
            await _hook(opts.on_success, running.retval, msg.id, msg.args, msg.kwargs)
        elif state is State.RETRY:
            request = current_request_of(msg, delivery)
            if signals.task_retry:
                await signals.task_retry.send(task, request=request, reason=exc, einfo=tb)
            await _hook(opts.on_retry, exc, msg.id, msg.args, msg.kwargs, tb)
        elif state is State.FAILURE:
            if signals.task_failure:
                await signals.task_failure.send(task, exception=exc, traceback=tb, einfo=tb,
                                                **base)
            await _hook(opts.on_failure, exc, msg.id, msg.args, msg.kwargs, tb)
        elif state is State.REVOKED and signals.task_revoked:
            await signals.task_revoked.send(task, request=current_request_of(msg, delivery),
                                            terminated=True, expired=False)
        retval = running.retval if state is State.SUCCESS else exc
        await _hook(opts.after_return, str(state), retval, msg.id, msg.args, msg.kwargs, tb)
        if signals.task_postrun:
            await signals.task_postrun.send(task, retval=retval, state=str(state), **base)
        return outcome

    async def _execute_plain(
        self, running: Running, delivery: Delivery, msg: TaskMessage, task: Task[Any, Any]
    ) -> Outcome:
        opts = task.options
        if opts.track_started and not msg.ignore_result:
            started = ResultRecord(id=msg.id, state=State.STARTED, retries=msg.retries,
                                   task=msg.task, worker=self.worker_name)
            await self.broker.set_result(msg.id, self.serializer.encode(started),
                                         self.result_ttl_s)
        limit = msg.time_limit if msg.time_limit is not None else opts.time_limit
        request = Request(
            id=msg.id, task=msg.task, args=msg.args, kwargs=msg.kwargs, retries=msg.retries,
            queue=delivery.queue, eta=msg.eta, expires=msg.expires,
            deliveries=delivery.deliveries, hostname=self.worker_name,
            max_retries=msg.max_retries, time_limit=msg.time_limit,
            reply_to=msg.reply_to,  # checked by update_state, the one user
            priority=msg.priority,
        )
        token = _current_request.set(request)
        if self.log_info:
            log.info("Task %s[%s] received", msg.task, msg.id)
        start = time.perf_counter()
        deadline: asyncio.Timeout | None = None
        try:
            args, kwargs = task.convert_args(msg.args, msg.kwargs)
            if task.options.bind:
                args = (task, *args)
            if limit is None:
                value = await self._call(task, args, kwargs)
            else:
                async with asyncio.timeout(limit) as deadline:
                    value = await self._call(task, args, kwargs)
            outcome = self._outcome(delivery, msg, State.SUCCESS, result=value)
            running.state, running.retval = State.SUCCESS, value
            if self.log_info:
                log.info("Task %s[%s] succeeded in %.4fs: %.200r", msg.task, msg.id,
                         time.perf_counter() - start, value)
            return outcome
        except Retry as retry:
            running.state, running.exc = State.RETRY, retry.exc or retry
            return self._retry(delivery, msg, retry.when, retry.exc or retry)
        except asyncio.CancelledError:
            if running.cancel_reason is None:
                raise  # not ours to handle: the worker itself is being cancelled
            task_handle = asyncio.current_task()
            if task_handle is not None:
                task_handle.uncancel()
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) and deadline is not None
                    and deadline.expired()):
                failed = self._failed(delivery, msg, task, exc)
                running.state = State.FAILURE if failed.requeue is None else State.RETRY
                running.exc, running.tb = exc, "".join(traceback.format_exception(exc))
                return failed
        finally:
            _current_request.reset(token)
        # Cancelled: by the time limit, a revoke, or shutdown.
        reason = running.cancel_reason
        if reason == "shutdown":
            log.warning("Task %s[%s] interrupted by shutdown: handed back to the queue",
                        msg.task, msg.id)
            return Outcome(delivery=delivery, requeue=Enqueue(delivery.queue, delivery.payload,
                                                              None, delivery.priority))
        if reason == "revoked":
            log.warning("Task %s[%s] terminated: revoked", msg.task, msg.id)
            running.state = State.REVOKED
            return self._outcome(delivery, msg, State.REVOKED,
                                 exc=TaskRevoked("revoked and terminated while running"))
        error = TimeLimitExceeded(
            f"{msg.task}[{msg.id}] exceeded its time limit of {limit:g}s"
            + ("" if task.is_async else " (its thread keeps running; the slot was freed)"),
            task_name=msg.task, task_id=msg.id,
        )
        log.error("%s", error)
        running.state, running.exc = State.FAILURE, error
        return self._outcome(delivery, msg, State.FAILURE, exc=error)

    async def _call(self, task: Task[Any, Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        contexts = self.app.task_contexts
        if contexts:
            return await self._call_in_contexts(task, args, kwargs, contexts)
        if task.is_async:
            return await task.fn(*args, **kwargs)
        return await run_in_thread(task.fn, args, kwargs, self.thread_limiter)

    async def _call_in_contexts(
        self, task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        contexts: list[Callable[[Task[Any, Any], Any], Any]],
    ) -> Any:
        """Run inside every ``app.task_context`` (for a ``def`` task: in its thread)."""
        request = _current_request.get(None)
        if task.is_async:
            with contextlib.ExitStack() as stack:
                for factory in contexts:
                    stack.enter_context(factory(task, request))
                return await task.fn(*args, **kwargs)

        def in_contexts(*call_args: Any, **call_kwargs: Any) -> Any:
            with contextlib.ExitStack() as stack:
                for factory in contexts:
                    stack.enter_context(factory(task, request))
                return task.fn(*call_args, **call_kwargs)

        return await run_in_thread(in_contexts, args, kwargs, self.thread_limiter)

    def _failed(
        self, delivery: Delivery, msg: TaskMessage, task: Task[Any, Any], exc: Exception
    ) -> Outcome:
        opts = task.options
        if opts.autoretry_for and isinstance(exc, opts.autoretry_for):
            limit = msg.max_retries if msg.max_retries is not None else opts.max_retries
            if limit is None or msg.retries < limit:
                return self._retry(delivery, msg, task.backoff_delay(msg.retries), exc)
        tb = "".join(traceback.format_exception(exc))
        log.error("Task %s[%s] raised %s: %s", msg.task, msg.id, _type_name(exc), exc,
                  exc_info=self.log_info)
        return self._outcome(delivery, msg, State.FAILURE, exc=exc, tb=tb)

    def _retry(
        self, delivery: Delivery, msg: TaskMessage, delay: float | None, exc: BaseException
    ) -> Outcome:
        delay = 0.0 if delay is None else max(0.0, delay)
        due = time.time() + delay
        again = TaskMessage(
            id=msg.id, task=msg.task, args=msg.args, kwargs=msg.kwargs, queue=msg.queue,
            retries=msg.retries + 1, eta=due, expires=msg.expires, time_limit=msg.time_limit,
            reply_to=msg.reply_to, ignore_result=msg.ignore_result, max_retries=msg.max_retries,
            headers=msg.headers, priority=msg.priority, unique=msg.unique, order=msg.order,
        )
        log.warning("Task %s[%s] retry %d in %.3gs: %s", msg.task, msg.id, msg.retries + 1,
                    delay, exc)
        tb = "".join(traceback.format_exception(exc)) if exc.__traceback__ else None
        requeue = Enqueue(delivery.queue, self.serializer.encode(again), due, delivery.priority)
        return self._outcome(delivery, msg, State.RETRY, exc=exc, tb=tb,
                             retries=msg.retries + 1, requeue=requeue)


class _AdmissionBatch:
    """Group admission: the runs that ask in one turn of the event loop (a fetch hands out
    many at once) are admitted by one broker call, as settling is group commit."""

    def __init__(self, broker: Broker, lease_s: float) -> None:
        self.broker = broker
        self.lease_s = lease_s
        self._asking: list[tuple[Delivery, Admission, asyncio.Future[bool]]] = []
        self._sending: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def submit(self, delivery: Delivery, admission: Admission) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        decision: asyncio.Future[bool] = loop.create_future()
        if not self._asking:
            loop.call_soon(self._send)
        self._asking.append((delivery, admission, decision))
        return decision

    def _send(self) -> None:
        batch, self._asking = self._asking, []
        sending = asyncio.get_running_loop().create_task(self._admit(batch))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _admit(self, batch: list[tuple[Delivery, Admission, asyncio.Future[bool]]]
                     ) -> None:
        try:
            admitted = await self.broker.admit_many([(d, a) for d, a, _ in batch],
                                                    self.lease_s)
        except BaseException as exc:
            for _, _, decision in batch:
                if not decision.done():
                    decision.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, decision), ok in zip(batch, admitted, strict=True):
            if not decision.done():
                decision.set_result(ok)


def current_request_of(msg: TaskMessage, delivery: Delivery) -> Request:
    """A request for signals sent after the run (its context variable is reset by then)."""
    return Request(id=msg.id, task=msg.task, args=msg.args, kwargs=msg.kwargs,
                   retries=msg.retries, queue=delivery.queue, eta=msg.eta,
                   expires=msg.expires, deliveries=delivery.deliveries)


async def _hook(fn: Callable[..., Any] | None, *args: Any) -> None:
    """Call one of Celery's task hooks (on_success, on_failure, ...); log what it raises."""
    if fn is None:
        return
    try:
        reply = fn(*args)
        if inspect.isawaitable(reply):
            await reply
    except Exception:
        log.exception("task hook %r raised (the task's outcome stands)", fn)
