"""Operating aioqueue from the terminal, as ``celery inspect/control/events`` users do:
``status``, ``inspect``, ``control``, ``queues``, ``result``, ``purge``, ``events``, the
worker's ``-E``, ``--log-format json`` and ``--metrics-port``, and ``dashboard``.

Workers run in-process (``async with app.worker(...)``) while the CLI runs through Typer's
``CliRunner`` in a thread, on the same test Redis, finding it with ``--broker`` as an
operator without the project's code would; the worker and dashboard commands themselves
run in subprocesses, as users run them. ``--json`` output is parsed and checked against
what really runs.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner, Result

from aioqueue import AioQueue
from aioqueue.cli import age, cli
from aioqueue.monitor import Monitor
from aioqueue.testing import free_port
from tests.cli_worker import Lines

PROJECTS = Path(__file__).parent / "cli_projects"


async def invoke(*args: str, input: str | None = None) -> Result:
    """The CLI in a thread (its own event loop), so this loop's workers keep running."""
    run = functools.partial(CliRunner().invoke, cli, list(args), input=input)
    result: Result = await anyio.to_thread.run_sync(run)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


async def invoke_json(*args: str) -> Any:
    result = await invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    """Poll ``condition`` until it holds (a deadline, never a fixed sleep)."""
    with anyio.fail_after(timeout):
        while not await condition():
            await anyio.sleep(0.02)


# -- status, inspect, control ------------------------------------------------------------------
async def test_status_lists_live_workers_then_the_queues(app: AioQueue, redis_url: str) -> None:
    idle = await invoke("status", "--broker", redis_url)
    assert idle.exit_code == 0
    assert "no workers are running" in idle.stderr
    assert "default: ready=0 delayed=0 dead=0" in idle.stdout

    async with app.worker(concurrency=3, queues=["default", "emails"], name="w-status"):
        doc = await invoke_json("status", "--broker", redis_url)
        [worker] = doc["workers"]
        assert (worker["name"], worker["queues"], worker["concurrency"]) == (
            "w-status", ["default", "emails"], 3)
        assert worker["pid"] == os.getpid() and worker["uptime_s"] >= 0
        assert [q["name"] for q in doc["queues"]] == ["default", "emails"]
        human = await invoke("status", "--broker", redis_url, "-Q", "emails")
        assert human.exit_code == 0, human.output
        assert "w-status" in human.stdout and "default, emails" in human.stdout
        assert human.stdout.rstrip().endswith("emails: ready=0 delayed=0 dead=0")
        # Another key prefix is another system: nobody runs there.
        other = await invoke_json("status", "--broker", redis_url, "--prefix", "elsewhere")
        assert other["workers"] == []


async def test_inspect_active_shows_the_running_task(app: AioQueue, redis_url: str) -> None:
    started, release = anyio.Event(), anyio.Event()

    @app.task(name="ops.slow")
    async def slow(tag: str) -> str:
        started.set()
        await release.wait()
        return tag

    async with app.worker(concurrency=2, name="w-inspect"):
        handle = await slow.delay("abc")
        with anyio.fail_after(10):
            await started.wait()
        active = await invoke_json("inspect", "active", "--broker", redis_url)
        assert list(active) == ["w-inspect"]
        [task] = active["w-inspect"]
        assert (task["id"], task["name"], task["args"]) == (handle.id, "ops.slow", "('abc',)")
        human = await invoke("inspect", "active", "--broker", redis_url)
        assert "w-inspect: 1 active" in human.stdout and handle.id in human.stdout
        registered = await invoke_json("inspect", "registered", "--broker", redis_url,
                                       "-d", "w-inspect")
        assert registered == {"w-inspect": ["ops.slow"]}
        stats = await invoke_json("inspect", "stats", "--broker", redis_url)
        assert stats["w-inspect"]["concurrency"] == 2
        nobody = await invoke("inspect", "active", "--broker", redis_url, "--destination",
                              "nobody", "--timeout", "0.2")
        assert nobody.exit_code == 1 and "no worker 'nobody' answered" in nobody.stderr
        cancelled = await invoke_json("control", "cancel", handle.id, "--broker", redis_url)
        # The revoke broadcast goes first on the same channel: by the question, it is done.
        assert cancelled["w-inspect"] == f"cancelled {handle.id}"
        with pytest.raises(Exception, match="revoked"):
            await handle.get(timeout=10)
        release.set()


async def test_control_ping_is_answered_by_each_worker_and_shutdown_asks_first(
        app: AioQueue, redis_url: str) -> None:
    monitor = Monitor(app)
    async with app.worker(concurrency=1, name="w-a"), app.worker(concurrency=1, name="w-b"):
        assert await invoke_json("control", "ping", "--broker", redis_url) == {
            "w-a": "pong", "w-b": "pong"}
        ping = await invoke("control", "ping", "--broker", redis_url)
        assert ping.stdout.splitlines() == ["w-a: pong", "w-b: pong"]

        refused = await invoke("control", "shutdown", "--broker", redis_url, input="n\n")
        assert "Shut down 2 worker(s) (w-a, w-b)? [y/N]" in refused.stdout
        assert refused.exit_code == 1 and "nothing sent" in refused.stderr
        assert [w.name for w in await monitor.workers()] == ["w-a", "w-b"]

        stopped = await invoke("control", "shutdown", "--broker", redis_url, "-d", "w-b",
                               "--yes")
        assert stopped.exit_code == 0, stopped.output
        assert stopped.stdout.splitlines() == ["w-b: shutting down"]

        async def only_w_a() -> bool:
            return [w.name for w in await monitor.workers()] == ["w-a"]

        await until(only_w_a)
        limited = await invoke_json("control", "rate-limit", "ops.nothing", "10/s",
                                    "--broker", redis_url)
        assert limited == {"w-a": "unknown task 'ops.nothing'"}
        # Cluster-wide and kept in Redis: status lists it, with or without a worker.
        listed = await invoke("status", "--broker", redis_url)
        assert "rate limit ops.nothing: 10/s (cluster-wide)" in listed.stdout
        doc = await invoke_json("status", "--broker", redis_url)
        assert doc["rate_limits"] == {"ops.nothing": "10/s"}
    none = await invoke("control", "ping", "--broker", redis_url, "--timeout", "0.2")
    assert none.exit_code == 1 and "no worker answered" in none.stderr


# -- queues, result, purge ---------------------------------------------------------------------
async def test_queues_counts_waiting_delayed_and_the_oldest_age(
        app: AioQueue, redis_url: str) -> None:
    @app.task(name="ops.later")
    async def later() -> None:
        return None

    await app.broker.ensure_queues(["default", "idle"])
    sent = time.time()
    await later.delay_many([() for _ in range(3)])
    await later.apply_async(countdown=3600)
    doc = await invoke_json("queues", "--broker", redis_url, "-Q", "default,idle")
    default, idle = doc
    assert (default["name"], default["waiting"], default["running"], default["delayed"],
            default["dead"]) == ("default", 3, 0, 1, 0)
    assert sent - 1 <= default["oldest_waiting_at"] <= time.time()
    assert 0 <= default["oldest_waiting_age_s"] < 30
    assert (idle["waiting"], idle["delayed"], idle["oldest_waiting_age_s"]) == (0, 0, None)
    human = await invoke("queues", "--broker", redis_url, "-Q", "default")
    row = next(line for line in human.stdout.splitlines() if "default" in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells[:5] == ["default", "3", "0", "1", "0"] and cells[5].endswith("s"), row


def test_ages_read_as_operators_say_them() -> None:
    assert [age(s) for s in (0.4, 42, 192, 7500, 3 * 86400 + 4 * 3600)] == [
        "0s", "42s", "3m12s", "2h05m", "3d04h"]


async def test_result_of_a_failed_task_shows_its_error_traceback_and_timings(
        app: AioQueue, redis_url: str) -> None:
    app.conf.update(worker_send_task_events=True)

    @app.task(name="ops.broken")
    async def broken(n: int) -> None:
        raise ValueError(f"broken {n}")

    async with app.worker(concurrency=1, name="w-result"):
        handle = await broken.delay(42)
        with pytest.raises(ValueError):
            await handle.get(timeout=10)
    doc = await invoke_json("result", handle.id, "--broker", redis_url)
    assert (doc["id"], doc["task"], doc["state"], doc["worker"], doc["retries"]) == (
        handle.id, "ops.broken", "FAILURE", "w-result", 0)
    assert doc["error"] == "ValueError: broken 42" and doc["result"] is None
    assert 'raise ValueError(f"broken {n}")' in doc["traceback"]
    assert doc["traceback"].rstrip().endswith("ValueError: broken 42")
    assert doc["date_done"] is not None
    assert doc["timings"]["wait_s"] >= 0 and doc["timings"]["run_s"] >= 0
    human = await invoke("result", handle.id, "--broker", redis_url)
    lines = human.stdout.splitlines()
    assert "state:     FAILURE" in lines and "error:     ValueError: broken 42" in lines
    assert lines[lines.index("traceback:") + 1] == "Traceback (most recent call last):"
    assert any(line.startswith("ran:       ") for line in lines)

    unknown = await invoke_json("result", "no-such-id", "--broker", redis_url)
    assert (unknown["state"], unknown["timings"]) == ("PENDING", None)


async def test_purge_asks_first_and_deletes_only_when_told(app: AioQueue, redis_url: str) -> None:
    monitor = Monitor(app)

    @app.task(name="ops.doomed")
    async def doomed() -> None:
        return None

    await app.broker.ensure_queues(["default"])
    await doomed.delay_many([() for _ in range(3)])
    await doomed.apply_async(countdown=3600)

    kept = await invoke("purge", "--broker", redis_url, "-Q", "default", input="n\n")
    assert kept.exit_code == 0, kept.output
    assert "Delete 4 waiting and delayed messages from queue default? [y/N]" in kept.stdout
    [queue] = await monitor.queues(["default"])
    assert (queue.waiting, queue.delayed) == (3, 1)

    purged = await invoke_json("purge", "--broker", redis_url, "-Q", "default", "--yes")
    assert purged == {"purged": {"default": 4}, "kept": []}
    [queue] = await monitor.queues(["default"])
    assert (queue.waiting, queue.delayed) == (0, 0)
    [entry] = await monitor.audit_log()
    assert (entry.who, entry.action, entry.target) == ("cli", "purge", "default")


# -- events ------------------------------------------------------------------------------------
async def test_events_dump_prints_the_tasks_run_meanwhile(app: AioQueue, redis_url: str) -> None:
    app.conf.update(worker_send_task_events=True)

    @app.task(name="ops.tick")
    async def tick(n: int) -> int:
        return n

    ran: list[str] = []
    async with app.worker(concurrency=2, name="w-events"), anyio.create_task_group() as tg:
        done = anyio.Event()
        dumped: list[Result] = []

        async def dump() -> None:
            dumped.append(await invoke("events", "--dump", "--duration", "2",
                                       "--broker", redis_url))
            done.set()

        tg.start_soon(dump)
        n = 0
        while not done.is_set():  # tasks run all along the dump's two seconds
            handle = await tick.delay(n)
            assert await handle.get(timeout=10) == n
            ran.append(handle.id)
            n += 1
            with anyio.move_on_after(0.05):
                await done.wait()
    [result] = dumped
    assert result.exit_code == 0, result.output
    succeeded = [line for line in result.stdout.splitlines() if " task-succeeded " in line]
    assert len(succeeded) >= 3, result.stdout
    for line in succeeded:
        assert "ops.tick[" in line and "worker=w-events" in line and "runtime=" in line
        assert line.split("ops.tick[")[1].split("]")[0] in ran

    # --json: one object per line; --backlog shows what happened before.
    lines = (await invoke("events", "--json", "--backlog", "20", "--duration", "0.1",
                          "--broker", redis_url)).stdout.splitlines()
    docs = [json.loads(line) for line in lines]
    assert {d["task_id"] for d in docs if d["type"] == "task-succeeded"} <= set(ran)
    assert any(d["type"] == "task-succeeded" and d["result"] for d in docs)
    # The live view: throughput, per-task counts and the latest events.
    live = await invoke("events", "--duration", "0.6", "--broker", redis_url)
    assert live.exit_code == 0, live.output
    assert "tasks finished per second, last 60 s" in live.stdout
    assert "ops.tick" in live.stdout and "task-succeeded" in live.stdout


# -- the worker: -E, --log-format json, --metrics-port -----------------------------------------
@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; whatever still runs at the end is killed."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=15)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def start_cli(args: list[str], redis_url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CLI_REDIS_URL": redis_url}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.Popen([sys.executable, "-m", "aioqueue", *args], cwd=PROJECTS, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


async def test_worker_with_events_json_logs_and_metrics(
        redis_url: str, started: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    worker = start_cli(["-A", "proj", "worker", "-l", "info", "--log-format", "json", "-E",
                        "--metrics-port", str(port), "-n", "w-json"], redis_url)
    started.append(worker)
    assert worker.stdout is not None and worker.stderr is not None
    out, log = Lines(worker.stdout), Lines(worker.stderr)
    await anyio.to_thread.run_sync(log.wait_for, "consuming")
    client = AioQueue("client", broker=redis_url)
    try:
        handles = [await client.send_task("proj.tasks.add", (n, 1)) for n in range(3)]
        assert [await h.get(timeout=20) for h in handles] == [1, 2, 3]
        status, metrics = await anyio.to_thread.run_sync(
            http_get, f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and 'celery_worker_up{hostname="w-json"} 1.0' in metrics
        worker.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(worker.wait, 20) == 0
        # -E: the worker recorded task events.
        events = [e for _, e in await Monitor(client).recent_events(100)]
        succeeded = {e.task_id for e in events
                     if e.type == "task-succeeded" and e.worker == "w-json"}
        assert succeeded == {h.id for h in handles}
    finally:
        await client.close()
    [banner] = [json.loads(line) for line in out.join().splitlines()]
    assert (banner["message"], banner["task_events"], banner["metrics_port"]) == (
        "aioqueue worker starting", True, port)
    # Every line is one JSON object.
    records = [json.loads(line) for line in log.join().splitlines()]
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= record.keys()
    done = [r for r in records if " succeeded in " in r["message"]]
    assert sorted(r["task_id"] for r in done) == sorted(h.id for h in handles)
    for record in done:
        assert record["level"] == "INFO" and record["task"] == "proj.tasks.add"
        assert isinstance(record["duration_s"], float)


# -- dashboard and usage errors ----------------------------------------------------------------
async def test_dashboard_serves_with_a_token_and_stops_on_ctrl_c(
        redis_url: str, started: list[subprocess.Popen[str]]) -> None:
    dash = start_cli(["dashboard", "--broker", redis_url, "--port", "0", "--read-only",
                      "--token", "s3cret"], redis_url)
    started.append(dash)
    assert dash.stderr is not None
    log = Lines(dash.stderr)
    line = await anyio.to_thread.run_sync(log.wait_for, "aioqueue dashboard: http://")
    url = line.split("aioqueue dashboard: ")[1].split()[0]
    assert (await anyio.to_thread.run_sync(http_get, url + "api/config"))[0] == 401
    status, body = await anyio.to_thread.run_sync(
        http_get, url + "api/config", {"Authorization": "Bearer s3cret"})
    assert status == 200 and json.loads(body)["read_only"] is True
    dash.send_signal(signal.SIGINT)
    assert await anyio.to_thread.run_sync(dash.wait, 20) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dashboard", "--broker", "redis://x", "--user", "u"],
         "--user and --password go together"),
        (["dashboard", "--broker", "redis://x", "--basic-auth", "nocolon"],
         "--basic-auth takes USER:PASSWORD"),
        (["status", "-A", "proj", "--broker", "redis://x"], "pass the app (proj) or --broker"),
        (["status", "--prefix", "p"], "--prefix goes with --broker"),
        (["status"], "which app? pass -A"),
        (["-b", "redis://x", "worker"], "--broker and --prefix are for status, inspect"),
        (["control", "rate-limit", "--broker", "redis://x", "only.task"],
         "expected TASK RATE, got only.task"),
        (["control", "rate-limit", "--broker", "redis://x", "t", "fast"],
         "rate 'fast': use a number of tasks per second"),
    ],
)
async def test_usage_errors_are_one_line(args: list[str], message: str) -> None:
    result = await invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
