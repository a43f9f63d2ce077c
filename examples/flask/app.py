"""A Flask app whose tasks run on aioqueue, each inside the Flask app context.

Celery's Flask recipe, without its ``Task`` subclass: ``init_app`` registers the app context
with ``aioqueue_app.task_context``. Run it (see README.md)::

    aioqueue worker app:aioqueue_app -l info     # the worker
    flask --app app run                           # the web app
"""

import os

from flask import Flask, current_app, request

from aioqueue import AioQueue, State
from aioqueue.contrib.flask import init_app

app = Flask(__name__)
app.config.from_mapping(
    GREETING="Hello",
    AIOQUEUE={
        "broker_url": os.environ.get("AIOQUEUE_BROKER", "redis://localhost:6379/0"),
        "result_expires": 3600,
    },
)
aioqueue_app = init_app(AioQueue(app.name, **app.config["AIOQUEUE"]), app)


@aioqueue_app.task
def add(x: int, y: int) -> int:
    return x + y


@aioqueue_app.task
def greet(name: str) -> str:
    """A ``def`` task (a worker thread) using ``current_app``: the app context is pushed."""
    return f"{current_app.config['GREETING']}, {name}! (from {current_app.name})"


@aioqueue_app.task
async def app_config(key: str) -> str:
    """An ``async def`` task sees the app context too."""
    return str(current_app.config[key])


@app.post("/add")
def add_view() -> tuple[dict[str, str], int]:
    result = add.delay(request.args.get("x", type=int), request.args.get("y", type=int))
    return {"task_id": result.id}, 202


@app.post("/greet/<name>")
def greet_view(name: str) -> tuple[dict[str, str], int]:
    result = greet.delay(name)
    return {"task_id": result.id}, 202


@app.get("/tasks/<task_id>")
def task_status(task_id: str) -> dict[str, object]:
    """Any task's state, read in a later request: ``AsyncResult(task_id)``, as Celery's."""
    result = aioqueue_app.AsyncResult(task_id)
    state = result.state
    return {
        "task_id": task_id,
        "state": str(state),
        "result": result.result if state == State.SUCCESS else None,
        "error": repr(result.result) if state in (State.FAILURE, State.REVOKED) else None,
    }
