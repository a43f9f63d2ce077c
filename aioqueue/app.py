"""``AioQueue``: configuration, the task registry, routing and the producer API."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, cast, overload

import msgspec

from ._keys import Keys
from ._sync import PendingSend, SyncResult, in_async_context, portal
from ._time import to_epoch, when_to_epoch
from .broker import Broker, Enqueue, create_broker, redact_url
from .broker._lanes import check_priority
from .broker.split import SplitBroker
from .config import Settings
from .errors import ConfigurationError, SerializationError
from .flow import Gate, flow_gate
from .message import ResultRecord, Serializer, State, TaskMessage, get_serializer
from .result import POLL_FIRST_S, AsyncResult, ResultWaiter
from .routing import Route
from .task import Task, TaskOptions

if TYPE_CHECKING:
    from ._runner import Running
    from .broker import Outcome
    from .schedules import Schedule
    from .worker import Worker

__all__ = ("AioQueue",)

log = logging.getLogger("aioqueue")

_BATCH_CHUNK = 1000
#: ``AsyncResult`` is also a method name inside ``AioQueue``: this names the class there.
_Handle = AsyncResult[Any]

P = ParamSpec("P")
R = TypeVar("R")


#: The app made last in this process (Celery's ``current_app``), held weakly.
_current_app: weakref.ref[AioQueue] | None = None


def current_app() -> AioQueue:
    """The app made last in this process: what ``@shared_task`` and a bare
    ``AsyncResult(task_id)`` use, as Celery's ``current_app``."""
    app = None if _current_app is None else _current_app()
    if app is None:
        raise ConfigurationError(
            "no aioqueue app exists yet: create one (app = AioQueue(...)) before using "
            "@shared_task tasks or AsyncResult(task_id), or use app.AsyncResult(task_id)")
    return app


#: ``@shared_task`` definitions, registered with every app (made before or after them).
_shared_tasks: list[tuple[Callable[..., Any], dict[str, Any]]] = []
_all_apps: weakref.WeakSet[AioQueue] = weakref.WeakSet()


class SharedTask:
    """A ``@shared_task``: the task of that name on the current app, looked up at each use.

    For reusable apps (a Django app's ``tasks.py``) that must not import the project's
    AioQueue: the function is registered with every app, and ``add.delay(...)`` goes
    through whichever app was made last (Celery's ``current_app``).
    """

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn = fn
        self.name = name
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn

    def _task(self) -> Task[Any, Any]:
        return current_app().tasks[self.name]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._task(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._task()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<shared task {self.name}>"


def shared_task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Celery's ``@shared_task``: a task for every app, used through the current one."""

    def register(f: Callable[..., Any]) -> SharedTask:
        name = options.get("name") or f"{f.__module__}.{f.__qualname__}"
        _shared_tasks.append((f, {**options, "name": name}))
        for app in list(_all_apps):
            app._register(f, {**options, "name": name})
        return SharedTask(f, name)

    return register(fn) if fn is not None else register


def new_task_id() -> str:
    """A random UUID4 string, as Celery's task ids; three times cheaper than ``uuid.uuid4``."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _forget_parent_state_after_fork(app: AioQueue) -> None:
    """Give ``app`` its own reply list in every process forked from this one.

    The hook holds the app weakly, so it does not keep a discarded app alive (a hook
    cannot be unregistered).
    """
    ref = weakref.ref(app)

    def after_in_child() -> None:
        forked = ref()
        if forked is not None:
            forked._after_fork_in_child()

    if hasattr(os, "register_at_fork"):  # not on Windows
        os.register_at_fork(after_in_child=after_in_child)


@dataclass(slots=True)
class _PortalConnections:
    broker: Broker
    waiter: ResultWaiter
    reply_to: str


class _TaskDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Task[P, R]: ...


class _BoundTaskDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[..., Coroutine[Any, Any, R]]) -> Task[..., R]: ...
    @overload
    def __call__(self, fn: Callable[..., R]) -> Task[..., R]: ...


class AioQueue:
    """An application: its settings, its tasks, and the door to its broker.

    ``AioQueue("tasks", broker="redis://localhost:6379/0", result_expires=60)``; the backend
    defaults to the broker. Register tasks with ``@app.task``; run workers with
    ``aioqueue worker module:app`` or ``async with app.worker(): ...``.
    """

    def __init__(
        self,
        main: str = "aioqueue",
        broker: str | None = None,
        backend: str | None = None,
        include: Sequence[str] = (),
        **settings: Any,
    ) -> None:
        global _current_app
        self.main = main
        self.conf = Settings()
        if broker is not None:
            settings["broker_url"] = broker
        if backend is not None:
            settings["result_backend"] = backend
        self.conf.update(**settings)
        self._apply_env_overrides()
        self.config_notices: list[str] = self.conf.notices
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._broker: Broker | None = None
        self._broker_loop: asyncio.AbstractEventLoop | None = None
        self._waiter: ResultWaiter | None = None
        self._reply_to = self._new_reply_to()
        #: The sync portal's own connections (see ``aioqueue._sync``), made on its first use.
        self._portal: _PortalConnections | None = None
        _forget_parent_state_after_fork(self)
        #: Schedules declared with ``@app.periodic``: name -> beat_schedule entry.
        self.periodic_tasks: dict[str, dict[str, Any]] = {}
        #: Modules imported when a worker starts (Celery's ``include``), after ``imports``.
        self.include: list[str] = list(include)
        #: Factories of context managers entered around every task run (``task_context``).
        self.task_contexts: list[Callable[[Task[Any, Any], Any], Any]] = []
        #: Async context managers run once per worker process (``lifespan``).
        self.lifespans: list[Callable[[], Any]] = []
        #: What the lifespans yielded, in a running worker process (``Task.resources``).
        self.resources: dict[str, Any] = {}
        #: Instrumentation hooks (``aioqueue.contrib.otel`` sets them; None costs nothing):
        #: headers for each message built, ``(task name, task id, queue) -> headers``, and a
        #: wrapper awaiting each task run, ``(running, execution) -> outcome``.
        self.message_headers: Callable[[str, str, str], dict[str, str] | None] | None = None
        self.around_run: Callable[[Running, Coroutine[Any, Any, Outcome]],
                                  Coroutine[Any, Any, Outcome]] | None = None
        _current_app = weakref.ref(self)
        _all_apps.add(self)
        for fn, options in _shared_tasks:
            self._register(fn, dict(options))

    def __repr__(self) -> str:
        return f"<AioQueue {self.main} broker={self.display_broker_url}>"

    # -- configuration ---------------------------------------------------------------------
    def config_from_object(
        self,
        obj: Any,
        *,
        namespace: str | None = None,
        silent: bool = False,
        force: bool = True,
    ) -> bool:
        """Read Celery-style settings: ``app.config_from_object("proj.celeryconfig")``.

        ``obj`` is a dotted module path, ``"module:attr"`` (``"django.conf:settings"``), a
        module, a class, any object or a mapping. Celery's lowercase names and its old
        uppercase ones (``BROKER_URL``, ``CELERYD_CONCURRENCY``) are read; with
        ``namespace="CELERY"`` the ``CELERY_``-prefixed ones, as Celery does. A setting with no
        meaning here adds a line to :attr:`config_notices` (a worker logs them at start-up);
        an unknown name raises ``ConfigurationError`` with a did-you-mean. ``AIOQUEUE_*``
        environment variables still win. ``silent=True``: an object that cannot be imported
        returns False. ``force`` is accepted for Celery's signature: reading is always now.
        """
        from ._celery_config import ConfigImportError, settings_from_object

        try:
            settings, notices = settings_from_object(obj, namespace=namespace)
        except ConfigImportError:
            if silent:
                return False
            raise
        prefix, known = self.conf.key_prefix, len(self.conf.notices)
        self.conf.update(**settings)
        # update() explains these settings by their aioqueue names; ``notices`` does too,
        # under the names the configuration used (CELERYD_PREFETCH_MULTIPLIER...): keep those.
        del self.conf.notices[known:]
        self.conf._note(notices)
        self._apply_env_overrides()
        if self.conf.key_prefix != prefix:  # workers reply only to keys under the prefix
            self._reply_to = self._new_reply_to()
        return True

    def config_from_envvar(
        self, variable_name: str, *, silent: bool = False, force: bool = True
    ) -> bool:
        """``config_from_object`` of the module named by an environment variable (Celery's)."""
        module_name = os.environ.get(variable_name)
        if not module_name:
            if silent:
                return False
            raise ConfigurationError(
                f"environment variable {variable_name} is not set: it should name a "
                f"configuration module, e.g. {variable_name}=proj.celeryconfig"
            )
        return self.config_from_object(module_name, silent=silent, force=force)

    def _apply_env_overrides(self) -> None:
        """``AIOQUEUE_<SETTING>`` environment variables win over code and configuration."""
        from ._celery_config import settings_from_env

        overrides = settings_from_env(os.environ)
        if overrides:
            self.conf.update(**overrides)

    @property
    def display_broker_url(self) -> str:
        """The broker URL without its password."""
        return redact_url(self.conf.broker_url)

    @property
    def serializer(self) -> Serializer:
        """The configured serializer."""
        return get_serializer(self.conf.task_serializer, self.conf.task_compression)

    @property
    def broker(self) -> Broker:
        """The broker for the running event loop (made on first use, again on a new loop)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._broker is not None and (loop is None or loop is self._broker_loop):
            return self._broker
        if loop is not None and loop is portal.loop:
            return self._portal_connections().broker
        if self._broker is None or (loop is not None and loop is not self._broker_loop):
            old_loop = self._broker_loop
            if self._broker is not None and old_loop is not None and old_loop.is_closed():
                # The loop it served is gone (Django closes one per async view under WSGI;
                # asyncio.run() in a loop): close its sockets now, not at GC.
                self._broker.abandon()
            self._broker = self._new_broker()
            self._broker_loop = loop
            self._waiter = None
        return self._broker

    def _new_broker(self) -> Broker:
        if not self._reply_to.startswith(f"{self.conf.key_prefix}:reply:"):
            # key_prefix changed after __init__ (conf.update, or a redis+cluster:// URL that
            # gave the default prefix its hash tag): workers push only to keys under the
            # prefix, and on Redis Cluster only those are in the app's slot.
            self._reply_to = self._new_reply_to()

        def make(url: str) -> Broker:
            return create_broker(url, prefix=self.conf.key_prefix,
                                 connect_timeout_s=self.conf.broker_connection_timeout)

        broker = make(self.conf.broker_url)
        backend = self.conf.result_backend
        if backend is not None and backend != self.conf.broker_url:
            # Two roles (see broker/split.py): results stored first, then the ack.
            if "memory://" in (backend[:9].lower(), self.conf.broker_url[:9].lower()):
                raise ConfigurationError(
                    f"result_backend {redact_url(backend)!r} apart from broker "
                    f"{redact_url(self.conf.broker_url)!r}: memory:// keeps both in one "
                    "process; use it for both, or Redis for both")
            broker = cast(Broker, SplitBroker(broker, make(backend)))
        broker.events_max_len = self.conf.events_max_len
        broker.lanes.share_every = self.conf.priority_share_every
        broker.events_stats_ttl_s = self.conf.events_stats_ttl
        return broker

    @property
    def display_backend_url(self) -> str:
        """Where results live (the broker's URL unless ``result_backend`` is apart),
        passwords masked."""
        backend = self.conf.result_backend
        return redact_url(backend) if backend else self.display_broker_url

    @property
    def keys(self) -> Keys:
        """This app's Redis key names."""
        return Keys(self.conf.key_prefix)

    def _portal_connections(self) -> _PortalConnections:
        """The sync portal's broker, waiter and reply list (only ever used on its loop).

        Its own reply list: sharing the app's with a loop in another thread would make the
        two waiters pop each other's replies.
        """
        connections = self._portal
        if connections is None:
            if self.conf.broker_url.split("://", 1)[0].lower() == "memory":
                # A memory:// broker lives in one event loop's objects: the portal's own
                # would be another, empty store, and the task would silently never run.
                raise ConfigurationError(
                    "memory:// cannot be used from sync code (no event loop in this thread): "
                    "the in-memory broker lives in one event loop. Call from async code "
                    "(`await task.delay(...)`), or use a redis:// broker")
            broker = self._new_broker()
            reply_to = self._new_reply_to()
            connections = self._portal = _PortalConnections(
                broker, ResultWaiter(broker, self.serializer, reply_to), reply_to)
        return connections

    def _portal_here(self) -> _PortalConnections | None:
        """The portal's connections when running on the portal's loop, else None."""
        portal_loop = portal.running_loop
        if portal_loop is None:
            return None  # the common case: no sync caller in this process
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        # Made here if needed: the first sync send must already give its reply list.
        return self._portal_connections() if loop is portal_loop else None

    @property
    def waiter(self) -> ResultWaiter:
        """This process's result waiter for the running loop (see ``aioqueue.result``)."""
        broker = self.broker
        if self._portal is not None and broker is self._portal.broker:
            return self._portal.waiter
        if self._waiter is None:
            self._waiter = ResultWaiter(broker, self.serializer, self._reply_to)
        return self._waiter

    def _new_reply_to(self) -> str:
        # 32 hex digits: the worker pushes replies only to keys of this shape (_keys.py).
        return f"{self.conf.key_prefix}:reply:{uuid.uuid4().hex}"

    def _after_fork_in_child(self) -> None:
        """In a forked child: a reply list of its own, and no objects of the parent's.

        Sharing the parent's list would make the two pop each other's replies. The
        parent's waiter and broker hold its event loop and sockets: forget them without
        closing anything (closing from here would cut the parent's connections).
        """
        self._reply_to = self._new_reply_to()
        self._waiter = None
        self._broker = None
        self._broker_loop = None
        self._portal = None  # the parent's portal thread did not survive the fork

    async def close(self) -> None:
        """Close connections (also done by ``async with app:``).

        Waits still pending on this app raise ``BrokerError``; handles stay usable and
        reconnect when awaited again.
        """
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            await waiter.close()
        if self._broker is not None:
            await self._broker.close()
            self._broker = None
        connections, self._portal = self._portal, None
        if connections is not None and portal.loop is not None:
            # The portal's connections live on its loop: close them there.
            async def close_portal() -> None:
                await connections.waiter.close()
                await connections.broker.close()

            if asyncio.get_running_loop() is portal.loop:
                await close_portal()
            else:
                await asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(close_portal(), portal.loop))

    async def __aenter__(self) -> AioQueue:
        await self.broker.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- discovery -------------------------------------------------------------------------
    def import_tasks(self) -> None:
        """Import the modules of ``include`` (and the ``imports`` setting, when set), so
        their tasks are registered; a worker does this at start-up."""
        import importlib

        modules = [*getattr(self.conf, "imports", ()), *self.include]
        for module in dict.fromkeys(modules):
            importlib.import_module(module)

    def autodiscover_tasks(
        self, packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        related_name: str = "tasks", force: bool = True,
    ) -> list[str]:
        """Import ``<package>.tasks`` for every package that has one; returns those found.

        ``packages`` defaults to Django's installed apps (as Celery's). ``force`` is
        accepted for Celery's signature: discovery always runs now.
        """
        import importlib
        import importlib.util

        names: Iterable[str]
        if packages is None:
            # Django's installed apps, as Celery's; imported on use (only Django projects
            # have Django).
            names = importlib.import_module("aioqueue.contrib.django").installed_app_modules()
        elif callable(packages):
            names = packages()
        else:
            names = packages
        found = []
        for package in names:
            name = f"{package}.{related_name}" if related_name else package
            try:
                spec = importlib.util.find_spec(name)
            except (ModuleNotFoundError, ValueError):  # no such package / a module made
                spec = None                            # at run time, without a spec
            if spec is None:
                continue
            importlib.import_module(name)
            found.append(name)
        return found

    # -- hooks -------------------------------------------------------------------------------
    def task_context(
        self, factory: Callable[[Task[Any, Any], Any], Any]
    ) -> Callable[[Task[Any, Any], Any], Any]:
        """Enter ``factory(task, request)`` (a context manager) around every task run.

        For ``def`` tasks it is entered in the worker thread that runs the task; for
        ``async def`` tasks around the coroutine. The hook for a Flask app context
        (``lambda task, request: flask_app.app_context()``) or Django's connection
        handling. Usable as a decorator.
        """
        self.task_contexts.append(factory)
        return factory

    def lifespan(self, factory: Callable[[], Any]) -> Callable[[], Any]:
        """Run ``factory()`` (an async context manager) once per worker process.

        What it yields is a resource tasks receive through ``Task.resources`` (e.g. a
        database pool or an HTTP client), opened when the worker starts and closed when it
        stops. Usable as a decorator on an ``@asynccontextmanager`` function.
        """
        self.lifespans.append(factory)
        return factory

    # -- registry --------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, *, bind: Literal[True], **options: Any) -> _BoundTaskDecorator: ...
    @overload
    def task(
        self,
        *,
        name: str | None = ...,
        bind: Literal[False] = ...,
        queue: str | None = ...,
        ignore_result: bool | None = ...,
        track_started: bool | None = ...,
        max_retries: int | None = ...,
        default_retry_delay: float = ...,
        autoretry_for: Sequence[type[BaseException]] = ...,
        retry_backoff: bool | float = ...,
        retry_backoff_max: float = ...,
        retry_jitter: bool = ...,
        time_limit: float | None = ...,
        expires: float | None = ...,
        on_success: Callable[..., Any] | None = ...,
        on_failure: Callable[..., Any] | None = ...,
        on_retry: Callable[..., Any] | None = ...,
        after_return: Callable[..., Any] | None = ...,
        priority: int | None = ...,
        rate_limit: str | None = ...,
        max_concurrency: int | None = ...,
        concurrency_key: Callable[..., Any] | None = ...,
        unique_for: float | None = ...,
        unique_key: Callable[..., Any] | None = ...,
        debounce: float | None = ...,
        cooldown: float | None = ...,
        order_key: Callable[..., Any] | None = ...,
    ) -> _TaskDecorator: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:  # type: ignore[misc]
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., ...)``.

        Options (Celery's names): ``name`` (default ``module.function``), ``bind`` (pass the
        task as ``self``), ``queue``, ``ignore_result``, ``track_started``, ``max_retries``,
        ``default_retry_delay``, ``autoretry_for``, ``retry_backoff``, ``retry_backoff_max``,
        ``retry_jitter``, ``time_limit`` (seconds), ``expires`` (seconds), the hooks
        ``on_success``/``on_failure``/``on_retry``/``after_return``, and flow control
        (README, "Flow control"): ``priority``, ``rate_limit``, ``max_concurrency`` with
        ``concurrency_key``, ``unique_for`` with ``unique_key``, ``debounce``, ``cooldown``,
        ``order_key``.
        """
        if fn is not None:
            return self._register(fn, options)
        return lambda f: self._register(f, options)

    def _register(self, fn: Callable[..., Any], options: dict[str, Any]) -> Task[Any, Any]:
        if not callable(fn):
            raise ConfigurationError(f"@app.task needs a function, got {fn!r}")
        module = getattr(fn, "__module__", None) or "__main__"
        if module == "__main__":
            module = self.main
        name = options.pop("name", None) or f"{module}.{fn.__qualname__}"
        defaults = {
            "ignore_result": self.conf.task_ignore_result,
            "track_started": self.conf.task_track_started,
            "time_limit": self.conf.task_time_limit,
        }
        for key, value in defaults.items():
            if options.get(key) is None:
                options[key] = value
        # As Celery: annotations override the decorator's options; unknown keys (rate_limit
        # until flow control lands) are kept in ``extra``.
        annotations = self.conf.annotations_for(name)
        fields = set(TaskOptions.__dataclass_fields__)
        extra = {k: v for k, v in annotations.items() if k not in fields}
        options.update({k: v for k, v in annotations.items() if k in fields})
        if extra:
            options["extra"] = {**options.get("extra", {}), **extra}
        if "autoretry_for" in options:
            options["autoretry_for"] = tuple(options["autoretry_for"])
        try:
            task_options = TaskOptions(name=name, **options)
        except TypeError as exc:
            raise ConfigurationError(f"invalid option for task {name}: {exc}") from None
        task: Task[Any, Any] = Task(self, fn, task_options)
        self.tasks[name] = task
        return task

    def periodic(
        self,
        schedule: float | timedelta | Schedule,
        *,
        name: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Callable[[Task[P, R]], Task[P, R]]:
        """Run a registered task on a schedule: ``@app.periodic(crontab(minute="*/5"))``.

        Put it above ``@app.task``. Same as an entry in ``app.conf.beat_schedule``.
        """
        from .schedules import as_schedule

        checked = as_schedule(schedule)

        def register(task: Task[P, R]) -> Task[P, R]:
            if not isinstance(task, Task):
                raise ConfigurationError("@app.periodic goes above @app.task")
            self.periodic_tasks[name or task.name] = {
                "task": task.name,
                "schedule": checked,
                "args": tuple(args),
                "kwargs": dict(kwargs or {}),
                "options": options,
            }
            return task

        return register

    def queue_for(self, task_name: str, queue: str | None = None) -> str:
        """Where a call goes: the call's queue, the task's, its route, or the default."""
        return self._route(task_name, (), {}, queue, self.tasks.get(task_name))[0]

    def _route(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
               queue: str | None, task: Task[Any, Any] | None) -> tuple[str, int | None]:
        """(queue, route priority) of a call, in Celery's order: the call's queue, the
        task's, then ``task_routes`` (which may also give a priority), then the default."""
        route: Route | None = None
        routes = self.conf.task_routes
        # Only a plain empty dict routes nothing (a TaskRoutes of patterns is an empty dict).
        if routes or type(routes) is not dict:
            route = self.conf.router().route(name, args, kwargs, {"queue": queue},
                                             task=task)
        priority = route.priority if route is not None else None
        if queue:
            return queue, priority
        if task is not None and task.options.queue:
            return task.options.queue, priority
        if route is not None:
            return route.queue, priority
        return self.conf.task_default_queue, priority

    # -- producing -------------------------------------------------------------------------
    def _build(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | timedelta | None = None,
        queue: str | None = None,
        task_id: str | None = None,
        time_limit: float | None = None,
        ignore_result: bool | None = None,
        max_retries: int | None = None,
        reply: bool = True,
        now: float | None = None,
        reply_key: str | None = None,
        priority: int | None = None,
        unique_key: Any = None,
        unique_for: float | None = None,
        debounce: float | None = None,
        cooldown: float | None = None,
        order_key: Any = None,
    ) -> tuple[TaskMessage, Enqueue]:
        now = time.time() if now is None else now
        task = self.tasks.get(name)
        if ignore_result is None:
            ignore_result = task.options.ignore_result if task else self.conf.task_ignore_result
        due: float | None = None
        if eta is not None:
            due = to_epoch(eta)
        elif countdown is not None:
            due = now + float(countdown)
        if expires is None and task is not None and task.options.expires is not None:
            expires = task.options.expires
        expires_at = None if expires is None else when_to_epoch(expires, now)
        target, route_priority = self._route(name, args, kwargs, queue, task)
        task_id = task_id or new_task_id()
        headers = self.message_headers
        opts = task.options if task is not None else None
        if priority is None:
            priority = opts.priority if opts is not None else None
        if priority is None:
            priority = route_priority
        if priority is None:
            priority = self.conf.task_default_priority or 0
        if priority.__class__ is not int or not 0 <= priority <= 9:
            check_priority(priority, f"the priority of {name}")  # raises, naming the range
        gate: Gate | None = None
        if (opts is not None and opts.has_flow) or unique_for or debounce or cooldown or (
                order_key is not None):
            gate = flow_gate(name, task_id, args, kwargs, task, unique_key=unique_key,
                             unique_for=unique_for, debounce=debounce, cooldown=cooldown,
                             order_key=order_key)
            if gate is not None and gate.kind == "debounce":
                due = max(due or now, now + gate.ttl_s)
        msg = TaskMessage(
            id=task_id,
            task=name,
            args=args,
            kwargs=kwargs,
            queue=target,
            eta=due,
            expires=expires_at,
            time_limit=time_limit,
            reply_to=None if ignore_result or not reply else (reply_key or self._reply_to),
            ignore_result=ignore_result,
            max_retries=max_retries,
            headers=None if headers is None else headers(name, task_id, target),
            priority=priority,
            unique=gate.key if gate is not None and gate.kind == "unique" else None,
            order=gate.key if gate is not None and gate.kind == "order" else None,
        )
        payload = self._encode_call(msg)
        return msg, Enqueue(target, payload, due if due is not None and due > now else None,
                            priority, gate)

    def _encode_call(self, msg: TaskMessage) -> bytes:
        serializer = self.serializer
        try:
            return serializer.encode(msg)
        except SerializationError as exc:
            # Find the argument to blame, so the error says what to fix.
            culprits = [(str(i), v) for i, v in enumerate(msg.args)]
            culprits += list(msg.kwargs.items())
            for label, value in culprits:
                try:
                    serializer.encode(TaskMessage(id="", task="", args=(value,)))
                except SerializationError:
                    where = (f"argument {label}" if label.isdigit()
                             else f"keyword argument {label!r}")
                    raise SerializationError(
                        f"cannot enqueue {msg.task}: {where} of type {type(value).__name__} "
                        f"is not serializable with {serializer.name}"
                    ) from exc
            raise SerializationError(f"cannot enqueue {msg.task}: {exc}") from exc

    async def _send(
        self, task: Task[Any, R], args: tuple[Any, ...], kwargs: dict[str, Any], **options: Any
    ) -> AsyncResult[R]:
        here = self._portal_here()
        msg, item = self._build(task.name, args, kwargs,
                                reply_key=None if here is None else here.reply_to, **options)
        # The handle first: it registers its id with the waiter, which drops replies for
        # ids nobody holds, and the reply can come before enqueue() returns.
        handle: AsyncResult[R] = AsyncResult(
            msg.id, self, task.name, waiter=None if msg.reply_to is None else self.waiter)
        if item.gate is not None:
            return await self._send_gated(msg, item, task.name)
        # Inlined rather than calling _enqueue_one: one coroutine frame less on the path of
        # every delay() (a plain delay() loop is round-trip bound; every microsecond shows).
        await self.broker.enqueue((item,))
        if self.conf.task_send_sent_event:
            await self._record_sent([msg])
        return handle

    async def _send_gated(self, msg: TaskMessage, item: Enqueue, name: str) -> AsyncResult[Any]:
        """Send behind a producer-side gate (unique, cooldown, debounce, order): the handle
        is the task the call joins, when it joins one."""
        assert item.gate is not None
        waiter = None if msg.reply_to is None else self.waiter
        handle: AsyncResult[Any] = AsyncResult(msg.id, self, name, waiter=waiter)

        def build(task_id: str) -> bytes:
            return self._encode_call(msgspec.structs.replace(msg, id=task_id))

        joined = await self.broker.enqueue_gated(item, item.gate, build)
        if joined is not None and joined != msg.id:
            handle = AsyncResult(joined, self, name, waiter=waiter)
        elif self.conf.task_send_sent_event:
            await self._record_sent([msg])
        return handle

    async def _enqueue_one(self, msg: TaskMessage, item: Enqueue, name: str) -> AsyncResult[Any]:
        if item.gate is not None:
            return await self._send_gated(msg, item, name)
        handle: AsyncResult[Any] = AsyncResult(
            msg.id, self, name, waiter=None if msg.reply_to is None else self.waiter)
        await self.broker.enqueue([item])
        if self.conf.task_send_sent_event:
            await self._record_sent([msg])
        return handle

    async def _send_many(
        self, task: Task[Any, R], calls: list[tuple[Any, ...]]
    ) -> list[AsyncResult[R]]:
        handles: list[AsyncResult[R]] = []
        # In chunks: one write per 1,000 calls measured ~1.5x faster than one giant write
        # for 20,000 calls (smaller buffers, and Redis starts on a chunk while we build the next).
        for start in range(0, len(calls), _BATCH_CHUNK):
            now = time.time()
            here = self._portal_here()
            reply_key = None if here is None else here.reply_to
            built = [self._build(task.name, args, {}, now=now, reply_key=reply_key)
                     for args in calls[start:start + _BATCH_CHUNK]]
            if any(item.gate is not None for _, item in built):
                # Gated calls each decide alone (one may join another's task).
                handles += [await self._send_gated(msg, item, task.name) for msg, item in built]
                continue
            waiter = None if built[0][0].reply_to is None else self.waiter
            # Handles before the write, as in _send.
            handles += [AsyncResult(msg.id, self, task.name, waiter=waiter) for msg, _ in built]
            await self.broker.enqueue([item for _, item in built])
            if self.conf.task_send_sent_event:
                await self._record_sent([msg for msg, _ in built])
        return handles

    async def _record_sent(self, messages: Sequence[TaskMessage]) -> None:
        """task-sent events (``task_send_sent_event``); a failure to record one is logged,
        never raised: the tasks are sent."""
        from .events import Event, EventType, encode_event, minute_of, short_repr, stat_field

        now = time.time()
        events = [Event(EventType.SENT, now, task_id=m.id, name=m.task, queue=m.queue,
                        args=short_repr(m.args), kwargs=short_repr(m.kwargs), sent_at=now)
                  for m in messages]
        counts: dict[tuple[int, str], int] = {}
        for m in messages:
            key = (minute_of(now), stat_field(m.task, EventType.SENT))
            counts[key] = counts.get(key, 0) + 1
        try:
            await self.broker.append_log("events", [encode_event(e) for e in events],
                                         self.conf.events_max_len)
            await self.broker.count_stats(counts, self.conf.events_stats_ttl)
        except Exception as exc:
            log.warning("could not record task-sent events: %s", exc)

    def send_task(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> SyncResult[Any]:
        """Enqueue a task by name, without importing it; options as ``apply_async``.

        As :meth:`Task.delay`: ``await app.send_task(...)`` in async code gives the
        :class:`~aioqueue.AsyncResult`; in sync code (Celery's habit) it sends at once and
        returns a blocking :class:`~aioqueue.SyncResult`. ``reply=False`` stores the result
        without pushing it to this process (for senders that never await, like beat).
        """
        call_args, call_kwargs = tuple(args or ()), dict(kwargs or {})
        what = f"app.send_task({name!r}, ...)"
        if in_async_context():
            return PendingSend(self._send_by_name(name, call_args, call_kwargs, **options),
                               what)
        handle = portal.call(
            lambda: self._send_by_name(name, call_args, call_kwargs, **options), what)
        return SyncResult(handle)

    async def _send_by_name(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                            **options: Any) -> AsyncResult[Any]:
        here = self._portal_here()
        msg, item = self._build(name, args, kwargs,
                                reply_key=None if here is None else here.reply_to, **options)
        return await self._enqueue_one(msg, item, name)

    def _send_sync(self, task: Task[Any, R], args: tuple[Any, ...], kwargs: dict[str, Any],
                   what: str, **options: Any) -> SyncResult[R]:
        """Send from sync code, through the portal (see ``aioqueue._sync``)."""
        handle = portal.call(lambda: self._send(task, args, kwargs, **options), what)
        return SyncResult(handle)

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:
        """A handle on a task by id, usable from any process.

        In sync code (no event loop running in this thread) it is a blocking
        :class:`~aioqueue.SyncResult`, as Celery's ``app.AsyncResult(task_id)``.
        """
        if not in_async_context():
            return SyncResult(AsyncResult(task_id, self))  # type: ignore[return-value]
        return AsyncResult(task_id, self)

    async def _load_record(self, task_id: str) -> ResultRecord | None:
        raw = await self.broker.get_result(task_id)
        if raw is None:
            return None
        try:
            return self.serializer.decode_record(raw)
        except SerializationError as exc:
            raise SerializationError(f"task {task_id}: {exc}") from exc

    async def _wait_for(self, handle: _Handle, timeout: float | None) -> ResultRecord:
        waiter = self.waiter
        fast = handle._track(waiter)
        return await waiter.wait(handle.id, timeout, fast=fast, poll_s=POLL_FIRST_S,
                                 poll_max_s=self.conf.result_poll_max_interval)

    async def revoke(self, task_id: str, terminate: bool = False) -> None:
        """Revoke a task by id: it will not run; with ``terminate`` a running one is cancelled.

        The revocation is remembered for ``result_expires``; the result becomes REVOKED
        unless the task already finished (a finished task keeps its result, even when it
        finishes while this call runs: the record is replaced by compare-and-set).
        """
        from .control import encode_control

        ttl = self.conf.result_expires_s
        control = encode_control("revoke", task_id=task_id, terminate=terminate)
        while True:
            now = time.time()
            raw = await self.broker.get_result(task_id)
            existing = None if raw is None else self.serializer.decode_record(raw)
            record: ResultRecord | None = None
            if existing is None or existing.state not in (State.SUCCESS, State.FAILURE):
                record = ResultRecord(
                    id=task_id, state=State.REVOKED, exc_type="aioqueue.errors.TaskRevoked",
                    exc_message="revoked", date_done=now,
                    task=existing.task if existing else None,
                )
            encoded = None if record is None else self.serializer.encode(record)
            if await self.broker.revoke(task_id, now + ttl, control, terminate=terminate,
                                        record=encoded, expected=raw, ttl_s=ttl):
                break
            # The task's state changed between the read and the write: read it again.
        if record is not None and self._waiter is not None:
            self._waiter.resolve(record)

    # -- running ---------------------------------------------------------------------------
    def worker(
        self,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        burst: bool = False,
        beat: bool = False,
        name: str | None = None,
        max_tasks: int | None = None,
        retry_on_startup: bool = False,
        metrics_port: int | None = None,
        events: bool | None = None,
    ) -> Worker:
        """A worker for this app: ``async with app.worker(concurrency=50): ...``.

        ``burst=True`` makes :meth:`Worker.run` return once the queues are drained (tests).
        ``metrics_port``: serve Prometheus metrics on ``127.0.0.1:PORT/metrics`` while it
        runs (needs ``aioqueue[metrics]``; see ``aioqueue.metrics``). ``events``: record
        task events (default: the ``worker_send_task_events`` setting).
        """
        from .worker import Worker  # worker imports app; the import runs only on use

        return Worker(
            self,
            concurrency=concurrency or self.conf.worker_concurrency,
            queues=list(queues) if queues else [self.conf.task_default_queue],
            burst=burst,
            beat=beat,
            name=name or f"{os.uname().nodename}.{os.getpid()}.{uuid.uuid4().hex[:6]}",
            max_tasks=max_tasks,
            retry_on_startup=retry_on_startup,
            metrics_port=metrics_port,
            events=events,
        )
