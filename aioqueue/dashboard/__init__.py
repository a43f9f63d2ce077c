"""A live web dashboard for an aioqueue app: workers, queues, throughput, tasks, failures,
dead letters, schedules and an audit log of the actions taken from it.

Needs the ``dashboard`` extra (Starlette and uvicorn)::

    from aioqueue.dashboard import create_app, serve

    await serve(app, port=5555)                       # or: aioqueue dashboard tasks:app
    api.mount("/tasks", create_app(app, token="..."))  # inside your FastAPI/Starlette app

One page (plain HTML, JS and CSS shipped in the package: no CDN, no build step) reads the
JSON API under ``api/`` and follows ``api/stream`` (Server-Sent Events) for new events and
an overview every 2 seconds, so nothing needs reloading. Everything it shows comes from
:class:`~aioqueue.monitor.Monitor`; task rows come from the events workers record with
``worker_send_task_events`` (``aioqueue worker -E``).
"""

from __future__ import annotations

from ._app import create_app
from ._server import serve

__all__ = ("create_app", "serve")
