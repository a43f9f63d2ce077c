"""``Task[P, R]``: a registered function, how to call it remotely, and its per-run request.

A ``Task`` is shared by every concurrent run of it on a worker, so per-run facts (id, retries,
arguments) live in a context variable and are read through :attr:`Task.request`.
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar, get_type_hints

import anyio.from_thread
import msgspec

from ._keys import Keys
from ._sync import MustAwait, PendingSend, SyncResult, in_async_context
from ._time import to_epoch
from .errors import MaxRetriesExceeded, Retry, TaskError
from .message import ResultRecord, State

if TYPE_CHECKING:
    from .app import AioQueue
    from .result import AsyncResult

__all__ = ("Request", "Task", "TaskOptions")

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Request:
    """What a running task knows about its own call (Celery's ``self.request``)."""

    id: str
    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    retries: int = 0
    queue: str = "default"
    eta: float | None = None
    expires: float | None = None
    #: How many times the message has been delivered (more than 1 after a worker crash).
    deliveries: int = 1
    #: The worker running it.
    hostname: str | None = None
    #: Per-call max_retries, when the caller set one.
    max_retries: int | None = None
    #: Per-call time limit, when the caller set one.
    time_limit: float | None = None
    #: The producer's reply list as the message names it (``update_state`` checks it).
    reply_to: str | None = None
    #: Its priority, 0 (first) to 9.
    priority: int = 0


_current_request: ContextVar[Request] = ContextVar("aioqueue_request")


def current_request() -> Request | None:
    """The request of the task running in this context, if any."""
    return _current_request.get(None)


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Per-task options, with Celery's names and defaults."""

    name: str
    bind: bool = False
    queue: str | None = None
    ignore_result: bool = False
    track_started: bool = False
    max_retries: int | None = 3
    default_retry_delay: float = 180.0
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    time_limit: float | None = None
    expires: float | None = None
    #: Celery's Task hooks, as options: on_success(retval, task_id, args, kwargs),
    #: on_failure(exc, task_id, args, kwargs, einfo), on_retry(exc, task_id, args, kwargs,
    #: einfo), after_return(status, retval, task_id, args, kwargs, einfo). ``einfo`` is the
    #: formatted traceback. Sync or async; what they raise is logged, never the outcome.
    on_success: Callable[..., Any] | None = None
    on_failure: Callable[..., Any] | None = None
    on_retry: Callable[..., Any] | None = None
    after_return: Callable[..., Any] | None = None
    #: Flow control (see the README's "Flow control"). 0 (first) to 9; None: the app's
    #: ``task_default_priority``, else 0.
    priority: int | None = None
    #: Cluster-wide rate: ``"10/s"``, ``"100/m"``, ``"1000/h"`` (Celery's spelling).
    rate_limit: str | None = None
    #: Most runs at once across every worker; per ``concurrency_key(*args, **kwargs)``
    #: when given (fair between keys).
    max_concurrency: int | None = None
    concurrency_key: Callable[..., Any] | None = None
    #: At most one pending or running per key for this long (a second call gets the first
    #: call's handle); key: ``unique_key(*args, **kwargs)``, or the arguments themselves.
    unique_for: float | None = None
    unique_key: Callable[..., Any] | None = None
    #: Trailing edge: calls within this window collapse into one run of the last call.
    debounce: float | None = None
    #: Leading edge: a call runs, further calls within this window share its handle.
    cooldown: float | None = None
    #: Tasks with the same key run one at a time, in the order sent.
    order_key: Callable[..., Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_flow(self) -> bool:
        """True when sending it goes through a producer-side gate (see aioqueue.flow)."""
        return bool(self.unique_for or self.debounce or self.cooldown
                    or self.order_key is not None)


class _ArgConverter:
    """Converts decoded arguments to the task's annotated types (``datetime``, structs...).

    Only parameters whose annotation the wire cannot carry as-is get a converter, so the
    common case (ints, strings, plain containers) costs one ``if`` per call.
    """

    _PASSTHROUGH = frozenset({int, str, float, bool, bytes, type(None), Any, list, dict, tuple})

    def __init__(self, fn: Callable[..., Any], skip_first: bool) -> None:
        self._positional: list[tuple[int, Any]] = []
        self._by_name: dict[str, Any] = {}
        try:
            hints = get_type_hints(fn)
            params = list(inspect.signature(fn).parameters.values())
        except (NameError, TypeError, ValueError):
            return  # unresolvable annotations: pass arguments through untouched
        if skip_first:
            params = params[1:]
        for index, param in enumerate(params):
            hint = hints.get(param.name, Any)
            if hint in self._PASSTHROUGH or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                self._positional.append((index, hint))
            self._by_name[param.name] = hint

    def __call__(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if not self._by_name:
            return args, kwargs
        new_args = list(args)
        for index, hint in self._positional:
            if index < len(new_args):
                new_args[index] = msgspec.convert(new_args[index], hint, strict=False)
        new_kwargs = {
            k: msgspec.convert(v, self._by_name[k], strict=False) if k in self._by_name else v
            for k, v in kwargs.items()
        }
        return tuple(new_args), new_kwargs


def _django() -> Any:
    """``aioqueue.contrib.django``, imported on use: only Django projects have Django."""
    import importlib

    return importlib.import_module("aioqueue.contrib.django")


class Task(Generic[P, R]):
    """A function registered with an :class:`~aioqueue.AioQueue`, callable remotely.

    ``await task.delay(*args, **kwargs)`` enqueues a call and returns an
    :class:`~aioqueue.AsyncResult` at once; calling ``task(*args, **kwargs)`` runs the function
    here and now, as in Celery.
    """

    def __init__(self, app: AioQueue, fn: Callable[..., Any], options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.options = options
        self.name = options.name
        self.is_async = inspect.iscoroutinefunction(fn)
        self.convert_args = _ArgConverter(fn, skip_first=options.bind)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", options.name)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn
        self.has_hooks = any((options.on_success, options.on_failure, options.on_retry,
                              options.after_return))
        # For the messages of a call made the wrong way (see _sync.PendingSend).
        self._what_delay = f"{self.__name__}.delay(...)"
        self._what_apply = f"{self.__name__}.apply_async(...)"

    def key_of(self, key_fn: Callable[..., Any], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Any:
        """Call a flow-control key function (``concurrency_key``, ``unique_key``,
        ``order_key``) with the call's arguments, all by name -- so
        ``lambda customer_id, **_: customer_id`` works however the call passed them."""
        names = self._positional_names
        if names is not None and len(args) <= len(names):
            # The common case, per run: positional arguments named by zip (bind_partial
            # measured a tenth of a keyed no-op task's worker time).
            named = dict(zip(names, args, strict=False))
            named.update(kwargs)
            return key_fn(**named)
        try:
            bound = self._signature.bind_partial(
                *((None, *args) if self.options.bind else args), **kwargs).arguments
        except TypeError:
            return key_fn(*args, **kwargs)
        if self.options.bind:
            bound.pop(next(iter(self._signature.parameters)), None)  # self
        flat: dict[str, Any] = {}
        for name, value in bound.items():
            kind = self._signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                flat.update(value)
            elif kind is not inspect.Parameter.VAR_POSITIONAL:
                flat[name] = value
        return key_fn(**flat)

    @property
    def _signature(self) -> inspect.Signature:
        sig: inspect.Signature | None = self.__dict__.get("_sig")
        if sig is None:
            sig = self.__dict__["_sig"] = inspect.signature(self.fn)
        return sig

    @property
    def _positional_names(self) -> list[str] | None:
        """Names of the parameters a call's positional arguments fill (after ``self`` for
        a bound task); None when a ``*args`` parameter makes it a matter for bind."""
        if "_positional" not in self.__dict__:
            params = list(self._signature.parameters.values())
            if self.options.bind:
                params = params[1:]
            kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            self.__dict__["_positional"] = (
                None if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
                else [p.name for p in params if p.kind in kinds])
        names: list[str] | None = self.__dict__["_positional"]
        return names

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function in this process (returns a coroutine for ``async def`` tasks)."""
        if self.options.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    @property
    def resources(self) -> dict[str, Any]:
        """What the app's lifespans opened in this worker process (``app.lifespan``)."""
        return self.app.resources

    @property
    def request(self) -> Request:
        """The request of the current run; raises ``TaskError`` outside a worker run."""
        request = _current_request.get(None)
        if request is None or request.task != self.name:
            raise TaskError(f"{self.name}.request is only available while it runs on a worker",
                            task_name=self.name)
        return request

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> SyncResult[R]:
        """Enqueue a call with these arguments.

        In async code ``handle = await add.delay(1, 2)`` gives the
        :class:`~aioqueue.AsyncResult` (``await handle`` is the result). In sync code (no
        event loop running in this thread: a Django or Flask view) ``add.delay(1, 2)``
        sends at once and returns a blocking :class:`~aioqueue.SyncResult`
        (``.get(timeout=10)``), as Celery's.
        """
        if in_async_context():
            return PendingSend(self.app._send(self, args, kwargs), self._what_delay)
        return self.app._send_sync(self, args, kwargs, self._what_delay)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        queue: str | None = None,
        task_id: str | None = None,
        time_limit: float | None = None,
        ignore_result: bool | None = None,
        max_retries: int | None = None,
        reply: bool = True,
        priority: int | None = None,
        unique_key: Any = None,
        unique_for: float | None = None,
        debounce: float | None = None,
        cooldown: float | None = None,
        order_key: Any = None,
    ) -> SyncResult[R]:
        """Enqueue a call with options (Celery's names); ``await`` it for the handle.

        In sync code it sends at once and returns a blocking :class:`~aioqueue.SyncResult`,
        as :meth:`delay`.

        ``countdown`` (seconds) or ``eta`` (aware datetime; naive is read as UTC) delay the run;
        ``expires`` (seconds from now, or a datetime) drops it, as REVOKED, if it has not
        started by then. ``reply=False`` stores the result without pushing it to this
        process (a sender that will not await it); the handle then polls if awaited.

        Flow control (README, "Flow control"): ``priority`` 0 (first) to 9;
        ``unique_for=seconds`` (with ``unique_key``: at most one pending or running, a
        second call gets the first's handle); ``debounce`` / ``cooldown`` seconds (keyed by
        ``unique_key``, else the task); ``order_key``: one at a time per key, in order sent.
        """
        options: dict[str, Any] = {
            "countdown": countdown, "eta": eta, "expires": expires, "queue": queue,
            "task_id": task_id, "time_limit": time_limit, "ignore_result": ignore_result,
            "max_retries": max_retries, "reply": reply}
        for name, value in (("priority", priority), ("unique_key", unique_key),
                            ("unique_for", unique_for), ("debounce", debounce),
                            ("cooldown", cooldown), ("order_key", order_key)):
            if value is not None:
                options[name] = value
        call_args, call_kwargs = tuple(args or ()), dict(kwargs or {})
        if in_async_context():
            return PendingSend(self.app._send(self, call_args, call_kwargs, **options),
                               self._what_apply)
        return self.app._send_sync(self, call_args, call_kwargs, self._what_apply, **options)

    def update_state(
        self, task_id: str | None = None, state: str = "PROGRESS", meta: Any = None,
    ) -> MustAwait[None]:
        """Report progress from a running task, as Celery's (``bind=True``):
        ``self.update_state(state="PROGRESS", meta={"done": 3, "total": 10})``.

        Readable anywhere with ``await handle.state()`` / ``(await handle.info()).result``,
        and streamed to an awaiting producer by ``async for meta in handle.progress()``.
        In an ``async def`` task ``await`` it; in a ``def`` task (a thread) it blocks.
        """
        if str(state) != State.PROGRESS:
            raise ValueError(
                f"update_state(state={state!r}): the only custom state is 'PROGRESS' (the "
                f"others are set by the worker); put the detail in meta, e.g. "
                f"update_state(state='PROGRESS', meta={{'stage': {str(state)!r}}})")
        request = self.request
        target = task_id or request.id
        reply_to = request.reply_to if target == request.id else None
        if reply_to is not None and not Keys(self.app.conf.key_prefix).is_reply(reply_to):
            reply_to = None  # never push where a message says, beyond the app's replies
        record = ResultRecord(id=target, state=State.PROGRESS, result=meta, task=self.name,
                              retries=request.retries, worker=request.hostname)
        app = self.app

        async def publish() -> None:
            await app.broker.publish_progress(target, app.serializer.encode(record),
                                              app.conf.result_expires_s, reply_to)

        if in_async_context():
            return MustAwait(publish(), "self.update_state(...)")
        anyio.from_thread.run(publish)  # a def task's thread: the worker's loop does it
        return MustAwait.done()

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Django: send when the current database transaction commits (never on rollback).

        As Celery 5.4's; outside a transaction it sends at once. Returns nothing: there is
        no task id to report before the commit.
        """
        _django().send_on_commit(self, args, kwargs, {})

    def apply_async_on_commit(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """Django: :meth:`apply_async` when the current transaction commits."""
        _django().send_on_commit(self, tuple(args or ()), dict(kwargs or {}), options)

    async def delay_many(self, calls: Iterable[Iterable[Any]]) -> list[AsyncResult[R]]:
        """Enqueue one call per argument tuple in a single round trip; returns the handles.

        ``await add.delay_many([(1, 2), (3, 4)])`` is the batch form of ``delay``.
        """
        return await self.app._send_many(self, [tuple(call) for call in calls])

    def retry(
        self,
        exc: BaseException | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        max_retries: int | None = None,
        throw: bool = True,
    ) -> NoReturn:
        """Retry this run: ``raise self.retry(exc=e, countdown=15)``, as in Celery.

        It raises :class:`~aioqueue.errors.Retry` itself (so ``self.retry(...)`` without
        ``raise`` retries too, instead of letting the task end as a SUCCESS with ``None``);
        ``throw=False`` returns it instead. Past ``max_retries`` it raises ``exc`` itself (or
        :class:`~aioqueue.errors.MaxRetriesExceeded` without one), so the task fails with
        the original error.
        """
        request = self.request
        limit = max_retries
        if limit is None:
            limit = request.max_retries if request.max_retries is not None else (
                self.options.max_retries
            )
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceeded(
                f"{self.name}[{request.id}] exceeded max_retries={limit}",
                task_name=self.name,
                task_id=request.id,
            )
        if eta is not None:
            delay = max(0.0, to_epoch(eta) - time.time())
        elif countdown is not None:
            delay = countdown
        else:
            delay = self.options.default_retry_delay
        retry = Retry(f"retry in {delay:g}s", exc=exc, when=delay)
        if throw:
            raise retry
        return retry  # type: ignore[misc]

    def backoff_delay(self, retries: int) -> float:
        """The automatic retry delay for the given retry count (``retry_backoff``)."""
        opts = self.options
        if not opts.retry_backoff:
            return opts.default_retry_delay
        factor = 1.0 if opts.retry_backoff is True else float(opts.retry_backoff)
        delay = min(opts.retry_backoff_max, factor * 2.0**retries)
        if opts.retry_jitter:
            # Full jitter, as Celery: spreads a thundering herd of retries over the window.
            delay = random.uniform(0, delay)
        return delay

    def with_options(self, **changes: Any) -> TaskOptions:
        """These options with some changed (used by the registry)."""
        return replace(self.options, **changes)
