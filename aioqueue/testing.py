"""Test helpers users can reuse: a real ``redis-server`` on a free loopback port.

Enabled as a pytest plugin (``pytest_plugins = ("aioqueue.testing",)`` in a conftest, or
``-p aioqueue.testing``; opt-in, so nobody gets these fixture names unasked), it provides
the fixtures

* ``redis_server`` -- one throwaway server per test session (no Docker, no fixed 6379);
* ``redis_url`` -- that server's URL, flushed before each test so tests never see each
  other's keys.

A missing ``redis-server`` binary fails with a message saying how to get one: tests are never
skipped for want of Redis.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ("RedisServer", "free_port", "redis_server", "redis_url")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` child process on a free loopback port, in a temporary directory.

    ``binary`` is the server executable to run: ``redis-server`` on ``PATH`` by default, or
    the path of any server that takes ``redis-server``'s command-line options (another Redis
    version, Valkey's ``valkey-server``).
    """

    def __init__(self, *, port: int | None = None, appendonly: bool = False,
                 extra_args: tuple[str, ...] = (), binary: str | None = None) -> None:
        if binary is None:
            binary = shutil.which("redis-server")
            if binary is None:
                raise RuntimeError(
                    "redis-server not found on PATH: run `make test` (installs it on Debian as "
                    "root) or install it yourself: `apt-get install redis-server` / "
                    "`brew install redis`"
                )
        elif not Path(binary).is_file():
            raise RuntimeError(f"server binary {binary} does not exist")
        self.binary = binary
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = extra_args
        self.dir = Path(tempfile.mkdtemp(prefix="aioqueue-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no", *self.extra_args]
        if self.appendonly:
            args += ["--appendfsync", "always"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise RuntimeError(f"{self.binary} exited with {code}")
            try:
                if self.command("PING") == b"+PONG":
                    return
            except OSError:
                time.sleep(0.02)
        self.stop(kill=True)  # do not leave a half-started server behind
        raise RuntimeError(f"{self.binary} on port {self.port} did not answer in {timeout_s}s")

    def command(self, *parts: str) -> bytes:
        """Send one command and return the first reply line (enough for PING/FLUSHALL)."""
        payload = f"*{len(parts)}\r\n".encode()
        for part in parts:
            raw = part.encode()
            payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as conn:
            conn.sendall(payload)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.strip()

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill``), keeping its directory for a restart."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        """Stop and delete the data directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole test session."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, with every key flushed before the test."""
    if redis_server.command("FLUSHALL") != b"+OK":
        raise RuntimeError("FLUSHALL failed on the test redis-server")
    return redis_server.url


