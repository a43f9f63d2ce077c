"""A real ``aioqueue worker`` subprocess for the example projects' tests."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


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
