"""Every error aioqueue raises, under one root.

::

    AioQueueError
    ├── ConfigurationError          bad settings, bad CLI target, bad schedule
    ├── BrokerError                 the broker failed or cannot be reached
    │   └── BrokerConnectionError   Redis unreachable (names the URL, never its password)
    ├── SerializationError          a value cannot be encoded, or a payload decoded
    ├── TaskError                   something about one task (carries task name and id)
    │   ├── NotRegistered           no task of that name in this app
    │   ├── TimeLimitExceeded       the task ran past its time_limit
    │   ├── TaskRevoked             the task was revoked (or expired) before finishing
    │   ├── MaxRetriesExceeded      self.retry() called past max_retries
    │   ├── DeadLettered            the message was moved to the dead-letter stream
    │   └── RemoteTaskError         the task raised an exception whose type we cannot import
    └── Retry                       raised by ``self.retry()`` to ask for a re-run

``Retry`` sits under the root (not under ``TaskError``) because it is control flow, not a
failure: ``except TaskError`` in user code must not swallow it.
"""

from __future__ import annotations

__all__ = (
    "AioQueueError",
    "BrokerConnectionError",
    "BrokerError",
    "ConfigurationError",
    "DeadLettered",
    "MaxRetriesExceeded",
    "NotRegistered",
    "RemoteTaskError",
    "Retry",
    "SerializationError",
    "TaskError",
    "TaskRevoked",
    "TimeLimitExceeded",
)


class AioQueueError(Exception):
    """Root of every error raised by aioqueue."""


class ConfigurationError(AioQueueError):
    """A setting, a CLI target or a schedule is invalid."""


class BrokerError(AioQueueError):
    """The broker failed to carry out a command."""


class BrokerConnectionError(BrokerError):
    """The broker cannot be reached; the message names the URL without its password."""


class SerializationError(AioQueueError):
    """A value cannot be serialized, or a payload cannot be decoded."""


class TaskError(AioQueueError):
    """An error about one task; ``task_name`` and ``task_id`` say which, when known."""

    def __init__(
        self, message: str, *, task_name: str | None = None, task_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.task_name = task_name
        self.task_id = task_id


class NotRegistered(TaskError):
    """A message names a task this app does not know."""


class TimeLimitExceeded(TaskError):
    """The task ran longer than its ``time_limit`` and was cancelled."""


class TaskRevoked(TaskError):
    """The task was revoked or expired; ``get()`` raises it for a REVOKED result."""


class MaxRetriesExceeded(TaskError):
    """``self.retry()`` was called after ``max_retries`` retries and no exception was given."""


class DeadLettered(TaskError):
    """The message could not be processed and was moved to the dead-letter stream."""


class RemoteTaskError(TaskError):
    """A task failed with an exception type that cannot be imported here.

    ``exc_type`` is the dotted name of the original type; ``str(error)`` is its message.
    """

    def __init__(self, exc_type: str, message: str, *, task_id: str | None = None) -> None:
        super().__init__(f"{exc_type}: {message}", task_id=task_id)
        self.exc_type = exc_type
        self.exc_message = message


class Retry(AioQueueError):
    """Raised by ``task.retry()``: re-run the task later instead of failing it.

    Write ``raise self.retry(countdown=5)``; the worker catches it, reschedules the message
    atomically with its ack, and records the RETRY state.
    """

    def __init__(
        self,
        message: str = "retry requested",
        *,
        exc: BaseException | None = None,
        when: float | None = None,
    ) -> None:
        super().__init__(message)
        self.exc = exc
        #: Delay in seconds before the next attempt.
        self.when = when
