"""``aioqueue worker --processes N``: N single-loop worker processes under a supervisor.

Each child is the same command line with ``--processes`` removed (a supervised child always
runs one loop); a child that dies is restarted (with a short back-off so a crash loop does
not spin). The first SIGTERM/SIGINT is forwarded so every child shuts down gracefully; a
second one makes the supervisor send SIGQUIT, which children take as "stop now" (hand
running tasks back); a third kills them.

Children run with ``AIOQUEUE_SUPERVISED=1``, where SIGTERM/SIGINT only ever mean "stop
gracefully": a signal sent to the whole process group (Ctrl-C in a terminal, systemd's
``KillMode=control-group``, ``kill -TERM -PGID``) reaches each child twice, directly and
forwarded, and must count once. The supervisor exits 0 when all children exited after a
signal.

Under ``--burst`` a child that exits 0 has drained the queues: it is not restarted, and
the supervisor exits 0 once every child has.

Recycling, as Celery's ``--max-tasks-per-child`` and ``--max-memory-per-child``:

* a child that has run its tasks stops fetching, finishes what it runs and exits with
  :data:`RECYCLE_EXIT_CODE`; the supervisor starts a new one at once (no back-off, no
  warning: this is the plan, not a crash);
* every :data:`MEMORY_POLL_S` the supervisor reads each child's resident memory from
  ``/proc/<pid>/statm``; a child over the limit gets SIGTERM (it drains gracefully) and its
  replacement starts at once, so N children always fetch.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

__all__ = ("MEMORY_POLL_S", "RECYCLE_EXIT_CODE", "rss_kb", "supervise")

log = logging.getLogger("aioqueue.supervisor")

#: How a supervised child says "I ran my --max-tasks-per-child tasks: replace me"
#: (EX_TEMPFAIL: distinct from a crash, which is restarted with a back-off and a warning).
RECYCLE_EXIT_CODE = 75
#: How often children's resident memory is read for --max-memory-per-child.
MEMORY_POLL_S = 1.0

Child = subprocess.Popen[bytes]


def _child_argv(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg in ("--processes", "-p"):
            skip = True
            continue
        if arg.startswith("--processes=") or (arg.startswith("-p") and arg[2:].lstrip("=")
                                              .isdigit()):
            continue
        out.append(arg)
    return [sys.executable, "-m", "aioqueue", *out]


def rss_kb(pid: int) -> int | None:
    """Resident memory of ``pid`` in KiB from ``/proc/<pid>/statm``; None if unreadable."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


class _Supervisor:
    def __init__(self, command: list[str], processes: int, max_tasks: int | None,
                 max_memory_kb: int | None, burst: bool) -> None:
        self.command = command
        self.burst = burst
        self.env = {**os.environ, "AIOQUEUE_SUPERVISED": "1"}
        self.processes = processes
        self.max_tasks = max_tasks
        self.max_memory_kb = max_memory_kb
        #: One running child per slot; ``retiring`` holds children told to stop (memory)
        #: whose replacement already runs, until they have drained.
        self.slots: list[Child] = []
        self.retiring: list[Child] = []
        #: Slots whose child drained the queues and exited 0 under --burst: not restarted.
        self.done: set[int] = set()
        self.signals_seen = 0
        #: pid -> how many stop levels that child has been sent (1 SIGTERM, 2 SIGQUIT, 3 KILL).
        self.sent: dict[int, int] = {}
        self.restarts = 0

    @property
    def stopping(self) -> bool:
        return self.signals_seen > 0

    def _start(self) -> Child:
        return subprocess.Popen(self.command, env=self.env)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals_seen += 1
        self._forward()

    def _forward(self) -> None:
        """Send every live child the stop level asked for, once (also children started
        while the signal arrived, which the handler could not see yet)."""
        level = self.signals_seen
        to_child = {1: signal.SIGTERM, 2: signal.SIGQUIT}.get(level, signal.SIGKILL)
        for child in [*self.slots, *self.retiring]:
            if self.sent.get(child.pid, 0) < level and child.poll() is None:
                self.sent[child.pid] = level
                child.send_signal(to_child)

    def _replace(self, index: int) -> None:
        old = self.slots[index]
        self.sent.pop(old.pid, None)
        code = old.returncode
        if code == RECYCLE_EXIT_CODE:
            log.info("worker process %d ran its %s tasks (max tasks per child): replacing it",
                     old.pid, self.max_tasks if self.max_tasks is not None else "allowed")
        else:
            self.restarts += 1
            log.warning("worker process %d exited with %s; restarting", old.pid, code)
            time.sleep(min(5.0, 0.1 * self.restarts))
            if self.stopping:
                return
        self.slots[index] = self._start()
        if self.stopping:  # a signal came while it started
            self._forward()

    def _check_memory(self) -> None:
        assert self.max_memory_kb is not None
        for index, child in enumerate(self.slots):
            if index in self.done or child.poll() is not None:
                continue
            used = rss_kb(child.pid)
            if used is None or used <= self.max_memory_kb:
                continue
            log.info("worker process %d uses %d KiB, over the max memory per child of %d KiB: "
                     "replacing it", child.pid, used, self.max_memory_kb)
            self.sent[child.pid] = 1
            child.send_signal(signal.SIGTERM)  # drains gracefully
            self.retiring.append(child)
            self.slots[index] = self._start()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        memory = self.max_memory_kb
        if memory is not None and rss_kb(os.getpid()) is None:
            log.warning("--max-memory-per-child needs /proc/<pid>/statm (Linux): ignored")
            memory = None
        self.slots = [self._start() for _ in range(self.processes)]
        next_memory_check = time.monotonic() + MEMORY_POLL_S
        while True:
            if self.stopping:
                self._forward()
            alive = False
            for index, child in enumerate(self.slots):
                if index in self.done:
                    continue
                if child.poll() is None:
                    alive = True
                elif self.burst and child.returncode == 0:
                    self.done.add(index)  # drained: --burst ends when every slot has
                elif not self.stopping:
                    self._replace(index)
                    alive = True
            for child in self.retiring:
                if child.poll() is not None:
                    self.sent.pop(child.pid, None)
            self.retiring = [c for c in self.retiring if c.returncode is None]
            alive = alive or bool(self.retiring)
            if not alive:
                return 0
            now = time.monotonic()
            if memory is not None and not self.stopping and now >= next_memory_check:
                next_memory_check = now + MEMORY_POLL_S
                self._check_memory()
            time.sleep(0.1)


def supervise(argv: list[str], processes: int, *, max_tasks: int | None = None,
              max_memory_kb: int | None = None, burst: bool = False) -> int:
    """Run and babysit ``processes`` children; returns the exit code.

    ``max_tasks`` is only reported here (each child stops itself after that many tasks and
    exits with :data:`RECYCLE_EXIT_CODE`); ``max_memory_kb`` is enforced here. With
    ``burst``, a child that exits 0 has drained the queues and is not restarted; the
    supervisor returns once all have.
    """
    return _Supervisor(_child_argv(argv), processes, max_tasks, max_memory_kb, burst).run()
