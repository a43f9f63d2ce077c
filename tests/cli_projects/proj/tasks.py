"""Registered when the worker (or ``aioqueue call``) imports the app's ``include``."""

import os

from proj.celery import app


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
async def greet(name: str, punctuation: str = "!") -> str:
    return f"hello {name}{punctuation}"


@app.task
async def whoami() -> int:
    """The pid of the worker process that ran it."""
    return os.getpid()
