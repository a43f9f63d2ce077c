"""Running one delivery to its :class:`~aioqueue.broker.Outcome`.

The worker's fetch loop hands each delivery here; what comes back says how to settle it.
Nothing in this module raises for a bad message: every path ends in an outcome, so a
worker keeps serving after any single bad message and nothing vanishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from ._concurrency import run_in_thread
from ._keys import Keys
from .broker import Broker, Delivery, Enqueue, Outcome
from .errors import (
    DeadLettered,
    NotRegistered,
    Retry,
    SerializationError,
    TaskRevoked,
    TimeLimitExceeded,
)
from .message import ResultRecord, State, TaskMessage
from .task import Request, Task, _current_request

if TYPE_CHECKING:
    from .app import AioQueue

__all__ = ("Running", "TaskRunner")

log = logging.getLogger("aioqueue.worker")

_UNSETTLEABLE = "unsettleable: "


@dataclass(slots=True)
class Running:
    """A task running on this worker: what to cancel, and why it was cancelled."""

    delivery: Delivery
    task_id: str | None = None
    started: float = 0.0
    task: asyncio.Task[None] | None = None
    #: Set before cancelling from outside: "revoked" or "shutdown".
    cancel_reason: str | None = None

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
        try:
            msg = self.serializer.decode_message(delivery.payload)
        except SerializationError as exc:
            log.error("dead-lettering undecodable message %s on queue %s: %s",
                      delivery.message_id, delivery.queue, exc)
            return Outcome(delivery=delivery, dead_reason=f"undecodable: {exc}")
        running.task_id = msg.id

        if delivery.deliveries > self.max_deliveries:
            error = DeadLettered(
                f"{msg.task}[{msg.id}] was delivered {delivery.deliveries} times "
                f"(max_deliveries={self.max_deliveries}): its worker died each time",
                task_name=msg.task, task_id=msg.id,
            )
            log.error("%s; moved to dead letters", error)
            return self._outcome(delivery, msg, State.FAILURE, exc=error,
                                 dead_reason=f"max_deliveries: {error}")

        task = self.app.tasks.get(msg.task)
        if task is None:
            unknown = NotRegistered(
                f"task {msg.task!r} is not registered with app {self.app.main!r}",
                task_name=msg.task, task_id=msg.id,
            )
            log.error("%s (message %s); moved to dead letters", unknown, msg.id)
            return self._outcome(delivery, msg, State.FAILURE, exc=unknown,
                                 dead_reason=f"not registered: {msg.task}")

        now = time.time()
        if msg.expires is not None and msg.expires < now:
            log.info("Task %s[%s] expired before it started", msg.task, msg.id)
            return self._outcome(delivery, msg, State.REVOKED, exc=TaskRevoked(
                f"expired at {msg.expires:.3f} before it started"))
        if msg.id in self.revoked:
            log.info("Task %s[%s] revoked: not run", msg.task, msg.id)
            return self._outcome(delivery, msg, State.REVOKED, exc=TaskRevoked("revoked"))
        if msg.eta is not None and msg.eta > now + 0.001:
            # Arrived early (a dead letter requeued by hand, a clock step): wait in the set.
            return Outcome(delivery=delivery, requeue=Enqueue(delivery.queue, delivery.payload,
                                                              msg.eta))
        return await self._execute(running, delivery, msg, task)

    async def _execute(
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
            if self.log_info:
                log.info("Task %s[%s] succeeded in %.4fs: %.200r", msg.task, msg.id,
                         time.perf_counter() - start, value)
            return outcome
        except Retry as retry:
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
                return self._failed(delivery, msg, task, exc)
        finally:
            _current_request.reset(token)
        # Cancelled: by the time limit, a revoke, or shutdown.
        reason = running.cancel_reason
        if reason == "shutdown":
            log.warning("Task %s[%s] interrupted by shutdown: handed back to the queue",
                        msg.task, msg.id)
            return Outcome(delivery=delivery, requeue=Enqueue(delivery.queue, delivery.payload))
        if reason == "revoked":
            log.warning("Task %s[%s] terminated: revoked", msg.task, msg.id)
            return self._outcome(delivery, msg, State.REVOKED,
                                 exc=TaskRevoked("revoked and terminated while running"))
        error = TimeLimitExceeded(
            f"{msg.task}[{msg.id}] exceeded its time limit of {limit:g}s"
            + ("" if task.is_async else " (its thread keeps running; the slot was freed)"),
            task_name=msg.task, task_id=msg.id,
        )
        log.error("%s", error)
        return self._outcome(delivery, msg, State.FAILURE, exc=error)

    async def _call(self, task: Task[Any, Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        if task.is_async:
            return await task.fn(*args, **kwargs)
        return await run_in_thread(task.fn, args, kwargs, self.thread_limiter)

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
        )
        log.warning("Task %s[%s] retry %d in %.3gs: %s", msg.task, msg.id, msg.retries + 1,
                    delay, exc)
        tb = "".join(traceback.format_exception(exc)) if exc.__traceback__ else None
        requeue = Enqueue(delivery.queue, self.serializer.encode(again), due)
        return self._outcome(delivery, msg, State.RETRY, exc=exc, tb=tb,
                             retries=msg.retries + 1, requeue=requeue)
