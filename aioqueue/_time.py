"""Time conversions at the public surface: datetimes and seconds in, epoch seconds inside."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

__all__ = ("from_epoch", "to_epoch", "when_to_epoch")


def to_epoch(when: datetime) -> float:
    """Epoch seconds of ``when``; a naive datetime is read as UTC.

    That is how Celery reads a naive ``eta``/``expires``, whatever ``timezone`` and
    ``enable_utc`` say: its worker calls ``maybe_make_aware(eta, tz)``, whose
    ``naive_as_utc=True`` makes the naive time UTC before converting it to ``tz``
    (celery/worker/request.py, celery/utils/time.py; checked against Celery 5.7 for both
    ``enable_utc`` values with ``timezone="Asia/Shanghai"``).
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def from_epoch(seconds: float) -> datetime:
    """An aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def when_to_epoch(value: float | timedelta | datetime, now: float | None = None) -> float:
    """Seconds-from-now, a timedelta from now, or a datetime, as epoch seconds."""
    base = time.time() if now is None else now
    if isinstance(value, datetime):
        return to_epoch(value)
    if isinstance(value, timedelta):
        return base + value.total_seconds()
    return base + float(value)
