"""Worker subprocess management, CPU accounting, completion polling and statistics."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

# How often the harness polls a library's queue/result state while waiting for "all done".
# 50 ms keeps the polling cost on redis negligible while adding at most 50 ms to a run.
POLL_INTERVAL = 0.05

# Every worker the harness started and has not yet reaped; the signal/atexit handler in
# run.py kills exactly these process groups (never anything matched by name).
_LIVE: dict[int, WorkerProcess] = {}


class WorkerProcess:
    """One library's worker CLI, in its own session so its whole tree can be stopped."""

    def __init__(self, label: str, cmd: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.label = label
        self.cmd = list(cmd)
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        #: time.time() just before Popen (the start-up row: spawn -> first task).
        self.spawned_at = 0.0

    def start(self, cwd: Path) -> WorkerProcess:
        log = self.log_path.open("wb")
        try:
            self.spawned_at = time.time()
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg reaches prefork children
            )
        finally:
            log.close()
        _LIVE[self.proc.pid] = self
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.label} worker exited ({self.proc.returncode}): {self.tail()}"
            )

    def tail(self) -> str:
        """Last meaningful log line: the one-line reason shown in the results table."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1].strip()[:200] if lines else "(empty log)"

    def cpu_seconds(self) -> float:
        """user+system CPU of the worker and all its descendants (celery/taskiq fork)."""
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return math.nan
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def stop(self, grace: float = 8.0) -> None:
        if self.proc is None:
            return
        pid = self.proc.pid
        if self.proc.poll() is None:
            # SIGTERM is every peer's documented "shut down" signal; the process group
            # also covers celery's prefork pool and taskiq's worker child.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        # Whatever is left in the group (including orphaned pool children) is killed.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        _LIVE.pop(pid, None)


def kill_all_workers() -> None:
    """Emergency cleanup (Ctrl-C, SIGTERM, crash): kill only the groups we started."""
    for pid in list(_LIVE):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _LIVE.pop(pid, None)


def proc_cpu_seconds(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return math.nan
    return t.user + t.system


async def wait_until(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    alive: Callable[[], None] | None = None,
) -> None:
    """Poll ``predicate`` every POLL_INTERVAL until true; raise on timeout or dead worker."""
    deadline = time.perf_counter() + timeout
    while not await predicate():
        if alive is not None:
            alive()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL)


class KeysPresent:
    """Cheap "are all N results stored?" check for libraries that keep one key per result.

    Tasks finish roughly in FIFO order, so we only EXISTS-check the oldest still-missing
    chunk and advance past fully present chunks: each poll touches at most a few chunks,
    not all N keys (which would put the harness's own load on redis).
    """

    CHUNK = 500

    def __init__(self, redis: Any, keys: Sequence[str]) -> None:
        self.redis = redis
        self.remaining = list(keys)

    async def __call__(self) -> bool:
        while self.remaining:
            chunk = self.remaining[: self.CHUNK]
            if await self.redis.exists(*chunk) != len(chunk):
                return False
            del self.remaining[: self.CHUNK]
        return True


class KeysRemaining(KeysPresent):
    """How many of ``keys`` do not exist yet (for drains polled every few ms): the fully
    present chunks are skipped as in KeysPresent, the current one is counted."""

    async def count(self) -> int:
        while self.remaining:
            chunk = self.remaining[: self.CHUNK]
            found = int(await self.redis.exists(*chunk))
            if found != len(chunk):
                return len(self.remaining) - found
            del self.remaining[: self.CHUNK]
        return 0


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 100 samples is the 99th value)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
