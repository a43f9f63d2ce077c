"""A throwaway redis-server on a free loopback port, owned and stopped by the harness."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


def free_loopback_port() -> int:
    # Bind to port 0 so the kernel picks a free one; the tiny race before redis binds
    # it is acceptable for a local benchmark.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``with RedisServer() as r: r.url`` starts redis-server and always stops it.

    Persistence is disabled (``--save "" --appendonly no``) so disk I/O never shows up
    in the numbers, and the server only listens on 127.0.0.1.
    """

    def __init__(self, binary: str = "redis-server", extra_args: tuple[str, ...] = (),
                 port: int = 0) -> None:
        # /usr/bin is the Debian package's location, for PATHs that lack it.
        found = shutil.which(binary) or shutil.which(binary, path="/usr/bin")
        if not found:
            raise RuntimeError(f"{binary} not found on PATH")
        self.binary = found
        self.extra_args = extra_args  # e.g. cluster mode (benchmarks/_cluster.py)
        self.fixed_port = port  # 0: a free one at start()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        # "Redis server v=7.0.15 sha=..." -> "7.0.15"
        for part in out.split():
            if part.startswith("v="):
                return part[2:]
        return out.strip()

    def start(self, timeout: float = 10.0) -> RedisServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="aioqueue-bench-redis-")
        self.port = self.fixed_port or free_loopback_port()
        log = Path(self._tmp.name) / "redis.log"
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._tmp.name,
            "--logfile", str(log),
            "--protected-mode", "yes",
            *self.extra_args,
        ]  # fmt: skip
        # Own session: a terminal Ctrl-C reaches only the harness, which then stops
        # redis itself after the workers (so no worker sees redis vanish first).
        self.proc = subprocess.Popen(cmd, cwd=self._tmp.name, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited early: {log.read_text()[-500:]}")
            if self._ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer PING in time")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
