"""Routing: which queue, at which priority, a task goes to -- Celery's ``task_routes``.

``task_routes`` is one router or a list/tuple of them, asked in order (Celery's
``celery/app/routes.py``); the first to answer (anything but None) wins:

* a dict -- or a list of ``(pattern, route)`` pairs -- keyed by exact task name, glob
  (``"feed.tasks.*"``) or compiled regex: exact names first, then the patterns in order;
* a function ``route(name, args, kwargs, options, task=None, **kw)``, called for every send
  (its answer may depend on the arguments); None lets the next router answer;
* an import path (``"proj.routers.route_task"``) naming such a function, a dict, or a class
  with ``route_for_task`` (instantiated). It is imported when first needed, as Celery does,
  so a routers module may import the app without an import cycle;
* an object with ``route_for_task(name, args, kwargs)`` (Celery 3's router classes).

A route is a queue name, a :class:`Queue`, a :class:`Route`, or a dict with ``"queue"`` and
optionally ``"priority"`` (0-9, 0 runs first). Redis streams have no exchanges, so a route's
``exchange`` and ``routing_key`` are accepted with one notice; a route that names no queue is
a ``ConfigurationError`` -- never a silent fall back to the default queue.

:func:`declared_queues` reads Celery's ``task_queues`` (the queues a worker consumes when it
is not told with ``-Q``).
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from .errors import ConfigurationError

__all__ = ("Queue", "Route", "Router", "TaskRoutes", "declared_queues")

log = logging.getLogger("aioqueue.routing")

#: The one explanation for everything AMQP-exchange-related in routes and queue declarations.
EXCHANGE_NOTICE: Final = (
    "Redis streams have no exchanges: a task goes straight to the queue named by its route; "
    "exchange and routing_key are accepted and ignored"
)
_PRIORITY_NOTICE: Final = (
    "every queue takes priorities 0-9 (0 runs first) with no maximum to declare: "
    "max_priority and x-max-priority are accepted and ignored"
)
#: kombu's Queue options (and Celery's task_queues dict keys) that only an exchange uses.
_EXCHANGE_KEYS: Final = frozenset({
    "exchange", "routing_key", "exchange_type", "binding_key", "bindings", "binding_arguments",
})  # fmt: skip
_PRIORITIES: Final = range(10)
#: Per-map cache bound: task names are few, but a dynamic name must not grow it forever.
_CACHE_MAX: Final = 100_000


# -- values -----------------------------------------------------------------------------------
def _check_priority(priority: object) -> int | None:
    if priority is None:
        return None
    if isinstance(priority, bool) or not isinstance(priority, int) or (
            priority not in _PRIORITIES):
        raise ValueError(f"priority must be a whole number in 0-9 (0 runs first), "
                         f"not {priority!r}")
    return priority


@dataclass(frozen=True, slots=True)
class Route:
    """Where a task goes: a queue and, optionally, a priority (0-9, 0 runs first).

    Raises ``ValueError`` for an empty queue name or a priority outside 0-9.
    """

    queue: str
    priority: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.queue, str) or not self.queue:
            raise ValueError(f"a route's queue must be a non-empty string, not {self.queue!r}")
        _check_priority(self.priority)


class Queue:
    """A queue declaration in Celery's (kombu's) form, so Celery configurations load.

    ``Queue("feeds", Exchange("feeds"), routing_key="feeds", queue_arguments={...})``: only
    ``name`` matters here -- a queue is a Redis stream, created on first use. Exchange options
    and priority maximums are kept for inspection and explained by :attr:`notices`, never
    silently dropped.
    """

    __slots__ = ("exchange", "max_priority", "name", "options", "queue_arguments",
                 "routing_key")

    def __init__(
        self,
        name: str,
        exchange: Any = None,
        routing_key: str | None = None,
        queue_arguments: Mapping[str, Any] | None = None,
        *,
        max_priority: int | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"Queue name must be a non-empty string, not {name!r}")
        self.name = name
        #: The exchange's name (a kombu ``Exchange`` is reduced to its name).
        self.exchange: str | None = _name_of(exchange) if exchange is not None else None
        self.routing_key = routing_key
        self.queue_arguments: dict[str, Any] = dict(queue_arguments or {})
        self.max_priority = max_priority
        #: Every other kombu option (durable, message_ttl...): no effect on streams.
        self.options = options

    @property
    def notices(self) -> list[str]:
        """What this declaration asks for that Redis streams do not do, one line each."""
        found: list[str] = []
        if self.exchange or self.routing_key or _EXCHANGE_KEYS & set(self.options):
            found.append(EXCHANGE_NOTICE)
        if self.max_priority is not None or "x-max-priority" in self.queue_arguments:
            found.append(_PRIORITY_NOTICE)
        ignored = sorted({*(set(self.options) - _EXCHANGE_KEYS),
                          *(set(self.queue_arguments) - {"x-max-priority"})})
        if ignored:
            found.append(f"queue {self.name!r}: {', '.join(ignored)}: no effect on Redis "
                         "streams (a queue is a stream, created on first use); ignored")
        return found

    def _key(self) -> tuple[Any, ...]:
        return (self.name, self.exchange, self.routing_key, self.queue_arguments,
                self.max_priority, self.options)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Queue) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        shown = [repr(self.name)] + [f"{k}={v!r}" for k, v in (
            ("exchange", self.exchange), ("routing_key", self.routing_key),
            ("queue_arguments", self.queue_arguments or None),
            ("max_priority", self.max_priority)) if v is not None]
        shown += [f"{k}={v!r}" for k, v in self.options.items()]
        return f"Queue({', '.join(shown)})"


def _name_of(value: Any) -> str:
    """A queue or exchange name from a string or anything with a ``.name`` (kombu's)."""
    return value if isinstance(value, str) else str(getattr(value, "name", value))


def _is_queue_like(value: Any) -> bool:
    """Our Queue, or kombu's (duck-typed: kombu need not be installed)."""
    return not isinstance(value, str | Mapping) and isinstance(getattr(value, "name", None),
                                                               str)


def _as_queue(value: Any) -> Queue:
    """Our :class:`Queue` for ours or a kombu one, keeping what its notices need."""
    if isinstance(value, Queue):
        return value
    exchange = getattr(value, "exchange", None)
    exchange_name = _name_of(exchange) if exchange is not None else None
    routing_key = getattr(value, "routing_key", None)
    return Queue(value.name, exchange_name or None, routing_key or None,
                 getattr(value, "queue_arguments", None) or None,
                 max_priority=getattr(value, "max_priority", None))


def _note(notices: list[str], text: str) -> None:
    if text not in notices:
        notices.append(text)


def _route_of(value: Any, where: str, notices: list[str]) -> Route:
    """One route value -> a :class:`Route`; ``where`` names the task pattern in errors."""
    if isinstance(value, Route):
        return value
    queue: Any = value
    priority: Any = None
    if isinstance(value, Mapping):
        queue, priority = value.get("queue"), value.get("priority")
        extra = sorted(str(k) for k in value if k not in ("queue", "priority"))
        if set(extra) & _EXCHANGE_KEYS:
            _note(notices, EXCHANGE_NOTICE)
        others = [k for k in extra if k not in _EXCHANGE_KEYS]
        if others:
            _note(notices, f"route for {where}: {', '.join(others)}: a route sets only 'queue' "
                           "and 'priority'; ignored")
    if _is_queue_like(queue):
        for text in _as_queue(queue).notices:
            _note(notices, text)
        queue = queue.name
    if not isinstance(queue, str) or not queue:
        raise ConfigurationError(
            f"task_routes: the route for {where} must be a queue name or a dict with 'queue' "
            f"(or a Queue, or a Route), not {value!r}")
    try:
        return Route(queue, _check_priority(priority))
    except ValueError as exc:
        raise ConfigurationError(f"task_routes: the route for {where}: {exc}") from None


# -- routers ----------------------------------------------------------------------------------
class _Answering(Protocol):
    """One router of the list: an answer for a task, or None to let the next one answer."""

    static: bool

    def __call__(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 options: dict[str, Any], task: Any) -> Route | None: ...


class _MapRouter:
    """Celery's ``MapRoute``: exact names first, then globs and regexes in their order."""

    static = True

    def __init__(self, entries: Iterable[Any], notices: list[str]) -> None:
        self.exact: dict[str, Route] = {}
        self.patterns: list[tuple[re.Pattern[str], Route]] = []
        self._shown: list[str] = []  # the patterns as written (a glob, not its regex)
        self._cache: dict[str, Route | None] = {}
        for entry in entries:
            try:
                key, value = entry
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"task_routes: {entry!r} is not a (name, route) pair") from None
            if isinstance(key, re.Pattern):
                self.patterns.append((key, _route_of(value, repr(key.pattern), notices)))
                self._shown.append(f"re.compile({key.pattern!r})")
            elif isinstance(key, str) and "*" in key:  # Celery's test for a glob
                self.patterns.append((re.compile(fnmatch.translate(key)),
                                      _route_of(value, repr(key), notices)))
                self._shown.append(repr(key))
            elif isinstance(key, str) and key:
                self.exact[key] = _route_of(value, repr(key), notices)
            else:
                raise ConfigurationError(f"task_routes: key {key!r} is not a task name")

    def __call__(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 options: dict[str, Any], task: Any) -> Route | None:
        try:
            return self._cache[name]
        except KeyError:
            pass
        found = self.exact.get(name)
        if found is None:
            found = next((route for rx, route in self.patterns if rx.match(name)), None)
        if len(self._cache) < _CACHE_MAX:
            self._cache[name] = found
        return found

    def __repr__(self) -> str:
        shown = [f"{k!r}: {v!r}" for k, v in self.exact.items()]
        shown += [f"{key}: {v!r}" for key, (_, v) in zip(self._shown, self.patterns,
                                                          strict=True)]
        return "{" + ", ".join(shown) + "}"


class _DynamicRouter:
    """A router asked on every send: a function, or an object with ``route_for_task``."""

    static = False

    def __init__(self, answer: Callable[..., Any], label: str, notices: list[str],
                 legacy: bool = False) -> None:
        self.answer = answer
        self.label = label
        self.notices = notices
        self.legacy = legacy

    def __call__(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 options: dict[str, Any], task: Any) -> Route | None:
        if self.legacy:
            found = self.answer(name, args, kwargs)
        else:
            found = self.answer(name, args, kwargs, options, task=task)
        if found is None:
            return None
        seen = len(self.notices)
        route = _route_of(found, f"{name!r} (from router {self.label})", self.notices)
        for text in self.notices[seen:]:  # a new kind of answer: say it once, in the log
            log.warning("task_routes: %s", text)
        return route

    def __repr__(self) -> str:
        return self.label


class _ImportedRouter:
    """A router named by import path, imported on first use (Celery's lazy ``mlazy``)."""

    static = False

    def __init__(self, path: str, notices: list[str]) -> None:
        if not re.fullmatch(r"[\w.]+[.:][\w.]+", path):
            raise ConfigurationError(
                f"task_routes: {path!r} is not an import path like 'proj.routers.route_task'")
        self.path = path
        self.notices = notices
        self._router: _Answering | None = None

    def _load(self) -> _Answering:
        module_name, sep, attribute = self.path.partition(":")
        if not sep:
            module_name, _, attribute = self.path.rpartition(".")
        try:
            found: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(
                f"task_routes: cannot import router {self.path!r}: {exc}") from exc
        if isinstance(found, str):
            raise ConfigurationError(
                f"task_routes: {self.path!r} names a string, not a router")
        seen = len(self.notices)
        router = _router_for(found, self.notices, label=self.path)
        for text in self.notices[seen:]:  # found after start-up: the log is where it shows
            log.warning("task_routes: %s", text)
        return router

    def __call__(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 options: dict[str, Any], task: Any) -> Route | None:
        if self._router is None:
            self._router = self._load()
        return self._router(name, args, kwargs, options, task)

    def __repr__(self) -> str:
        return repr(self.path)


def _label(fn: Any) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}" if module else qualname


def _router_for(value: Any, notices: list[str], label: str | None = None) -> _Answering:
    """One element of ``task_routes`` -> a router (Celery's ``expand_route``)."""
    if isinstance(value, Mapping):
        return _MapRouter(value.items(), notices)
    if isinstance(value, list | tuple):
        return _MapRouter(value, notices)
    if isinstance(value, str):
        return _ImportedRouter(value, notices)
    if hasattr(value, "route_for_task"):
        legacy = value() if isinstance(value, type) else value  # Celery 3: a router class
        return _DynamicRouter(legacy.route_for_task, label or _label(type(legacy)), notices,
                              legacy=True)
    if callable(value):
        return _DynamicRouter(value, label or _label(value), notices)
    raise ConfigurationError(
        f"task_routes: router {value!r} is not supported: give a dict of task name (or glob, "
        "or regex) -> queue, a function (name, args, kwargs, options, task=None, **kw) -> "
        "route, an object with route_for_task, or an import path naming one")


class Router:
    """Celery's ``task_routes``, in any of its forms, answering where a task goes.

    ``Router(value)`` checks every dict route at once (a bad one raises
    ``ConfigurationError`` naming the task pattern and the value); functions and import paths
    are checked when they first answer. :attr:`notices` explains what the routes ask for that
    has no effect here (exchanges, routing keys).
    """

    def __init__(self, routes: Any = None) -> None:
        #: Human notices about the routes (also logged once when a function's answer adds one).
        self.notices: list[str] = []
        self._routers: list[_Answering] = []
        if isinstance(routes, Router | TaskRoutes):
            source = routes if isinstance(routes, Router) else routes.router
            # The same routers and notices list: a function's later notices show in both.
            self._routers, self.notices = list(source._routers), source.notices
            return
        if routes is None:
            return
        for element in routes if isinstance(routes, list | tuple) else [routes]:
            if isinstance(element, TaskRoutes):  # a normalised map keeps its patterns
                self._routers += element.router._routers
                for text in element.router.notices:
                    _note(self.notices, text)
            else:
                self._routers.append(_router_for(element, self.notices))

    @property
    def static(self) -> bool:
        """True when every router is a dict: answers depend on the task name alone."""
        return all(r.static for r in self._routers)

    def route(
        self,
        name: str,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        task: Any = None,
    ) -> Route | None:
        """The route for one send of task ``name``, or None when no router answers.

        ``options`` are the send's options (``queue``, ``priority``...), passed to router
        functions as Celery passes them; an explicit ``queue=`` still beats any route (the
        caller's to apply). Dict answers are cached per name; functions are called every
        time. Raises ``ConfigurationError`` when an answer names no queue.
        """
        arguments, keywords = tuple(args), dict(kwargs or {})
        settings = dict(options or {})
        for router in self._routers:
            found = router(name, arguments, keywords, settings, task)
            if found is not None:
                return found
        return None

    def __repr__(self) -> str:
        return f"Router([{', '.join(repr(r) for r in self._routers)}])"


class TaskRoutes(dict[str, str]):
    """What ``app.conf.task_routes`` holds for dict forms that a plain dict cannot say.

    As a dict: the exact task names -> queue (the first map naming a task wins). ``get(name)``
    answers with the patterns too, in Celery's order, through :attr:`router`; priorities are
    kept there (``conf.router().route(name)``).
    """

    def __init__(self, router: Router) -> None:
        exact: dict[str, str] = {}
        for answering in router._routers:
            if isinstance(answering, _MapRouter):
                for name, route in answering.exact.items():
                    exact.setdefault(name, route.queue)
        super().__init__(exact)
        self.router = router

    def get(self, key: str, default: Any = None) -> Any:
        found = self.router.route(key)
        return default if found is None else found.queue

    def __repr__(self) -> str:
        return f"TaskRoutes({self.router!r})"


# -- task_queues ------------------------------------------------------------------------------
def declared_queues(value: Any, *, notices: list[str] | None = None) -> list[str]:
    """Celery's ``task_queues`` -> the declared queue names, in order, without repeats.

    Takes a list/tuple of names or :class:`Queue` objects (kombu's too), a dict of name ->
    options (``{"feeds": {"exchange": "feeds", "routing_key": "feeds"}}``) or a
    comma-separated string. What the declarations ask for that Redis streams do not do is
    appended to ``notices`` (once each). Raises ``ConfigurationError`` naming a bad entry.
    """
    found = notices if notices is not None else []
    if value is None:
        return []
    if isinstance(value, str):
        entries: list[Any] = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, Mapping):
        entries = [_declared(name, options) for name, options in value.items()]
    elif isinstance(value, list | tuple | set | frozenset):
        entries = list(value)
    else:
        raise ConfigurationError(
            "task_queues must be a list of queue names or Queue objects, or a dict of queue "
            f"name -> options, not {value!r}")
    names: list[str] = []
    for entry in entries:
        if _is_queue_like(entry):
            queue = _as_queue(entry)
            for text in queue.notices:
                _note(found, text)
            name: Any = queue.name
        else:
            name = entry
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"task_queues: {entry!r} is not a queue name or a Queue")
        if name not in names:
            names.append(name)
    return names


def _declared(name: Any, options: Any) -> Any:
    """One entry of the dict form: Celery's ``Queues.add_compat(name, **options)``."""
    if options is None:
        return name
    if _is_queue_like(options):
        return options  # Celery keeps the Queue object (its own name)
    if not isinstance(options, Mapping) or not isinstance(name, str):
        raise ConfigurationError(
            f"task_queues[{name!r}] must be a dict of queue options (or a Queue), "
            f"not {options!r}")
    try:
        return Queue(name, **{str(k): v for k, v in options.items()})
    except TypeError as exc:  # a keyword given twice, say
        raise ConfigurationError(f"task_queues[{name!r}]: {exc}") from None
