"""Task and worker events, kept in Redis so history survives any reader's restart.

With ``worker_send_task_events`` (``aioqueue worker -E``) a worker records, for every task,
``task-started`` and one of ``task-succeeded``, ``task-failed``, ``task-retried``,
``task-revoked``, ``task-dead-lettered``; with ``task_send_sent_event`` a producer records
``task-sent``. Workers always record ``worker-online``, ``worker-heartbeat`` and
``worker-offline``. Task events ride in the settle script that acknowledges the task (no
extra round trip): they go to one capped stream (``{prefix}:events``, ``events_max_len``
entries) and count into per-minute hashes (``{prefix}:stats:{minute}``, field
``name|state``, kept ``events_stats_ttl`` seconds) that charts read without scanning.

Events are msgpack, whatever the app's serializer; arguments, results and errors appear as
bounded ``repr`` strings, never as objects to decode, so reading events can never run code.
A task event may be recorded twice when a settle batch is replayed (at-least-once).
"""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec

__all__ = ("Event", "EventType", "decode_event", "encode_event", "short_repr", "stat_field")

#: Longest ``repr`` kept for arguments and results, and the longest traceback.
REPR_MAX: Final = 1000
TRACEBACK_MAX: Final = 8000
#: A failed task's message is kept in its event (to retry it from the dashboard) up to this.
PAYLOAD_MAX: Final = 64 * 1024


class EventType:
    """The event names (Celery's, with dashes)."""

    SENT: Final = "task-sent"
    STARTED: Final = "task-started"
    SUCCEEDED: Final = "task-succeeded"
    FAILED: Final = "task-failed"
    RETRIED: Final = "task-retried"
    REVOKED: Final = "task-revoked"
    DEAD: Final = "task-dead-lettered"
    WORKER_ONLINE: Final = "worker-online"
    WORKER_HEARTBEAT: Final = "worker-heartbeat"
    WORKER_OFFLINE: Final = "worker-offline"


#: The state a task event counts as in the per-minute statistics.
STATE_OF: Final = {
    EventType.SENT: "SENT",
    EventType.STARTED: "STARTED",
    EventType.SUCCEEDED: "SUCCESS",
    EventType.FAILED: "FAILURE",
    EventType.RETRIED: "RETRY",
    EventType.REVOKED: "REVOKED",
    EventType.DEAD: "DEAD",
}


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    """One event. ``timestamp`` is Unix epoch seconds."""

    type: str
    timestamp: float
    task_id: str | None = None
    name: str | None = None
    queue: str | None = None
    worker: str | None = None
    args: str | None = None
    kwargs: str | None = None
    result: str | None = None
    exception: str | None = None
    traceback: str | None = None
    retries: int = 0
    #: When the message was sent / became due, when the run started, how long it ran (s).
    sent_at: float | None = None
    started_at: float | None = None
    runtime: float | None = None
    #: The task's message (encoded by its app), for a retry from the dashboard.
    payload: bytes | None = None
    #: Worker events: what the worker says of itself (queues, concurrency, load...).
    info: dict[str, Any] | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event | None:
    """The event, or None for bytes that are not one (skipped by readers, never fatal)."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def short_repr(value: Any, limit: int = REPR_MAX) -> str:
    """``repr(value)``, cut to ``limit`` characters (a repr that raises is named instead)."""
    try:
        text = repr(value)
    except Exception as exc:  # a user's __repr__ may raise: an event never does
        text = f"<unrepresentable {type(value).__name__}: {exc}>"
    return cut(text, limit)


def describe_exception(exc: BaseException, limit: int = REPR_MAX) -> str:
    """``Type: message`` of an exception, cut to ``limit`` characters."""
    try:
        message = str(exc)
    except Exception:  # a user's __str__ may raise
        message = "<unprintable>"
    return cut(f"{type(exc).__name__}: {message}", limit)


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def stat_field(name: str | None, event_type: str) -> str:
    """The per-minute counter field of a task event: ``name|STATE``."""
    return f"{name or '?'}|{STATE_OF.get(event_type, event_type)}"


def minute_of(timestamp: float | None = None) -> int:
    """The minute (epoch seconds // 60) a timestamp falls in."""
    return int((time.time() if timestamp is None else timestamp) // 60)
