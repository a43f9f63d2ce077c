"""The small interface every library adapter implements.

Task modules (``<lib>_tasks.py``) are what the library's own worker CLI imports; they read
the redis URL from ``BENCH_REDIS_URL`` (and, where the library has no CLI flag for it, the
concurrency from ``BENCH_CONCURRENCY``). Adapters (``<lib>_peer.py``) drive the library
from the harness process using only its public client API.
"""

from __future__ import annotations

import abc
import importlib
import queue
import sys
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from types import ModuleType
from typing import Any

REDIS_URL_ENV = "BENCH_REDIS_URL"
CONCURRENCY_ENV = "BENCH_CONCURRENCY"
#: Concurrency of the default-worker phases, for every library that has a setting (arq and
#: SAQ default to 10, streaq to 16, docket to 10: set to 100 like taskiq's default).
DEFAULT_CONCURRENCY = 100


class NotSupported(Exception):
    """The library's API has no way to do what a row measures (the cell shows "—")."""


def venv_bin(script: str) -> str:
    # Worker CLIs live next to the interpreter running the harness (the bench venv);
    # not resolving symlinks keeps us inside the venv rather than the base python.
    return str(Path(sys.executable).parent / script)


def _no_check() -> None:
    return None


class DaemonThreads(Executor):
    """A fixed pool of daemon threads for the sync clients (Celery, Dramatiq).

    Unlike ThreadPoolExecutor, whose threads are joined on shutdown and at interpreter
    exit, a thread stuck inside a library call (seen: Celery's AsyncResult.__del__ run by
    the GC inside a pub/sub call of the same connection, a self-deadlock) can block
    neither close() nor the harness's exit; the failing row gets its timeout error.
    """

    def __init__(self, threads: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue())
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, lambda: fn(*args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # Never joins: idle threads exit on the sentinel, a stuck one dies with the process.
        for _ in self._threads:
            self._jobs.put(None)


class Peer(abc.ABC):
    """A library under test. One instance per (library, round)."""

    name: str
    #: True when the library has a batch enqueue API (reported as its own row).
    has_batch = False
    #: Awaited handles per run of the producer-memory row; None: the library has no
    #: awaitable result handle (a sync client would need a thread per waiting handle).
    memory_handles: int | None = 1_000
    #: Why the memory row is "—" when memory_handles is None.
    memory_note = "no awaitable result handle: a sync client blocks a thread per waiting result"

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

    # -- the scenario rows (benchmarks/_scenarios.py) ---------------------------------------
    async def concurrent_round_trip(self, timeout: float) -> None:
        """A round trip that many producer coroutines run at once (closed-loop row).
        Sync clients override it to use a thread pool as wide as the producers."""
        await self.round_trip(timeout)

    async def send_noop(self) -> None:
        """One no-op, for the paced background producers; must not queue behind
        ``round_trip`` (sync clients use a thread of its own)."""
        await self.enqueue(1)

    async def before_fill(self) -> None:
        """Called after FLUSHALL with no worker running, before ``fill``."""
        return None

    @abc.abstractmethod
    async def fill(self, task: str, n: int, payload: str | None = None) -> None:
        """With no worker running, enqueue ``n`` runs of ``task`` (``noop``, ``big`` with
        ``payload``, or ``first_run``) with the fastest enqueue API; ``remaining()`` then
        watches them."""

    @abc.abstractmethod
    async def remaining(self) -> int:
        """How many tasks of the last ``fill`` are not done yet (the cheapest exact
        signal the library's redis keys give, as in run_noops)."""

    async def waiting_handles(self, n: int, timeout: float) -> list[Awaitable[Any]]:
        """Enqueue ``n`` no-ops and return one awaitable per task that resolves when it
        is done, the library's documented way to wait for a result (memory row)."""
        raise NotSupported("no awaitable result handle (sync client)")


def fresh_import(module: str) -> ModuleType:
    """Import a task module anew, so each round gets a new app/broker object.

    Adapters close their client at the end of a round; re-executing the module avoids
    relying on a closed client being reusable, which not every library promises.
    """
    if module in sys.modules:
        return importlib.reload(sys.modules[module])
    return importlib.import_module(module)
