"""The demo app's tasks, found by ``app.autodiscover_tasks()`` as Celery finds them.

``@shared_task`` functions are aioqueue (Celery-style) tasks; the ``@task`` functions at
the end belong to Django's own Tasks framework, which the aioqueue workers also run
(``TASKS`` in settings.py).
"""

import sqlite3
import time
from datetime import timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from aioqueue import Task, shared_task

from .models import Order

try:
    from django.tasks import task  # Django 6
except ImportError:
    from django_tasks import task  # the backport, on Django 5.2


@shared_task
def add(x: int, y: int) -> int:
    return x + y


@shared_task(bind=True)
def send_confirmation(self: Task[..., int], order_id: int) -> int:
    """Sent with ``delay_on_commit``: it runs only once the order's transaction committed,
    so the row is always there (and never for a rolled-back order)."""
    Order.objects.filter(pk=order_id).update(confirmed=True,
                                             confirmation_task_id=self.request.id)
    return order_id


@shared_task
def expire_unconfirmed_orders(older_than_s: float = 3600) -> int:
    """Periodic (``CELERY_BEAT_SCHEDULE``): delete orders never confirmed."""
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    deleted, _ = Order.objects.filter(confirmed=False, created_at__lt=cutoff).delete()
    return deleted


#: Database connections opened by earlier runs of the task below, in this worker process.
_connections: list[Any] = []


@shared_task
def db_connections_left_open() -> int:
    """How many database connections opened by earlier runs of this task are still open.

    0: aioqueue's Django fix-up calls ``close_old_connections()`` after every task run, in
    the thread that ran it, so with ``CONN_MAX_AGE = 0`` (the default) each run's connection
    is closed after it, as after each request. (SQLite: a closed connection refuses SQL.)
    """
    still_open = 0
    for raw in _connections:
        try:
            raw.execute("SELECT 1")
        except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
            continue
        still_open += 1
    connection.ensure_connection()
    _connections.append(connection.connection)
    return still_open


# -- Django's Tasks framework ---------------------------------------------------------------
@task(takes_context=True)
def count_orders(context: Any, confirmed: bool = True) -> dict[str, int]:
    """``count_orders.enqueue()``: a Django task, run by an aioqueue worker."""
    return {"orders": Order.objects.filter(confirmed=confirmed).count(),
            "attempt": context.attempt}


@task
async def greet(name: str) -> str:
    """An ``async def`` Django task: runs on the worker's event loop."""
    return f"hello {name} at {time.strftime('%H:%M')}"
