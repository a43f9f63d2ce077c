"""Settings, with Celery's names where Celery has one. ``app.conf`` is a :class:`Settings`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigurationError
from .message import COMPRESSIONS, get_serializer
from .routing import Router, TaskRoutes, declared_queues

__all__ = ("Settings",)

#: Celery's content types for its serializer names.
_CONTENT_TYPES = {
    "application/json": "json", "application/x-msgpack": "msgpack",
    "application/x-python-serialize": "pickle", "application/x-yaml": "yaml",
}  # fmt: skip
#: kombu's names for compressions (its "gzip" is zlib's format; either decompresses here).
_COMPRESSION_ALIASES = {
    "application/x-gzip": "zlib", "bzip2": "bz2", "bzip": "bz2", "application/x-bz2": "bz2",
    "xz": "lzma", "application/x-lzma": "lzma",
}  # fmt: skip


@dataclass(repr=False)
class Settings:
    """Everything an app can be configured with; change with ``app.conf.update(...)``."""

    broker_url: str = "redis://localhost:6379/0"
    #: Where results live; defaults to the broker (the only supported choice today).
    result_backend: str | None = None
    #: Every Redis key starts with this; two apps with different prefixes never meet.
    key_prefix: str = "aioqueue"
    #: ``msgpack`` (default) or ``json``; ``pickle`` only on explicit opt-in.
    task_serializer: str = "msgpack"
    #: Seconds (or a timedelta) a result is kept. Also how long a revocation is remembered.
    result_expires: float | timedelta = 86400.0
    task_default_queue: str = "default"
    #: Where tasks go, in any of Celery's forms: a dict of task name (or glob, or regex) ->
    #: queue name or ``{"queue": ..., "priority": ...}``, a router function
    #: ``(name, args, kwargs, options, task=None, **kw) -> route``, an import path naming one,
    #: or a list of these asked in order (see :mod:`aioqueue.routing`). Dict forms are kept
    #: as a dict (``get(name)`` answers); :meth:`router` answers for every form.
    task_routes: Any = field(default_factory=dict)
    #: The queues a worker consumes when ``-Q`` names none (Celery's ``task_queues``: names,
    #: ``Queue`` objects or a dict of name -> options, kept as names). None: just
    #: ``task_default_queue``.
    task_queues: list[str] | None = None
    task_ignore_result: bool = False
    task_track_started: bool = False
    #: Default time limit in seconds for every task (None: no limit).
    task_time_limit: float | None = None
    #: Priority of a call that names none (0 runs first, 9 last); None: 0.
    task_default_priority: int | None = None
    #: One message in this many + 1 a worker takes from a queue with several priorities
    #: comes from the lower ones, in turn, so none waits forever (0: strict order).
    priority_share_every: int = 10
    #: Rate limit of every task that sets none (``"100/s"``; Celery's name).
    task_default_rate_limit: str | None = None
    #: Celery's switch: no rate limit is enforced (concurrency limits still are).
    worker_disable_rate_limits: bool = False
    worker_concurrency: int = 100
    #: A message unacknowledged this long (its worker died) is handed to another worker.
    visibility_timeout: float = 30.0
    #: A message delivered more often than this goes to the dead-letter stream.
    max_deliveries: int = 5
    #: On SIGTERM, how long running tasks get to finish before being handed back.
    shutdown_timeout: float = 10.0
    #: How long a producer keeps retrying while Redis is unreachable before raising.
    broker_connection_timeout: float = 10.0
    #: How often workers move due delayed messages (countdown, eta, retries) to the queue.
    delayed_poll_interval: float = 0.1
    #: How often a bare-id handle re-reads a result at most (it backs off up to this).
    result_poll_max_interval: float = 0.5
    #: IANA name of the zone in which crontab schedules are read.
    timezone: str = "UTC"
    #: Periodic tasks: name -> {"task", "schedule", "args", "kwargs", "options"}.
    beat_schedule: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: How long the beat leader's lease lasts without renewal (a new leader takes over after).
    beat_lease_ttl: float = 5.0
    #: Celery's per-task option overrides: ``{"tasks.add": {"time_limit": 5}, "*": {...}}``,
    #: or a list of such dicts. :meth:`annotations_for` resolves them for one task as Celery
    #: does; they take only aioqueue's task options (``queue``, ``time_limit``, ...).
    task_annotations: dict[str, dict[str, Any]] | list[dict[str, dict[str, Any]]] | None = None
    #: Serializers a worker accepts (Celery's names or content types). Messages carry no
    #: content type and there is one serializer per app, so this is a check: it must include
    #: ``task_serializer``. None: just ``task_serializer``.
    accept_content: list[str] | None = None
    #: Compress task messages with ``"zlib"``, ``"gzip"``, ``"bz2"`` or ``"lzma"`` (None: no).
    #: Workers decompress any compressed message whatever their own setting, so producers can
    #: turn it on one at a time. Results are not compressed.
    task_compression: str | None = None
    #: ``aioqueue worker`` replaces a worker process (gracefully) after it has run this many
    #: tasks (``--max-tasks-per-child``; the worker then runs under its supervisor).
    worker_max_tasks_per_child: int | None = None
    #: ... or once its resident memory exceeds this many KiB (``--max-memory-per-child``).
    worker_max_memory_per_child: int | None = None
    #: ``aioqueue worker`` started while Redis is unreachable keeps trying, with a log line
    #: per attempt, instead of exiting (False: exit after ``broker_connection_timeout``).
    broker_connection_retry_on_startup: bool = True
    #: Record task events (``aioqueue worker -E``; see ``aioqueue.events``).
    worker_send_task_events: bool = False
    #: Producers record a ``task-sent`` event for each task they send.
    task_send_sent_event: bool = False
    #: The events stream keeps about this many events (older ones are trimmed).
    events_max_len: int = 100_000
    #: Per-minute event counters (charts) are kept this many seconds.
    events_stats_ttl: float = 7 * 86400.0
    #: Warn when an ``async def`` task blocks the worker's event loop this many seconds
    #: (``time.sleep`` in async code); None: never.
    worker_blocked_loop_warning: float | None = 1.0
    #: Celery's ``enable_utc``. Naive datetimes (``eta``, ``expires``) are read as UTC either
    #: way, as Celery 4+ reads them; crontabs follow ``timezone``. (A Celery configuration read
    #: by ``config_from_object`` with ``enable_utc=False`` and no timezone gets the host's zone.)
    enable_utc: bool = True
    #: Celery's ``worker_prefetch_multiplier``; no effect beyond documenting intent: a worker
    #: fetches at most its free concurrency slots, so prefetch is effectively 1 per slot.
    worker_prefetch_multiplier: int = 1
    #: Celery's ``task_soft_time_limit`` in seconds; kept, not enforced: ``task_time_limit``
    #: cancels the coroutine, which can clean up in ``except CancelledError``/``finally``.
    task_soft_time_limit: float | None = None
    #: Modules a worker imports at start-up so their tasks register (Celery's ``imports``, and
    #: its ``include`` setting read by ``config_from_object``), before ``AioQueue(include=)``.
    imports: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        #: Human notices about settings with no effect here (Celery's names): a worker logs
        #: them once at start-up. ``app.config_notices`` is this list.
        self.notices: list[str] = []
        #: (task_routes as last seen, a copy if it was a dict, its Router): see router().
        self._router_cache: tuple[Any, dict[Any, Any] | None, Router] | None = None

    def update(self, **changes: Any) -> None:
        """Change settings by name; an unknown name raises ``ConfigurationError``.

        Celery's names work too: its lowercase ones and its old uppercase ones
        (``CELERYD_CONCURRENCY=8``, ``CELERY_TASK_RESULT_EXPIRES=60``) are mapped onto
        aioqueue's settings, and one with no meaning here (``task_acks_late``) adds a line to
        :attr:`notices` saying what to do instead.
        """
        from ._celery_config import notices_for_field, translate_setting

        names = {f.name for f in dataclasses.fields(self)}
        resolved: dict[str, Any] = {}
        for name, value in changes.items():
            if name in names:
                resolved[name] = value
                self._note(notices_for_field(name, value))
                continue
            settings, notices = translate_setting(name, value)  # unknown: a did-you-mean
            resolved.update(settings)
            self._note(notices)
        for name, value in resolved.items():
            setattr(self, name, value)
        self.validate()

    def _note(self, notices: list[str]) -> None:
        self.notices.extend(n for n in notices if n not in self.notices)

    def router(self) -> Router:
        """The :class:`~aioqueue.routing.Router` answering for ``task_routes``.

        Built once and reused while ``task_routes`` stays the same: reassigning it, or
        changing a routing dict in place, builds a new one.
        """
        routes = self.task_routes
        cached = self._router_cache
        if cached is not None and cached[0] is routes and (
                cached[1] is None or cached[1] == routes):
            return cached[2]
        router = Router(routes)
        # A copy of a dict, to notice `conf.task_routes["x"] = "q"` (the same object).
        snapshot = dict(routes) if isinstance(routes, dict) else None
        self._router_cache = (routes, snapshot, router)
        return router

    def annotations_for(self, task_name: str) -> dict[str, Any]:
        """The ``task_annotations`` options for one task, as Celery applies them: the first
        map naming the task, then the first ``"*"`` map (which wins where both set a key)."""
        value = self.task_annotations
        maps = [value] if isinstance(value, dict) else list(value or ())
        merged: dict[str, Any] = {}
        for key in (task_name, "*"):
            found = next((m[key] for m in maps if key in m), None)
            merged.update(found or {})
        return merged

    def validate(self) -> None:
        """Raise ``ConfigurationError`` naming the first invalid setting."""
        if self.worker_concurrency < 1:
            raise ConfigurationError(
                f"worker_concurrency must be at least 1, not {self.worker_concurrency}"
            )
        seconds = {name: getattr(self, name) for name in (
            "visibility_timeout", "shutdown_timeout", "broker_connection_timeout",
            "delayed_poll_interval", "beat_lease_ttl", "result_poll_max_interval")}
        seconds["result_expires"] = self.result_expires_s
        if self.task_time_limit is not None:
            seconds["task_time_limit"] = self.task_time_limit
        for name, value in seconds.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"{name} must be a number of seconds, not {value!r}") from None
            # inf would pass "> 0" and then fail deep inside (int(inf * 1000)) at run time.
            if not (math.isfinite(number) and number > 0):
                raise ConfigurationError(
                    f"{name} must be a positive, finite number of seconds, not {value!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(f"timezone: unknown timezone {self.timezone!r}") from None
        if self.max_deliveries < 1:
            raise ConfigurationError(
                f"max_deliveries must be at least 1, not {self.max_deliveries}"
            )
        self._validate_flow_control()
        self._validate_celery_style()
        self._validate_cluster()

    def _validate_cluster(self) -> None:
        """On Redis Cluster every key of an app must be in one slot: the default prefix
        gets a hash tag (``{aioqueue}``), a prefix without one is refused (``_cluster.py``)."""
        from .broker._url import is_cluster_url

        urls = (self.broker_url, self.result_backend)
        if any(isinstance(url, str) and is_cluster_url(url) for url in urls):
            from .broker._cluster import cluster_key_prefix

            self.key_prefix = cluster_key_prefix(self.key_prefix)

    def _validate_flow_control(self) -> None:
        from .broker._lanes import check_priority
        from .flow import parse_rate

        if self.task_default_priority is not None:
            try:
                check_priority(self.task_default_priority, "task_default_priority")
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
        share = self.priority_share_every
        if isinstance(share, bool) or not isinstance(share, int) or share < 0:
            raise ConfigurationError(
                f"priority_share_every must be a whole number of at least 0, not {share!r}")
        if self.task_default_rate_limit is not None:
            parse_rate(self.task_default_rate_limit, "task_default_rate_limit")

    def _validate_celery_style(self) -> None:
        """The settings ported Celery configurations bring (see ``_celery_config``)."""
        from ._celery_config import normalise_routes

        serializer = get_serializer(self.task_serializer)  # unknown: ConfigurationError
        if self.accept_content is not None:
            if isinstance(self.accept_content, str) or not all(
                    isinstance(c, str) for c in self.accept_content):
                raise ConfigurationError(
                    f"accept_content must be a list of serializer names, not "
                    f"{self.accept_content!r}")
            accepted = {_CONTENT_TYPES.get(c, c) for c in self.accept_content}
            if serializer.name not in accepted:
                raise ConfigurationError(
                    f"task_serializer {serializer.name!r} is not in accept_content "
                    f"{list(self.accept_content)!r}: workers could run no message; add it, or "
                    f"set task_serializer to one of them"
                )
        compression = self.task_compression
        if compression is not None:
            compression = _COMPRESSION_ALIASES.get(compression, compression)
            if compression not in COMPRESSIONS:
                raise ConfigurationError(
                    f"task_compression must be None or one of {', '.join(COMPRESSIONS)}, "
                    f"not {self.task_compression!r}"
                )
            self.task_compression = compression
        for name in ("worker_max_tasks_per_child", "worker_max_memory_per_child",
                     "worker_prefetch_multiplier"):
            value = getattr(self, name)
            least = 0 if name == "worker_prefetch_multiplier" else 1
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < least):
                raise ConfigurationError(
                    f"{name} must be an integer of at least {least}, not {value!r}")
        limit = self.task_soft_time_limit
        if limit is not None and not (isinstance(limit, int | float) and math.isfinite(limit)
                                      and limit > 0):
            raise ConfigurationError(
                f"task_soft_time_limit must be a positive, finite number of seconds, not "
                f"{limit!r}")
        if isinstance(self.imports, str):
            self.imports = [self.imports]
        if not all(isinstance(m, str) for m in self.imports):
            raise ConfigurationError(f"imports must be a list of module names: {self.imports!r}")
        self.imports = list(self.imports)
        annotations = self.task_annotations
        maps = [annotations] if isinstance(annotations, dict) else annotations
        if maps is not None and (not isinstance(maps, list | tuple) or not all(
                isinstance(m, dict) and all(isinstance(v, dict) for v in m.values())
                for m in maps)):
            raise ConfigurationError(
                "task_annotations must be a dict of task name -> options dict, or a list of "
                f"them, not {annotations!r}")
        routes = self.task_routes
        plain = type(routes) is dict and all(
            isinstance(k, str) and k and "*" not in k and isinstance(v, str) and v
            for k, v in routes.items())
        if not (plain or isinstance(routes, TaskRoutes)):  # Celery's forms: globs, lists...
            self.task_routes, notices = normalise_routes(routes)
            self._note([f"task_routes: {n}" for n in notices])
        if self.task_queues is not None:
            notices = []
            self.task_queues = declared_queues(self.task_queues, notices=notices)
            self._note([f"task_queues: {n}" for n in notices])

    @property
    def result_expires_s(self) -> float:
        """``result_expires`` in seconds."""
        value = self.result_expires
        return value.total_seconds() if isinstance(value, timedelta) else float(value)

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def __repr__(self) -> str:
        # Never the URLs' passwords: a repr ends up in logs, tracebacks and bug reports.
        from .broker import redact_url

        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("broker_url", "result_backend") and isinstance(value, str):
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"
