"""The ``aioqueue`` command, run as users run it: in subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

HERE = Path(__file__).parent
CLI_APP = """
import os
from aioqueue import AioQueue

app = AioQueue("cliapp", broker=os.environ["CLI_REDIS_URL"],
               broker_connection_timeout=float(os.environ.get("CLI_CONNECT_TIMEOUT", "10")))

@app.task(name="cliapp.add")
async def add(x, y):
    return x + y

@app.task(name="cliapp.greet")
async def greet(name, punctuation="!"):
    return f"hello {name}{punctuation}"

not_an_app = 42
"""


@pytest.fixture
def project(tmp_path: Path, redis_url: str) -> tuple[Path, dict[str, str]]:
    (tmp_path / "cliapp.py").write_text(CLI_APP)
    # A password in the URL: the banner must never print it.
    url = redis_url.replace("redis://", "redis://:s3cret-pw@")
    env = {**os.environ, "CLI_REDIS_URL": redis_url, "BANNER_URL": url}
    return tmp_path, env


def run_cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 30
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aioqueue", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def start_worker(cwd: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aioqueue", "worker", "cliapp:app", *extra],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def reap(process: subprocess.Popen[str], *readers: LineReader) -> str:
    """Kill the process if it still runs, close its pipes; returns what stdout held."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=15)
    for reader in readers:
        reader.close()
    out = process.stdout.read() if process.stdout and not process.stdout.closed else ""
    for stream in (process.stdout, process.stderr):
        if stream is not None and not stream.closed:
            stream.close()
    return out


class LineReader:
    """Collects a pipe's lines in a thread, so tests can wait for a line without polling."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._seen = 0
        self._changed = threading.Condition()
        self._stream = stream
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        """After the process exited: wait for the last lines, then close the pipe."""
        self._thread.join(timeout=10)
        self._stream.close()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, needle: str, timeout: float = 15) -> list[str]:
        """Lines up to and including the next one containing ``needle``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(self._seen, len(self.lines)):
                    if needle in self.lines[index]:
                        got = self.lines[self._seen:index + 1]
                        self._seen = index + 1
                        return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{needle!r} not seen; got {self.lines}")
                self._changed.wait(remaining)


def test_worker_serves_then_stops_gracefully_on_sigterm(project: tuple[Path, dict[str, str]]
                                                        ) -> None:
    cwd, env = project
    env = {**env, "CLI_REDIS_URL": env["BANNER_URL"].replace(":s3cret-pw@", "@")}
    worker = start_worker(cwd, env, "-c", "7", "-Q", "default,extra", "-l", "info")
    assert worker.stderr is not None
    log = LineReader(worker.stderr)
    try:
        log.wait_for("consuming")
        called = run_cli(["call", "cliapp:app", "cliapp.add", "2", "3", "--wait"], cwd, env)
        assert called.returncode == 0, called.stderr
        task_id, result = called.stdout.split()
        assert result == "5"
        lines = log.wait_for("succeeded in")
        assert any(task_id in line and "received" in line for line in lines)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    finally:
        banner = reap(worker, log)
    assert "concurrency:  7" in banner
    assert "queues:       default, extra" in banner
    assert ". cliapp.add" in banner and ". cliapp.greet" in banner


def test_banner_hides_the_password(project: tuple[Path, dict[str, str]]) -> None:
    cwd, env = project
    env = {**env, "CLI_REDIS_URL": env["BANNER_URL"]}
    worker = start_worker(cwd, env, "-l", "info")
    assert worker.stderr is not None
    log = LineReader(worker.stderr)
    try:
        log.wait_for("consuming")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    finally:
        out = reap(worker, log)
    assert "redis://:***@127.0.0.1" in out
    assert "s3cret-pw" not in out + "".join(log.lines)


def test_call_parses_json_args_and_kwargs(project: tuple[Path, dict[str, str]]) -> None:
    cwd, env = project
    worker = start_worker(cwd, env)
    try:
        called = run_cli(["call", "cliapp:app", "cliapp.greet", "world",
                          "--kwargs", '{"punctuation": "?"}', "--wait", "--timeout", "20"],
                         cwd, env)
        assert called.returncode == 0, called.stderr
        assert called.stdout.splitlines()[-1] == '"hello world?"'
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    finally:
        reap(worker)


def test_call_with_countdown_and_queue_enqueues_without_waiting(
    project: tuple[Path, dict[str, str]]
) -> None:
    cwd, env = project
    called = run_cli(["call", "cliapp:app", "cliapp.add", "1", "2", "--countdown", "60",
                      "--queue", "later"], cwd, env)
    assert called.returncode == 0, called.stderr
    assert len(called.stdout.strip()) == 36  # a uuid, printed at once
    status = run_cli(["status", "cliapp:app", "-Q", "later"], cwd, env)
    assert status.stdout.strip() == "later: ready=0 delayed=1 dead=0"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing_module:app", "cannot import module 'missing_module'"),
        ("cliapp:nothing", "module 'cliapp' has no attribute 'nothing'"),
        ("cliapp:not_an_app", "cliapp:not_an_app is a int, not an AioQueue"),
        ("no-colon", "is not MODULE:ATTRIBUTE"),
    ],
)
def test_bad_targets_fail_with_one_line_and_exit_2(
    project: tuple[Path, dict[str, str]], target: str, message: str
) -> None:
    cwd, env = project
    result = run_cli(["worker", target], cwd, env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_redis_is_a_clear_error(project: tuple[Path, dict[str, str]]) -> None:
    cwd, env = project
    from aioqueue.testing import free_port

    env = {**env, "CLI_REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0",
           "CLI_CONNECT_TIMEOUT": "1.0"}
    result = run_cli(["call", "cliapp:app", "cliapp.add", "1", "2"], cwd, env, timeout=60)
    assert result.returncode == 1
    assert "cannot reach Redis at redis://:***@127.0.0.1" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_sigterm_while_redis_is_unreachable_stops_at_once(
    project: tuple[Path, dict[str, str]]
) -> None:
    cwd, env = project
    from aioqueue.testing import free_port

    # A long connection timeout: the stop must not wait for it.
    env = {**env, "CLI_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
           "CLI_CONNECT_TIMEOUT": "60"}
    worker = start_worker(cwd, env, "-l", "info")
    assert worker.stderr is not None
    log = LineReader(worker.stderr)
    try:
        log.wait_for("connecting to")
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
        assert time.monotonic() - started < 5
        log.wait_for("stopped before it could reach the broker")
    finally:
        reap(worker, log)


def test_processes_supervisor_restarts_a_killed_child(
    project: tuple[Path, dict[str, str]]
) -> None:
    cwd, env = project
    supervisor = start_worker(cwd, env, "--processes", "2", "-l", "info")
    assert supervisor.stderr is not None
    log = LineReader(supervisor.stderr)
    try:
        seen = log.wait_for("consuming", 20) + log.wait_for("consuming", 20)
        pids = [int(line.split("worker ")[1].split(".")[1]) for line in seen
                if "consuming" in line]
        assert len(set(pids)) == 2
        os.kill(pids[0], signal.SIGKILL)
        restarted = log.wait_for("consuming", 20)
        assert "restarting" in "".join(restarted)
        called = run_cli(["call", "cliapp:app", "cliapp.add", "20", "22", "--wait",
                          "--timeout", "20"], cwd, env)
        assert called.stdout.split()[-1] == "42"
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=20) == 0
    finally:
        reap(supervisor, log)


SLOW_APP = """
import os
from aioqueue import AioQueue

app = AioQueue("slowapp", broker=os.environ["CLI_REDIS_URL"], shutdown_timeout=10)

@app.task(name="slowapp.work")
async def work(seconds):
    import asyncio
    await asyncio.sleep(seconds)
    return os.getpid()
"""


def test_a_signal_to_the_whole_process_group_drains_supervised_children(
    project: tuple[Path, dict[str, str]]
) -> None:
    # Ctrl-C in a terminal and systemd's KillMode=control-group signal every process of the
    # group: each child gets it directly and again from the supervisor. That must count as
    # one signal (drain), not two (hand running tasks back at once). Review B10.
    cwd, env = project
    (cwd / "slowapp.py").write_text(SLOW_APP)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "aioqueue", "worker", "slowapp:app", "--processes", "2",
         "-c", "1", "-l", "info"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, so killpg spares pytest
    )
    assert supervisor.stderr is not None
    log = LineReader(supervisor.stderr)
    try:
        log.wait_for("consuming", 20)
        log.wait_for("consuming", 20)
        called = [run_cli(["call", "slowapp:app", "slowapp.work", "2.5"], cwd, env)
                  for _ in range(2)]
        ids = [c.stdout.split()[-1] for c in called]
        log.wait_for("received", 20)
        log.wait_for("received", 20)
        os.killpg(supervisor.pid, signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0
        text = "".join(log.lines)
        assert "handed back" not in text and "stopping now" not in text, text
        check = subprocess.run(
            [sys.executable, "-c",
             "import asyncio, sys\n"
             "from slowapp import app\n"
             "async def main():\n"
             "    for i in sys.argv[1:]:\n"
             "        print((await app.AsyncResult(i).state()).value)\n"
             "    await app.close()\n"
             "asyncio.run(main())\n", *ids],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=30, check=False)
        assert check.stdout.split() == ["SUCCESS", "SUCCESS"], check.stderr
    finally:
        reap(supervisor, log)
