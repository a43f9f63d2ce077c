"""Flask: every task runs inside the Flask application context.

Celery's Flask recipe subclasses ``Task`` so that ``__call__`` runs under
``flask_app.app_context()``. Here the documented hook does it, without subclassing::

    from flask import Flask, current_app
    from aioqueue import AioQueue
    from aioqueue.contrib.flask import init_app

    app = Flask(__name__)
    aioqueue_app = init_app(AioQueue(app.name, broker=...), app)

    @aioqueue_app.task
    def greet(name: str) -> str:
        return f"{current_app.config['GREETING']}, {name}"   # current_app works here

For a ``def`` task the context is pushed in the worker thread that runs it; for an
``async def`` task around the coroutine (Flask keeps its context in context variables, and
each task runs in its own asyncio task, so concurrent tasks never see each other's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from flask import Flask

    from ..app import AioQueue
    from ..task import Task

__all__ = ("EXTENSION_NAME", "init_app")

#: The key of ``flask_app.extensions`` that holds the aioqueue app.
EXTENSION_NAME = "aioqueue"


def init_app(aioqueue_app: AioQueue, flask_app: Flask) -> AioQueue:
    """Run every task of ``aioqueue_app`` inside ``flask_app.app_context()``.

    Stores the aioqueue app in ``flask_app.extensions["aioqueue"]`` (so views can reach it
    as ``current_app.extensions["aioqueue"]``) and returns it. Calling it again for the
    same pair changes nothing.
    """
    installed: object = flask_app.extensions.get(EXTENSION_NAME)
    if installed is aioqueue_app:
        return aioqueue_app

    def app_context(task: Task[Any, Any], request: Any) -> AbstractContextManager[Any]:
        return flask_app.app_context()

    aioqueue_app.task_context(app_context)
    flask_app.extensions[EXTENSION_NAME] = aioqueue_app
    return aioqueue_app
