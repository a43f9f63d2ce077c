"""``aioqueue worker --processes N``: N single-loop worker processes under a supervisor.

Each child is the same command line with ``--processes 1``; a child that dies is restarted
(with a short back-off so a crash loop does not spin). The first SIGTERM/SIGINT is forwarded
so every child shuts down gracefully; a second one makes the supervisor send SIGQUIT, which
children take as "stop now" (hand running tasks back); a third kills them.

Children run with ``AIOQUEUE_SUPERVISED=1``, where SIGTERM/SIGINT only ever mean "stop
gracefully": a signal sent to the whole process group (Ctrl-C in a terminal, systemd's
``KillMode=control-group``, ``kill -TERM -PGID``) reaches each child twice, directly and
forwarded, and must count once. The supervisor exits 0 when all children exited after a
signal.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

__all__ = ("supervise",)

log = logging.getLogger("aioqueue.supervisor")


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
        if arg.startswith("--processes="):
            continue
        out.append(arg)
    return [sys.executable, "-m", "aioqueue", *out]


def supervise(argv: list[str], processes: int) -> int:
    """Run and babysit ``processes`` children; returns the exit code."""
    command = _child_argv(argv)
    env = {**os.environ, "AIOQUEUE_SUPERVISED": "1"}
    children: list[subprocess.Popen[bytes]] = []
    stopping = False
    signals_seen = 0

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping, signals_seen
        stopping = True
        signals_seen += 1
        to_children = {1: signal.SIGTERM, 2: signal.SIGQUIT}.get(signals_seen, signal.SIGKILL)
        for child in children:
            if child.poll() is None:
                child.send_signal(to_children)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    children = [subprocess.Popen(command, env=env) for _ in range(processes)]
    restarts = 0
    while True:
        alive = False
        for index, child in enumerate(children):
            code = child.poll()
            if code is None:
                alive = True
                continue
            if not stopping:
                restarts += 1
                log.warning("worker process %d exited with %s; restarting", child.pid, code)
                time.sleep(min(5.0, 0.1 * restarts))
                children[index] = subprocess.Popen(command, env=env)
                alive = True
        if not alive:
            return 0
        time.sleep(0.1)
