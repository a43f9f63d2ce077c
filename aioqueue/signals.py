"""Signals with Celery's names: ``@task_prerun.connect`` and friends.

A receiver is a function (or ``async def``) taking keyword arguments, as Celery's:
``def on_prerun(sender, task_id, task, args, kwargs, **_): ...``. Receivers run on the
worker's event loop; an ``async def`` receiver is awaited. A receiver that raises is logged
and never changes what happens to the task (Celery's ``send`` semantics).

Task signals: ``task_prerun`` (sender=task; task_id, task, args, kwargs), ``task_postrun``
(... retval, state), ``task_success`` (result), ``task_failure`` (task_id, exception, args,
kwargs, traceback, einfo), ``task_retry`` (request, reason, einfo), ``task_revoked``
(request, terminated, expired). Worker signals: ``worker_init`` (before connecting),
``worker_ready`` (consuming), ``worker_shutting_down``, ``worker_shutdown`` (sender=worker).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

__all__ = (
    "Signal",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_receivers",
    "task_retry",
    "task_revoked",
    "task_success",
    "worker_init",
    "worker_ready",
    "worker_shutdown",
    "worker_shutting_down",
)

log = logging.getLogger("aioqueue.signals")

Receiver = Callable[..., Any]

#: How many receivers the task signals have: a worker reads it once per task, and skips
#: building the signals' arguments while it is 0.
task_receivers = 0


class Signal:
    """A named list of receivers, optionally filtered by sender."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._receivers: list[tuple[Receiver, Any]] = []

    def __repr__(self) -> str:
        return f"<Signal {self.name}: {len(self._receivers)} receivers>"

    def __bool__(self) -> bool:
        # The worker checks this before building a signal's arguments: no cost unused.
        return bool(self._receivers)

    def connect(self, receiver: Receiver | None = None, *, sender: Any = None,
                weak: bool = False, **_: Any) -> Any:
        """Add a receiver: ``@signal.connect`` or ``@signal.connect(sender=add)``.

        ``sender`` limits it to one task (or worker); ``weak`` is accepted for Celery's
        signature (receivers are held strongly).
        """
        if receiver is None:
            return lambda fn: self.connect(fn, sender=sender)
        if (receiver, sender) not in self._receivers:
            self._receivers.append((receiver, sender))
            self._counted(+1)
        return receiver

    def _counted(self, change: int) -> None:
        global task_receivers
        if self.name.startswith("task_"):
            task_receivers += change

    def disconnect(self, receiver: Receiver, *, sender: Any = None) -> None:
        """Remove a receiver (no error if it was not connected)."""
        kept = [(r, s) for r, s in self._receivers if not (r is receiver and s is sender)]
        self._counted(len(kept) - len(self._receivers))
        self._receivers = kept

    async def send(self, sender: Any, **kwargs: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver for ``sender``; returns (receiver, result or exception)."""
        replies: list[tuple[Receiver, Any]] = []
        for receiver, wanted in list(self._receivers):
            if wanted is not None and wanted is not sender:
                continue
            try:
                reply = receiver(sender=sender, signal=self, **kwargs)
                if inspect.isawaitable(reply):
                    reply = await reply
            except Exception as exc:  # a receiver never breaks the worker
                log.exception("signal %s: receiver %r raised", self.name, receiver)
                reply = exc
            replies.append((receiver, reply))
        return replies


task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_failure = Signal("task_failure")
task_retry = Signal("task_retry")
task_revoked = Signal("task_revoked")
worker_init = Signal("worker_init")
worker_ready = Signal("worker_ready")
worker_shutting_down = Signal("worker_shutting_down")
worker_shutdown = Signal("worker_shutdown")
