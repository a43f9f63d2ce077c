"""Settings, with Celery's names where Celery has one. ``app.conf`` is a :class:`Settings`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigurationError

__all__ = ("Settings",)


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
    #: Task name -> queue name.
    task_routes: dict[str, str] = field(default_factory=dict)
    task_ignore_result: bool = False
    task_track_started: bool = False
    #: Default time limit in seconds for every task (None: no limit).
    task_time_limit: float | None = None
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

    def update(self, **changes: Any) -> None:
        """Change settings by name; an unknown name raises ``ConfigurationError``."""
        names = {f.name for f in dataclasses.fields(self)}
        for name, value in changes.items():
            if name not in names:
                close = [n for n in sorted(names) if n.split("_")[-1] in name]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigurationError(f"unknown setting {name!r}{hint}")
            setattr(self, name, value)
        self.validate()

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
