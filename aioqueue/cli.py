"""The ``aioqueue`` command: a thin Typer layer that parses, imports the app and delegates."""

from __future__ import annotations

import importlib
import json
import logging
import os
import platform
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, NoReturn

import typer

from . import __version__
from ._concurrency import run_main
from .app import AioQueue
from .errors import AioQueueError

__all__ = ("cli", "load_app", "main")

cli = typer.Typer(
    name="aioqueue",
    help="An asyncio-native task queue with Celery's model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dead_cli = typer.Typer(help="List, requeue or purge dead letters.", no_args_is_help=True)
cli.add_typer(dead_cli, name="dead")

TargetArg = Annotated[str, typer.Argument(metavar="MODULE:ATTRIBUTE",
                                          help="Where the AioQueue lives, e.g. app:tasks.")]
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


def _fail(message: str) -> NoReturn:
    """One clear line on stderr and exit code 2: no traceback wall for a usage error."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(2)


def load_app(target: str) -> AioQueue:
    """Import ``module:attribute`` (from the current directory too) and check it is an app."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        _fail(f"{target!r} is not MODULE:ATTRIBUTE (for example app:tasks)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        _fail(f"cannot import module {module_name!r}: {exc}")
    except Exception as exc:
        _fail(f"importing module {module_name!r} raised {type(exc).__name__}: {exc}")
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            _fail(f"module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, AioQueue):
        _fail(f"{target} is a {type(obj).__name__}, not an AioQueue")
    return obj


def _first_error(exc: BaseException) -> BaseException | None:
    """The error to report: the exception itself, or the first one inside a group."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_error(inner)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, AioQueueError | TimeoutError) else None


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop; an aioqueue error (even inside a task group's exception
    group) becomes one ``Error:`` line and exit code 1, not a traceback wall."""
    try:
        run_main(main)
    except (AioQueueError, TimeoutError, BaseExceptionGroup) as exc:
        reported = _first_error(exc)
        if reported is None:
            raise
        typer.echo(f"Error: {reported or type(reported).__name__}", err=True)
        raise typer.Exit(1) from None


def _setup_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        _fail(f"unknown log level {level!r}: use debug, info, warning, error or critical")
    logging.basicConfig(level=numeric, format=LOG_FORMAT, stream=sys.stderr)


def _banner(app: AioQueue, target: str, concurrency: int, queues: list[str], beat: bool,
            processes: int) -> str:
    loop = "uvloop" if _has_uvloop() else "asyncio"
    lines = [
        f" -------------- aioqueue@{socket.gethostname()} v{__version__} "
        f"({platform.python_implementation()} {platform.python_version()})",
        f" app:          {app.main} ({target})",
        f" broker:       {app.display_broker_url}",
        f" results:      {app.display_broker_url} (expire after {app.conf.result_expires_s:g}s)",
        f" concurrency:  {concurrency} ({loop})"
        + (f" x {processes} processes" if processes > 1 else ""),
        f" queues:       {', '.join(queues)}",
        f" serializer:   {app.conf.task_serializer}",
    ]
    if beat:
        lines.append(f" beat:         on ({len(app.conf.beat_schedule) + len(app.periodic_tasks)}"
                     " schedules)")
    lines.append("")
    lines.append(" [tasks]")
    lines += [f"   . {name}" for name in sorted(app.tasks)] or ["   (none registered)"]
    return "\n".join(lines) + "\n"


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _queues(values: list[str] | None, app: AioQueue) -> list[str]:
    names = [q.strip() for value in values or [] for q in value.split(",") if q.strip()]
    return names or [app.conf.task_default_queue]


@cli.command()
def worker(
    target: TargetArg,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1,
                                                    help="Most tasks running at once.")] = None,
    queues: Annotated[list[str] | None, typer.Option("--queues", "-Q",
                                                     help="Queues to consume (comma-separated "
                                                          "or repeated).")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="debug, info, warning...")]
    = "warning",
    beat: Annotated[bool, typer.Option("--beat", help="Also run the periodic scheduler.")]
    = False,
    processes: Annotated[int, typer.Option("--processes", "-p", min=1,
                                           help="Event-loop processes under a supervisor.")] = 1,
    burst: Annotated[bool, typer.Option("--burst", help="Exit once the queues are drained.")]
    = False,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Worker name.")] = None,
) -> None:
    """Run a worker: ``aioqueue worker app:tasks -c 100 -Q default -l info``."""
    app = load_app(target)
    _setup_logging(loglevel)
    size = concurrency or app.conf.worker_concurrency
    names = _queues(queues, app)
    if os.environ.get("AIOQUEUE_SUPERVISED") != "1":
        typer.echo(_banner(app, target, size, names, beat, processes))
    if processes > 1:
        from ._supervisor import supervise

        raise typer.Exit(supervise(sys.argv, processes))
    w = app.worker(concurrency=size, queues=names, burst=burst, beat=beat, name=name)

    async def serve() -> None:
        try:
            await w.serve()
        finally:
            await app.close()

    _run(serve)


def _parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@cli.command()
def call(
    target: TargetArg,
    task_name: Annotated[str, typer.Argument(metavar="TASK_NAME")],
    args: Annotated[list[str] | None, typer.Argument(metavar="[ARG]...",
                                                     help="Each parsed as JSON, else a string.")]
    = None,
    kwargs: Annotated[str | None, typer.Option("--kwargs", help="Keyword arguments as a JSON "
                                                                 "object.")] = None,
    countdown: Annotated[float | None, typer.Option("--countdown", help="Seconds to wait.")]
    = None,
    queue: Annotated[str | None, typer.Option("--queue", "-Q")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait and print the result.")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", help="With --wait.")] = None,
) -> None:
    """Enqueue a task by name and print its id (and, with --wait, its result)."""
    app = load_app(target)
    parsed_kwargs: dict[str, Any] = {}
    if kwargs:
        try:
            parsed_kwargs = json.loads(kwargs)
        except json.JSONDecodeError as exc:
            _fail(f"--kwargs is not valid JSON: {exc}")
        if not isinstance(parsed_kwargs, dict):
            _fail("--kwargs must be a JSON object")
    positional = [_parse_arg(a) for a in args or []]

    async def run() -> None:
        try:
            handle = await app.send_task(task_name, positional, parsed_kwargs,
                                         countdown=countdown, queue=queue)
            typer.echo(handle.id)
            if wait:
                value = await handle.get(timeout=timeout, propagate=False)
                if isinstance(value, BaseException):
                    typer.echo(f"FAILURE {type(value).__name__}: {value}")
                    raise typer.Exit(1)
                typer.echo(json.dumps(value, default=repr))
        finally:
            await app.close()

    _run(run)


@cli.command()
def beat(
    target: TargetArg,
    list_: Annotated[bool, typer.Option("--list", help="Print schedules and next fire times.")]
    = False,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "info",
) -> None:
    """Run the periodic scheduler (several at once are safe: one leads, each tick fires once)."""
    app = load_app(target)
    from . import beat as beat_module

    if list_:
        try:
            rows = beat_module.describe(app, 3)
        except AioQueueError as exc:
            _fail(str(exc))
        for name, task, schedule, fires in rows:
            typer.echo(f"{name}: {task} {schedule}")
            for when in fires:
                typer.echo(f"    next: {when.isoformat()}")
        return
    _setup_logging(loglevel)
    try:
        scheduler = beat_module.Beat(app)
    except AioQueueError as exc:
        _fail(str(exc))
    for unknown in scheduler.unknown_tasks():
        typer.echo(f"warning: schedule names task {unknown!r}, which {target} does not "
                   "register", err=True)

    async def run() -> None:
        import anyio

        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                import signal

                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        stop.set()
                        return

            tg.start_soon(on_signals)
            try:
                await scheduler.run(stop)
            finally:
                tg.cancel_scope.cancel()
                await app.close()

    _run(run)


QueueOpt = Annotated[str | None, typer.Option("--queue", "-Q", help="Default: the app's.")]


def _run_dead(target: str, queue: str | None, action: str, limit: int = 100) -> None:
    app = load_app(target)
    name = queue or app.conf.task_default_queue

    async def run() -> None:
        try:
            broker = app.broker
            if action == "list":
                letters = await broker.dead_letters(name, limit)
                for letter in letters:
                    summary = _summarize(app, letter.payload)
                    typer.echo(f"{letter.entry_id}  {summary}  reason: {letter.reason}")
                typer.echo(f"{len(letters)} dead letter(s) shown for queue {name}")
            elif action == "requeue":
                typer.echo(f"requeued {await broker.requeue_dead(name, None)} message(s) "
                           f"to queue {name}")
            else:
                typer.echo(f"purged {await broker.purge_dead(name)} dead letter(s) "
                           f"from queue {name}")
        finally:
            await app.close()

    _run(run)


def _summarize(app: AioQueue, payload: bytes) -> str:
    try:
        msg = app.serializer.decode_message(payload)
    except AioQueueError:
        return f"<undecodable {len(payload)} bytes>"
    return f"{msg.task}[{msg.id}]"


@dead_cli.command("list")
def dead_list(target: TargetArg, queue: QueueOpt = None,
              limit: Annotated[int, typer.Option("--limit")] = 100) -> None:
    """Show dead letters with the reason each was dead-lettered."""
    _run_dead(target, queue, "list", limit)


@dead_cli.command("requeue")
def dead_requeue(target: TargetArg, queue: QueueOpt = None) -> None:
    """Move every dead letter back to its queue."""
    _run_dead(target, queue, "requeue")


@dead_cli.command("purge")
def dead_purge(target: TargetArg, queue: QueueOpt = None) -> None:
    """Delete every dead letter of the queue."""
    _run_dead(target, queue, "purge")


@cli.command()
def status(target: TargetArg, queues: Annotated[list[str] | None,
                                                typer.Option("--queues", "-Q")] = None) -> None:
    """Print ready, delayed and dead message counts per queue."""
    app = load_app(target)
    names = _queues(queues, app)

    async def run() -> None:
        try:
            sizes = await app.broker.queue_sizes(names)
        finally:
            await app.close()
        for name, (ready, delayed, dead) in sizes.items():
            typer.echo(f"{name}: ready={ready} delayed={delayed} dead={dead}")

    _run(run)


def main() -> None:
    """Entry point of the ``aioqueue`` script."""
    cli()
