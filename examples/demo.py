"""aioqueue end to end: Redis, a CLI worker, a FastAPI service and real HTTP traffic.

``make demo`` (or ``.venv/bin/python examples/demo.py``) does, on loopback only:

1. starts a throwaway ``redis-server`` on a free port;
2. starts a worker the way you would in production: ``aioqueue worker tasks:app -c 100``;
3. serves ``fastapi_app:api`` with uvicorn on a free port;
4. calls ``POST /add`` a few times (each handler enqueues and awaits the result);
5. fires a batch of concurrent ``POST /reports/{n}`` (answered 202 at once), then polls
   ``GET /tasks/{id}`` until every report is done, with a progress bar;
6. enqueues from this script too (a thread-run ``def`` task, a bound task that retries,
   a ``delay_many`` batch) and runs ``aioqueue call tasks:app examples.add 2 3 --wait``;
7. stops everything it started (also on failure or Ctrl-C) and shows the worker's log.

Exits 0 on success; otherwise 1 with the reason (130 on Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from aioqueue.testing import RedisServer, free_port

HERE = Path(__file__).resolve().parent
BATCH = int(os.environ.get("DEMO_BATCH", "200"))
STARTUP_TIMEOUT_S = 20.0
BATCH_TIMEOUT_S = 30.0
#: Connections to the API. 20 keep the batch concurrent without making uvicorn (one process,
#: pure-Python HTTP parsing) juggle hundreds of fresh connections: more is slower, not faster.
HTTP_CONNECTIONS = 20
console = Console(highlight=False)


class DemoError(Exception):
    """A step of the demo did not do what it should; the message says which."""


# -- processes --------------------------------------------------------------------------------
def spawn(name: str, args: list[str], env: dict[str, str], log: IO[bytes],
          stack: contextlib.ExitStack) -> subprocess.Popen[bytes]:
    """Start a child in its own session (Ctrl-C reaches only us: we stop it, in order)."""
    proc = subprocess.Popen(args, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    stack.callback(stop, name, proc)
    return proc


def stop(name: str, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int:
    """SIGTERM (a graceful stop for both the worker and uvicorn), then SIGKILL if need be."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            console.print(f"[red]{name} did not stop in {timeout_s:g}s: killing it")
            proc.kill()
            proc.wait()
    return proc.returncode


def tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return []


def shorten_log_line(line: str) -> str:
    """``[2026-01-01 12:00:00,123: INFO/MainProcess] Task t[<uuid>] ...`` -> fits a terminal."""
    line = re.sub(r"^\[\S+ (\S+): (\w+)/\w+\]", r"\1 \2", line)
    return re.sub(r"\[([0-9a-f]{8})-[0-9a-f-]{27}\]", r"[\1…]", line)


def wait_for_log(proc: subprocess.Popen[bytes], log_path: Path, needle: str, what: str) -> None:
    """Wait until the child's log says ``needle``; fail with its log if it dies or hangs."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if needle in log_path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise DemoError(f"{what} exited with code {proc.returncode}:\n"
                            + "\n".join(tail(log_path, 20)))
        time.sleep(0.05)
    raise DemoError(f"{what} not ready after {STARTUP_TIMEOUT_S:g}s:\n"
                    + "\n".join(tail(log_path, 20)))


def wait_for_http(proc: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"uvicorn exited with code {proc.returncode}:\n"
                            + "\n".join(tail(log_path, 20)))
        with contextlib.suppress(httpx.TransportError):
            # Any task id will do: this also makes the API connect to Redis before we time it.
            if httpx.get(f"{base_url}/tasks/warm-up", timeout=2.0).status_code == 200:
                return
        time.sleep(0.05)
    raise DemoError(f"the API at {base_url} did not answer in {STARTUP_TIMEOUT_S:g}s")


def wait_for_dashboard(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"the dashboard exited with code {proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}api/overview", timeout=2.0).status_code == 200:
                return
        time.sleep(0.05)
    raise DemoError(f"the dashboard at {url} did not answer in {STARTUP_TIMEOUT_S:g}s")


# -- HTTP traffic -----------------------------------------------------------------------------
async def call_add(client: httpx.AsyncClient) -> None:
    console.rule("[bold]1. POST /add: the handler enqueues and awaits the result")
    table = Table("call", "result", "task id", "round trip")
    for x, y in [(1, 2), (20, 22), (1_000_000, 234_567)]:
        start = time.perf_counter()
        response = await client.post("/add", params={"x": x, "y": y, "timeout": 10})
        elapsed_ms = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            raise DemoError(f"POST /add answered {response.status_code}: {response.text}")
        body = response.json()
        if body["result"] != x + y:
            raise DemoError(f"add({x}, {y}) returned {body['result']!r}")
        console.print(f"add({x}, {y}) = {body['result']}")
        table.add_row(f"add({x}, {y})", str(body["result"]), body["task_id"],
                      f"{elapsed_ms:.1f} ms")
    console.print(table)


async def wait_report(client: httpx.AsyncClient, task_id: str,
                      slots: asyncio.Semaphore) -> dict[str, Any]:
    """Poll GET /tasks/{id} with back-off until the task is done."""
    delay = 0.02
    deadline = time.monotonic() + BATCH_TIMEOUT_S
    while time.monotonic() < deadline:
        async with slots:
            response = await client.get(f"/tasks/{task_id}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        if body["state"] == "SUCCESS":
            return body
        if body["state"] in ("FAILURE", "REVOKED"):
            raise DemoError(f"task {task_id} ended {body['state']}: {body['error']}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    raise DemoError(f"task {task_id} not done after {BATCH_TIMEOUT_S:g}s")


async def run_batch(client: httpx.AsyncClient) -> None:
    console.rule(f"[bold]2. {BATCH} concurrent POST /reports/{{n}}, then GET /tasks/{{id}}")
    columns = (SpinnerColumn(), TextColumn("{task.description:<10}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    start = time.perf_counter()
    with Progress(*columns, console=console) as progress:
        enqueued = progress.add_task("enqueued", total=BATCH)
        completed = progress.add_task("completed", total=BATCH)

        # All of them run at once; the semaphore only queues them for a free connection
        # here, which is cheaper than thousands of waiters inside httpx's pool.
        slots = asyncio.Semaphore(HTTP_CONNECTIONS)

        async def one(n: int) -> tuple[int, dict[str, Any]]:
            async with slots:
                response = await client.post(f"/reports/{n}")
            if response.status_code != 202:
                raise DemoError(f"POST /reports/{n} answered {response.status_code}")
            progress.advance(enqueued)
            body = await wait_report(client, response.json()["task_id"], slots)
            progress.advance(completed)
            return n, body

        try:
            async with asyncio.TaskGroup() as tg:
                jobs = [tg.create_task(one(n)) for n in range(BATCH)]
        except ExceptionGroup as group:
            raise DemoError(f"{len(group.exceptions)} of the batch failed; first: "
                            f"{group.exceptions[0]!r}") from group
    wall = time.perf_counter() - start
    results = [job.result() for job in jobs]
    wrong = [n for n, body in results if body["result"]["report"] != n]
    if wrong:
        raise DemoError(f"reports {wrong[:5]} came back with the wrong content")
    sample = results[-1][1]
    report = {k: v for k, v in sample["result"].items() if k != "generated_at"}
    console.print(f"last report: {report} (task {sample['task_id']})")

    summary = Table("", "", title="batch summary", show_header=False)
    summary.add_row("tasks done", f"{len(results)}/{BATCH}")
    summary.add_row("wall time", f"{wall:.2f} s (HTTP enqueue + worker + HTTP polling)")
    summary.add_row("throughput", f"{len(results) / wall:.0f} tasks/s")
    console.print(summary)
    console.print(f"[green]{len(results)} tasks completed")


async def drive_http(base_url: str) -> None:
    limits = httpx.Limits(max_connections=HTTP_CONNECTIONS,
                          max_keepalive_connections=HTTP_CONNECTIONS)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:
        await call_add(client)
        await run_batch(client)


# -- producing from a script ------------------------------------------------------------------
async def from_script(broker_url: str) -> None:
    console.rule("[bold]3. From a plain script: delay(), delay_many() and await")
    import tasks  # this directory is on sys.path when demo.py runs as a script

    tasks.app.conf.update(broker_url=broker_url)
    try:
        digest = await (await tasks.checksum.delay("hello")).get(timeout=10)
        console.print(f"checksum('hello') = {digest[:16]}... (a plain def, run in a thread)")
        note = await (await tasks.notify.delay(42)).get(timeout=10)
        console.print(f"notify(42) = {note} (bound; retried once, same task id)")
        handles = await tasks.add.delay_many([(i, i) for i in range(5)])
        sums = [await h.get(timeout=10) for h in handles]
        console.print(f"add.delay_many([(0, 0) ... (4, 4)]) = {sums} (one round trip)")
        if sums != [0, 2, 4, 6, 8] or note["attempts"] != 2:
            raise DemoError(f"unexpected results from the script producer: {sums}, {note}")
        count = 5 * BATCH
        start = time.perf_counter()
        batch = await tasks.fetch_report.delay_many([(n,) for n in range(count)])
        reports = await asyncio.gather(*(h.get(timeout=30) for h in batch))
        wall = time.perf_counter() - start
        if [r["report"] for r in reports] != list(range(count)):
            raise DemoError("delay_many reports came back with the wrong content")
        console.print(f"{count} fetch_report tasks without HTTP in between: {wall:.2f} s, "
                      f"{count / wall:.0f} tasks/s (each awaits a 50 ms sleep)")
    finally:
        await tasks.app.close()


def cli_call(env: dict[str, str]) -> None:
    console.rule("[bold]4. aioqueue call tasks:app examples.add 2 3 --wait")
    args = [sys.executable, "-m", "aioqueue", "call", "tasks:app", "examples.add", "2", "3",
            "--wait", "--timeout", "10"]
    done = subprocess.run(args, cwd=HERE, env=env, capture_output=True, text=True, timeout=30,
                          check=False)
    output = done.stdout.strip()
    console.print(Text(output))
    if done.returncode != 0 or output.splitlines()[-1:] != ["5"]:
        raise DemoError(f"aioqueue call exited {done.returncode}: {output} {done.stderr}")


def periodic(env: dict[str, str], logdir: Path, stack: contextlib.ExitStack) -> None:
    """Two workers that both run beat: one leads, and each tick is sent once."""
    console.rule("[bold]5. Periodic tasks: two workers with --beat (examples/beat_app.py)")
    listed = subprocess.run([sys.executable, "-m", "aioqueue", "beat", "beat_app:app", "--list"],
                            cwd=HERE, env=env, capture_output=True, text=True, timeout=30,
                            check=False)
    console.print(Text(listed.stdout.strip()))
    if listed.returncode != 0:
        raise DemoError(f"aioqueue beat --list exited {listed.returncode}: {listed.stderr}")
    logs = [logdir / f"beat-worker-{i}.log" for i in (1, 2)]
    workers = [
        spawn(f"beat worker {i}", [sys.executable, "-m", "aioqueue", "worker", "beat_app:app",
                                   "--beat", "-l", "info"], env,
              stack.enter_context(log.open("wb")), stack)
        for i, log in enumerate(logs, 1)
    ]
    for worker, log in zip(workers, logs, strict=True):
        wait_for_log(worker, log, "consuming", "a beat worker")
    # Count the greetings the every-second schedule makes both workers run between them.
    deadline = time.monotonic() + 15
    greetings = 0
    while time.monotonic() < deadline and greetings < 4:
        greetings = sum(log.read_text(errors="replace").count("hello, world") for log in logs)
        time.sleep(0.1)
    sent = sum(log.read_text(errors="replace").count("sending due task") for log in logs)
    for i, worker in enumerate(workers, 1):
        stop(f"beat worker {i}", worker)
    console.print(f"{greetings} greetings run, {sent} ticks sent by the leader, from two beats")
    if greetings < 4:
        raise DemoError("the every-second schedule did not fire 4 times in 15 s")


# -- main -------------------------------------------------------------------------------------
def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Handled as Ctrl-C: inside asyncio.run() that cancels the main task cleanly, outside it
    # raises KeyboardInterrupt; either way the clean-up below stops every child.
    signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()  # also when start() itself failed half-way


def run(logdir: Path) -> None:
    started = time.perf_counter()
    console.rule("[bold magenta]aioqueue demo")
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server())
        console.print(f"redis-server   {redis.url}")
        env = {**os.environ, "AIOQUEUE_BROKER": redis.url, "PYTHONUNBUFFERED": "1"}
        env.pop("EMBED_WORKER", None)  # the API must use the CLI worker, not its own

        worker_log = logdir / "worker.log"
        worker_out = stack.enter_context(worker_log.open("wb"))
        worker = spawn("worker", [sys.executable, "-m", "aioqueue", "worker", "tasks:app",
                                  "-c", "100", "-E", "-l", "info"], env, worker_out, stack)
        wait_for_log(worker, worker_log, "consuming", "the worker")
        console.print(f"worker         pid {worker.pid} (aioqueue worker tasks:app -c 100 -E)")

        # The dashboard, on loopback: open it while the demo runs.
        dashboard_port = free_port()
        dashboard_url = f"http://127.0.0.1:{dashboard_port}/"
        dashboard_out = stack.enter_context((logdir / "dashboard.log").open("wb"))
        dashboard = spawn("dashboard", [sys.executable, "-m", "aioqueue", "dashboard",
                                        "tasks:app", "--port", str(dashboard_port)],
                          env, dashboard_out, stack)
        wait_for_dashboard(dashboard, dashboard_url)
        console.print(f"dashboard      [bold]{dashboard_url}[/] (aioqueue dashboard tasks:app)")

        api_log = logdir / "api.log"
        api_out = stack.enter_context(api_log.open("wb"))
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        api = spawn("api", [sys.executable, "-m", "uvicorn", "fastapi_app:api",
                            "--host", "127.0.0.1", "--port", str(port),
                            "--log-level", "warning"], env, api_out, stack)
        wait_for_http(api, base_url, api_log)
        console.print(f"FastAPI        {base_url} (pid {api.pid})")

        asyncio.run(drive_http(base_url))
        asyncio.run(from_script(redis.url))
        cli_call(env)
        periodic(env, logdir, stack)

        seen = httpx.get(f"{dashboard_url}api/overview", timeout=5.0).json()
        console.print(f"the dashboard saw {len(seen['workers'])} worker(s) and these "
                      f"queues: {', '.join(q['name'] for q in seen['queues'])}")
        stop("dashboard", dashboard)

        console.rule("[bold]6. Stopping (SIGTERM: graceful)")
        api_code = stop("api", api)
        worker_code = stop("worker", worker)
        # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
        api_status = "stopped" if api_code in (0, -signal.SIGTERM) else f"exited {api_code}"
        console.print(f"api {api_status}, worker exited {worker_code}")
        console.print("[bold]last lines of the worker's log[/] (ids shortened):")
        for line in tail(worker_log, 10):
            console.print(Text(shorten_log_line(line)), overflow="ellipsis", no_wrap=True)
        if worker_code != 0:
            raise DemoError(f"the worker exited with {worker_code} after SIGTERM")
        errors = [line for line in tail(worker_log, 10_000) if " ERROR/" in line]
        if errors:
            raise DemoError("the worker logged errors:\n" + "\n".join(errors[:5]))
    console.rule(f"[bold green]demo finished in {time.perf_counter() - started:.1f}s")


def main() -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    with tempfile.TemporaryDirectory(prefix="aioqueue-demo-") as logdir:
        try:
            run(Path(logdir))
        except DemoError as exc:
            console.print(f"[bold red]demo failed:[/] {exc}")
            return 1
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: everything started was stopped")
            return 130
        except Exception as exc:
            console.print_exception()
            console.print(f"[bold red]demo failed:[/] {type(exc).__name__}: {exc}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
