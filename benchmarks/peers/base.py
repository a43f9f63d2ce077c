"""The small interface every library adapter implements.

Task modules (``<lib>_tasks.py``) are what the library's own worker CLI imports; they read
the redis URL from ``BENCH_REDIS_URL`` (and, where the library has no CLI flag for it, the
concurrency from ``BENCH_CONCURRENCY``). Adapters (``<lib>_peer.py``) drive the library
from the harness process using only its public client API.
"""

from __future__ import annotations

import abc
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

REDIS_URL_ENV = "BENCH_REDIS_URL"
CONCURRENCY_ENV = "BENCH_CONCURRENCY"


def venv_bin(script: str) -> str:
    # Worker CLIs live next to the interpreter running the harness (the bench venv);
    # not resolving symlinks keeps us inside the venv rather than the base python.
    return str(Path(sys.executable).parent / script)


def _no_check() -> None:
    return None


class Peer(abc.ABC):
    """A library under test. One instance per (library, round)."""

    name: str
    #: True when the library has a batch enqueue API (reported as its own row).
    has_batch = False

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        #: Set by the driver to the running worker's liveness check, so waits fail
        #: fast with the worker's last log line instead of running into a timeout.
        self.alive: Callable[[], None] = _no_check

    @abc.abstractmethod
    def worker_cmd(self, concurrency: int | None) -> tuple[list[str], dict[str, str]]:
        """argv of the library's own worker CLI, plus extra env; None = library default."""

    def concurrency_note(self, requested: int | None) -> str:
        """What concurrency the worker really runs with (for the README/results notes)."""
        return "default" if requested is None else str(requested)

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @abc.abstractmethod
    async def enqueue(self, n: int) -> None:
        """Enqueue ``n`` no-op tasks one by one, each awaited (a plain loop)."""

    async def enqueue_batch(self, n: int) -> None:
        raise NotImplementedError

    @abc.abstractmethod
    async def run_noops(self, n: int, timeout: float) -> None:
        """Enqueue ``n`` no-ops with the fastest enqueue API and return when all are done."""

    @abc.abstractmethod
    async def round_trip(self, timeout: float) -> None:
        """Enqueue ``add(1, 2)`` and wait for its result the way the docs show."""

    @abc.abstractmethod
    async def run_sleepy(self, n: int, timeout: float) -> None:
        """Enqueue ``n`` tasks that sleep 50 ms and return when all are done."""


def fresh_import(module: str) -> ModuleType:
    """Import a task module anew, so each round gets a new app/broker object.

    Adapters close their client at the end of a round; re-executing the module avoids
    relying on a closed client being reusable, which not every library promises.
    """
    if module in sys.modules:
        return importlib.reload(sys.modules[module])
    return importlib.import_module(module)
