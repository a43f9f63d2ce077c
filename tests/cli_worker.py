"""Helpers for tests that run the CLI in subprocesses: a worker, and a pipe read by lines."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def cli_worker(args: list[str], *, cwd: Path, env: dict[str, str],
               log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m aioqueue worker ARGS`` in ``cwd``; stopped with SIGTERM at the end, which
    must end it cleanly (its log is printed, so a failing test shows it)."""
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "aioqueue", "worker", *args],
                                   cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        output = log_path.read_text(errors="replace")
        print(output)
        assert code == 0, f"worker exited {code}:\n{output}"


class Lines:
    """A pipe's lines, collected in a thread, so a test waits for a line instead of sleeping."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._seen = 0
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, needle: str, timeout: float = 20) -> str:
        """The next line (after the last one returned) containing ``needle``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(self._seen, len(self.lines)):
                    if needle in self.lines[index]:
                        self._seen = index + 1
                        return self.lines[index]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{needle!r} not seen; got {''.join(self.lines)}")
                self._changed.wait(remaining)

    def join(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)
