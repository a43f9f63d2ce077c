"""The ``aioqueue`` command: a thin Typer layer that parses, imports the app and delegates.

Celery users' habits work: ``aioqueue -A proj worker -l info`` (or ``worker -A proj``, or the
positional ``worker proj:app``) finds the app as ``celery -A`` does (:func:`find_app`),
``aioqueue -A proj call proj.add -a '[1, 2]' -k '{}'`` sends a task by name, ``--version``
prints what a bug report needs. A user's import error is one short message pointing at the
user's own file and line (exit code 2), never a traceback through aioqueue and importlib.

Command help is what ``--help`` prints, so command docstrings here are plain text (no reST).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import socket
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from enum import StrEnum
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import anyio
import msgspec
import typer

from . import __version__
from ._concurrency import run_main
from ._supervisor import RECYCLE_EXIT_CODE
from .app import AioQueue
from .broker import QueueDetails
from .errors import AioQueueError, RemoteTaskError
from .events import STATE_OF, Event, EventType
from .message import State
from .monitor import Monitor, WorkerInfo
from .result import ResultInfo
from .worker import Worker

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.text import Text

__all__ = ("cli", "find_app", "load_app", "main", "versions")

cli = typer.Typer(
    name="aioqueue",
    help="An asyncio-native task queue with Celery's model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dead_cli = typer.Typer(help="List, requeue or purge dead letters.", no_args_is_help=True)
cli.add_typer(dead_cli, name="dead")

APP_HELP = ("The app: a module (its app or celery attribute, its celery submodule, or its "
            "only AioQueue), or module:attribute, or module.attribute.")
AppOpt = Annotated[str | None, typer.Option("--app", "-A", metavar="APP", help=APP_HELP,
                                            show_default=False)]
TargetArg = Annotated[str | None, typer.Argument(
    metavar="APP", show_default=False,
    help="The app as -A takes it, for example proj or proj:app (or pass -A).")]
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


def _fail(message: str) -> NoReturn:
    """One clear line on stderr and exit code 2: no traceback wall for a usage error."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(2)


# -- versions ----------------------------------------------------------------------------------
#: "CPython 3.11.7" for the banner, without importing ``platform`` at every start.
_PYTHON = {"cpython": "CPython", "pypy": "PyPy"}.get(
    sys.implementation.name, sys.implementation.name) + " " + sys.version.split()[0]

def versions() -> str:
    """What ``aioqueue --version`` prints: aioqueue, Python, redis-py and the platform."""
    # Imported here, not at the top: every worker start pays for what the CLI imports.
    import platform
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        redis_py = distribution_version("redis")
    except PackageNotFoundError:
        redis_py = "not installed"
    return "\n".join([
        f"aioqueue {__version__}",
        f"Python   {platform.python_version()} ({platform.python_implementation()})",
        f"redis-py {redis_py}",
        f"platform {platform.platform()}",
    ])


def _print_version(value: bool) -> None:
    if value:
        typer.echo(versions())
        raise typer.Exit()


BROKER_HELP = ("Where the app cannot be imported: the Redis URL to operate on (status, inspect, "
               "control, queues, result, purge, events, dashboard), with a bare app.")
PREFIX_HELP = "With --broker: the apps' key_prefix (default: aioqueue)."
BrokerOpt = Annotated[str | None, typer.Option("--broker", "-b", metavar="URL", help=BROKER_HELP,
                                               show_default=False)]
PrefixOpt = Annotated[str | None, typer.Option("--prefix", metavar="PREFIX", help=PREFIX_HELP,
                                               show_default=False)]


@cli.callback()
def _root(
    app_name: AppOpt = None,
    broker_url: BrokerOpt = None,
    key_prefix: PrefixOpt = None,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Print the versions of aioqueue, Python and redis-py, and the platform.")] = False,
) -> None:
    """An asyncio-native task queue with Celery's model."""


@cli.command("version")
def version_command() -> None:
    """Print the versions of aioqueue, Python and redis-py, and the platform."""
    typer.echo(versions())


# -- finding the app ---------------------------------------------------------------------------
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\Z")
_OWN_DIR = os.path.dirname(os.path.realpath(__file__))


def _type_name(obj: object) -> str:
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _library_roots() -> list[str]:
    import sysconfig

    paths = sysconfig.get_paths()
    roots = {os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib", "purelib",
                                                       "platlib") if key in paths}
    return sorted(roots)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _last_user_frame(frames: traceback.StackSummary) -> traceback.FrameSummary | None:
    """The innermost frame in the user's code: not aioqueue's, not importlib's (frozen), and
    preferably not the standard library's or an installed package's either."""
    roots = _library_roots()

    def internal(filename: str, strict: bool) -> bool:
        if filename.startswith("<"):
            return True
        real = os.path.realpath(filename)
        if _under(real, _OWN_DIR):
            return True
        return strict and any(_under(real, root) for root in roots)

    for strict in (True, False):
        for frame in reversed(frames):
            if not internal(frame.filename, strict):
                return frame
    return frames[-1] if frames else None


def _user_location(exc: BaseException) -> list[str]:
    """Where the user's error is, as Python prints it: the File line and the source line."""
    if (isinstance(exc, SyntaxError) and exc.filename and not exc.filename.startswith("<")
            and exc.lineno):
        lines = [f'  File "{exc.filename}", line {exc.lineno}']
        if exc.text and exc.text.strip():
            lines.append(f"    {exc.text.strip()}")
        return lines
    frame = _last_user_frame(traceback.extract_tb(exc.__traceback__))
    if frame is None:
        return []
    lines = [f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}']
    if frame.line:
        lines.append(f"    {frame.line.strip()}")
    return lines


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"{_type_name(exc)}: {exc.msg}"
    text = str(exc)
    return f"{_type_name(exc)}: {text}" if text else _type_name(exc)


def _import_failed(what: str, exc: BaseException) -> NoReturn:
    """The user's code raised while being imported: say what and where, exit code 2."""
    message = "\n".join([f"Error: cannot import {what}: {_describe(exc)}",
                         *_user_location(exc)])
    typer.echo(message, err=True)
    raise typer.Exit(2)


def _django_setup() -> None:
    """``django.setup()`` when ``DJANGO_SETTINGS_MODULE`` is set and Django is installed, as
    Celery's Django fix-up does: tasks modules may use models and settings at import."""
    settings = os.environ.get("DJANGO_SETTINGS_MODULE")
    if not settings or importlib.util.find_spec("django") is None:
        return
    django: Any = importlib.import_module("django")
    try:
        django.setup()
    except Exception as exc:
        _import_failed(f"the Django settings DJANGO_SETTINGS_MODULE={settings}", exc)


def _prepare_imports() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    _django_setup()


def _import(name: str, *, missing: str | None = None) -> ModuleType:
    """Import the module ``name`` of the user's project.

    The module itself (or its package) not existing is one line naming what was tried and
    where; anything the module raises while importing points at the user's file and line.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        gone = exc.name
        if gone is not None and (name == gone or name.startswith(gone + ".")):
            _fail(missing or (
                f"cannot import module {name!r}: no module named {gone!r} (looked in "
                f"{sys.path[0]} and the rest of sys.path; is the project on your PYTHONPATH, "
                "or run aioqueue from the directory that holds it?)"))
        _import_failed(f"module {name!r}", exc)
    except Exception as exc:
        _import_failed(f"module {name!r}", exc)


def _getattr(obj: object, name: str, target: str) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, None)``; a module ``__getattr__`` raising anything else
    is the user's error."""
    try:
        return True, getattr(obj, name)
    except AttributeError:
        return False, None
    except Exception as exc:
        _import_failed(target, exc)


def _apps_in(module: ModuleType) -> dict[str, AioQueue]:
    """The module's AioQueue attributes, first name of each app."""
    found: dict[int, tuple[str, AioQueue]] = {}
    for attr, value in list(vars(module).items()):
        if isinstance(value, AioQueue) and id(value) not in found:
            found[id(value)] = (attr, value)
    return dict(found.values())


def _check(obj: object, shown: str, module: ModuleType) -> AioQueue:
    if isinstance(obj, AioQueue):
        return obj
    apps = _apps_in(module)
    if apps:
        hint = f"did you mean {module.__name__}:{next(iter(apps))}?"
    else:
        hint = (f"name the aioqueue app e.g. `celery_app` and pass "
                f"-A {module.__name__}:celery_app")
    _fail(f"{shown} is a {_type_name(obj)}, not an AioQueue; {hint}")


def _search(module: ModuleType, taken: list[str]) -> tuple[AioQueue, str] | None:
    """Celery's order: ``module.app``, ``module.celery``, the submodule ``module.celery``, then
    the one AioQueue among the module's attributes. Names holding something else go to
    ``taken`` (the Flask-``app`` trap), to explain a failure."""
    name = module.__name__
    for attr in ("app", "celery"):
        _, value = _getattr(module, attr, f"{name}.{attr}")
        if isinstance(value, AioQueue):
            return value, f"{name}:{attr}"
        if value is not None and not isinstance(value, ModuleType):
            taken.append(f"{name}.{attr} is a {_type_name(value)}")
    if hasattr(module, "__path__"):
        sub = f"{name}.celery"
        try:
            exists = importlib.util.find_spec(sub) is not None
        except (ImportError, ValueError):
            exists = False
        if exists:
            found = _search(_import(sub), taken)
            if found is not None:
                return found
    apps = _apps_in(module)
    if len(apps) > 1:
        _fail(f"module {name!r} holds several AioQueue apps ({', '.join(apps)}): pass "
              f"-A {name}:{next(iter(apps))} (or another)")
    if apps:
        attr, app = next(iter(apps.items()))
        return app, f"{name}:{attr}"
    return None


def _search_or_fail(module: ModuleType) -> tuple[AioQueue, str]:
    taken: list[str] = []
    found = _search(module, taken)
    if found is not None:
        return found
    name = module.__name__
    if taken:
        _fail(f"{taken[0]}, not an AioQueue; name the aioqueue app e.g. `celery_app` and pass "
              f"-A {name}:celery_app")
    where = f"{name}.app, {name}.celery" + (f", the module {name}.celery"
                                           if hasattr(module, "__path__") else "")
    _fail(f"no AioQueue in module {name!r}: looked for {where} and any AioQueue attribute; "
          f"pass -A {name}:ATTRIBUTE")


def find_app(target: str) -> tuple[AioQueue, str]:
    """Find the app named by ``-A``, as ``celery -A`` does; returns it and where it was found
    (``module:attribute``).

    ``proj`` looks at ``proj.app``, ``proj.celery`` (an attribute, or the submodule of a
    package), then for the one AioQueue among ``proj``'s attributes; ``proj:attr`` and
    ``proj.attr`` name it. With ``DJANGO_SETTINGS_MODULE`` set, Django is set up first. Every
    failure exits with code 2 and a message saying what to fix.
    """
    _prepare_imports()
    module_name, sep, attribute = target.partition(":")
    if not _DOTTED.match(module_name) or (sep and not _DOTTED.match(attribute)):
        _fail(f"{target!r} is not MODULE:ATTRIBUTE nor a module name (for example proj, "
              "proj:app or proj.app)")
    if sep:
        module = _import(module_name)
        obj: Any = module
        for part in attribute.split("."):
            ok, obj = _getattr(obj, part, target)
            if not ok:
                apps = _apps_in(module)
                hint = f" (did you mean {module_name}:{next(iter(apps))}?)" if apps else ""
                _fail(f"module {module_name!r} has no attribute {attribute!r}{hint}")
        if isinstance(obj, ModuleType):
            return _search_or_fail(obj)
        return _check(obj, target, module), target
    if "." in target:
        parent_name, _, attr = target.rpartition(".")
        parent = _import(parent_name)
        ok, obj = _getattr(parent, attr, target)
        if ok and not isinstance(obj, ModuleType):
            return _check(obj, target, parent), f"{parent_name}:{attr}"
        if not ok:
            module = _import(target, missing=(
                f"module {parent_name!r} has no attribute {attr!r} and there is no module "
                f"{target!r}"))
            return _search_or_fail(module)
        return _search_or_fail(obj)
    return _search_or_fail(_import(target))


def load_app(target: str) -> AioQueue:
    """The app ``target`` names (see :func:`find_app`)."""
    return find_app(target)[0]


def _app_target(ctx: typer.Context, positional: str | None, option: str | None) -> str:
    """The one app named by the positional APP, the command's -A, or the top-level -A."""
    params = ctx.find_root().params
    if params.get("broker_url") or params.get("key_prefix"):
        _fail(f"--broker and --prefix are for {', '.join(OPS_COMMANDS)}; "
              f"`{ctx.command_path}` needs the app: pass -A")
    root = params.get("app_name")
    given = list(dict.fromkeys(v for v in (positional, option, root) if v))
    if not given:
        _fail("which app? pass -A, for example `aioqueue -A proj worker`, or name it first: "
              "`aioqueue worker proj:app`")
    if len(given) > 1:
        _fail(f"two apps given ({' and '.join(given)}): pass one")
    return given[0]


# -- running -----------------------------------------------------------------------------------
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


class LogFormat(StrEnum):
    """``--log-format``: Celery's text lines, or one JSON object per line."""

    text = "text"
    json = "json"


#: Fields of a log record that are not the caller's ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line, for log collectors (``--log-format json``).

    Every line has ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    ``process`` and ``pid``. A task's lines (the worker's ``Task name[id] ...``) also have
    ``task`` and ``task_id``, a success its ``duration_s``; a line logged with an exception
    has its ``traceback``. Values passed with ``extra=`` are kept as fields too.
    """

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
            "pid": record.process,
        }
        doc.update(_task_fields(record))
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                doc.setdefault(key, value)
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["traceback"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=repr, ensure_ascii=False)


def _task_fields(record: logging.LogRecord) -> dict[str, Any]:
    """``task``, ``task_id`` and ``duration_s`` of a worker's ``Task %s[%s] ...`` line."""
    args = record.args
    if not (isinstance(record.msg, str) and record.msg.startswith("Task %s[%s]")
            and isinstance(args, tuple) and len(args) >= 2):
        return {}
    fields: dict[str, Any] = {"task": str(args[0]), "task_id": str(args[1])}
    if (record.msg.startswith("Task %s[%s] succeeded in %") and len(args) >= 3
            and isinstance(args[2], int | float)):
        fields["duration_s"] = round(float(args[2]), 6)
    return fields


def _setup_logging(level: str, log_format: LogFormat = LogFormat.text) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        _fail(f"unknown log level {level!r}: use debug, info, warning, error or critical")
    if log_format is LogFormat.json:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLogFormatter())
        logging.basicConfig(level=numeric, handlers=[handler])
    else:
        logging.basicConfig(level=numeric, format=LOG_FORMAT, stream=sys.stderr)


def _json_line(message: str, level: str = "INFO", **fields: Any) -> str:
    """A JSON line shaped like :class:`JsonLogFormatter`'s, for what the CLI prints itself."""
    record = logging.LogRecord("aioqueue.cli", logging.getLevelName(level), __file__, 0,
                               message, None, None)
    record.__dict__.update(fields)
    return JsonLogFormatter().format(record)


def _banner(app: AioQueue, where: str, concurrency: int, queues: list[str], beat: bool,
            processes: int, max_tasks: int | None, max_memory_kb: int | None,
            events: bool = False, metrics_port: int | None = None) -> str:
    loop = "uvloop" if _has_uvloop() else "asyncio"
    lines = [
        f" -------------- aioqueue@{socket.gethostname()} v{__version__} "
        f"({_PYTHON})",
        f" app:          {app.main} ({where})",
        f" broker:       {app.display_broker_url}",
        f" results:      {app.display_backend_url} (expire after {app.conf.result_expires_s:g}s)",
        f" concurrency:  {concurrency} ({loop})"
        + (f" x {processes} processes" if processes > 1 else ""),
        f" queues:       {', '.join(queues)}",
        f" serializer:   {app.conf.task_serializer}",
        f" task events:  {'on' if events else 'off'}",
    ]
    if metrics_port is not None:
        lines.append(f" metrics:      port {metrics_port} (/metrics)")
    recycle = ([f"after {max_tasks} tasks"] if max_tasks is not None else []) + (
        [f"over {max_memory_kb} KiB resident"] if max_memory_kb is not None else [])
    if recycle:
        lines.append(f" recycle:      each process {' or '.join(recycle)}")
    if beat:
        lines.append(f" beat:         on ({len(app.conf.beat_schedule) + len(app.periodic_tasks)}"
                     " schedules)")
    lines.append("")
    lines.append(" [tasks]")
    lines += [f"   . {name}" for name in sorted(app.tasks)] or ["   (none registered)"]
    return "\n".join(lines) + "\n"


def _no_tasks_warning(where: str) -> str:
    return (f"warning: no tasks registered in {where}; did you forget include=[...] or to "
            "import your tasks module?")


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _queues(values: list[str] | None, app: AioQueue,
            exclude: list[str] | None = None) -> list[str]:
    """The queues a worker serves: -Q's; else, as a Celery worker, every queue declared in
    task_queues; else task_default_queue -- minus -X's. Nothing left is a usage error."""
    names = list(dict.fromkeys(
        _queue_names(values) or app.conf.task_queues or [app.conf.task_default_queue]))
    excluded = _queue_names(exclude)
    served = [name for name in names if name not in excluded]
    if not served:
        _fail(f"-X/--exclude-queues {','.join(excluded)} leaves no queue to consume: this "
              f"worker would serve {', '.join(names)}")
    return served


def _positive_setting(app: AioQueue, name: str) -> int | None:
    value = getattr(app.conf, name, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _fail(f"setting {name} must be a positive whole number or None, not {value!r}")
    return value


def _accepts(fn: Callable[..., Any], parameter: str) -> bool:
    try:
        return parameter in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _import_tasks(app: AioQueue, where: str) -> None:
    """Import the app's ``include`` modules now (the worker would at start-up anyway), so the
    banner lists their tasks, ``call`` can check names, and their errors point at their line."""
    import_tasks = getattr(app, "import_tasks", None)
    if import_tasks is None:
        return
    try:
        import_tasks()
    except Exception as exc:
        _import_failed(f"the tasks modules of {where}", exc)


@cli.command()
def worker(
    ctx: typer.Context,
    target: TargetArg = None,
    app_opt: AppOpt = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1,
                                                    help="Most tasks running at once.")] = None,
    queues: Annotated[list[str] | None, typer.Option("--queues", "-Q",
                                                     help="Queues to consume (comma-separated "
                                                          "or repeated); default: the "
                                                          "task_queues setting, else "
                                                          "task_default_queue.")] = None,
    exclude_queues: Annotated[list[str] | None, typer.Option(
        "--exclude-queues", "-X", show_default=False,
        help="Queues not to consume (comma-separated or repeated), e.g. one of task_queues "
             "left to other workers.")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="debug, info, warning...")]
    = "warning",
    beat: Annotated[bool, typer.Option("--beat", help="Also run the periodic scheduler.")]
    = False,
    processes: Annotated[int, typer.Option("--processes", "-p", min=1,
                                           help="Event-loop processes under a supervisor.")] = 1,
    max_tasks_per_child: Annotated[int | None, typer.Option(
        "--max-tasks-per-child", min=1, show_default=False,
        help="Replace a worker process after it has run this many tasks. Runs a "
             "supervisor.")] = None,
    max_memory_per_child: Annotated[int | None, typer.Option(
        "--max-memory-per-child", min=1, metavar="KIB", show_default=False,
        help="Replace a worker process once its resident memory exceeds this many KiB "
             "(Linux). Runs a supervisor.")] = None,
    burst: Annotated[bool, typer.Option("--burst", help="Exit once the queues are drained.")]
    = False,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Worker name.")] = None,
    events: Annotated[bool, typer.Option(
        "--events", "-E", "--task-events",
        help="Record task events (for aioqueue events, result timings and the dashboard); "
             "default: the worker_send_task_events setting.")] = False,
    log_format: Annotated[LogFormat, typer.Option(
        "--log-format", case_sensitive=False,
        help="text, or json: every log line one JSON object (timestamp, level, logger, "
             "message; task, task_id and duration_s on task lines).")] = LogFormat.text,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=1, max=65535, metavar="PORT", show_default=False,
        help="Serve Prometheus metrics on http://127.0.0.1:PORT/metrics (needs "
             "aioqueue[metrics]); one process only.")] = None,
) -> None:
    """Run a worker, for example: aioqueue -A proj worker -c 100 -Q default -l info.

    --max-tasks-per-child and --max-memory-per-child default to the app's settings
    worker_max_tasks_per_child and worker_max_memory_per_child (as Celery's).
    """
    app, where = find_app(_app_target(ctx, target, app_opt))
    _import_tasks(app, where)
    _setup_logging(loglevel, log_format)
    size = concurrency or app.conf.worker_concurrency
    names = _queues(queues, app, exclude_queues)
    max_tasks = (max_tasks_per_child if max_tasks_per_child is not None
                 else _positive_setting(app, "worker_max_tasks_per_child"))
    max_memory = (max_memory_per_child if max_memory_per_child is not None
                  else _positive_setting(app, "worker_max_memory_per_child"))
    if metrics_port is not None and not _accepts(Worker, "metrics_port"):
        _fail("--metrics-port: this version's Worker does not take metrics_port (yet)")
    if metrics_port is not None and processes > 1:
        _fail(f"--metrics-port serves one process's metrics: with --processes {processes} "
              "they would all take the same port (run one worker per port instead)")
    events_on = events or bool(app.conf.worker_send_task_events)
    supervised = os.environ.get("AIOQUEUE_SUPERVISED") == "1"
    if not supervised:
        if log_format is LogFormat.json:
            typer.echo(_json_line(
                "aioqueue worker starting", app=app.main, where=where,
                broker=app.display_broker_url, concurrency=size, processes=processes,
                queues=names, beat=beat, task_events=events_on, metrics_port=metrics_port,
                tasks=sorted(app.tasks)))
            if not app.tasks:
                typer.echo(_json_line(_no_tasks_warning(where), "WARNING"), err=True)
        else:
            typer.echo(_banner(app, where, size, names, beat, processes, max_tasks, max_memory,
                               events_on, metrics_port))
            if not app.tasks:
                typer.echo(_no_tasks_warning(where), err=True)
        # Recycling needs someone to start the replacement: a supervisor, even for one.
        if processes > 1 or max_tasks is not None or max_memory is not None:
            from ._supervisor import supervise

            raise typer.Exit(supervise(sys.argv, processes, max_tasks=max_tasks,
                                       max_memory_kb=max_memory, burst=burst))
    w = app.worker(concurrency=size, queues=names, burst=burst, beat=beat, name=name)
    # What app.worker() may not take (yet): then the Worker is built here, as it would be.
    extra: dict[str, Any] = {}
    if supervised and max_tasks is not None:
        extra["max_tasks"] = max_tasks  # the worker stops itself after max_tasks
    if events:
        extra["events"] = True
    if metrics_port is not None:
        extra["metrics_port"] = metrics_port
    if extra:
        if all(_accepts(app.worker, key) for key in extra):
            w = app.worker(concurrency=size, queues=names, burst=burst, beat=beat,
                           name=w.name, **extra)
        else:
            w = Worker(app, concurrency=w.concurrency, queues=w.queues, burst=burst,
                       beat=beat, name=w.name, **extra)

    async def serve() -> None:
        try:
            await w.serve()
        finally:
            await app.close()

    _run(serve)
    if supervised and max_tasks is not None and w.processed >= max_tasks:
        raise typer.Exit(RECYCLE_EXIT_CODE)  # "replace me", to the supervisor


# -- call --------------------------------------------------------------------------------------
def _parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _json_option(text: str, option: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"{option} is not valid JSON: {exc}")
    if not isinstance(value, kind):
        _fail(f"{option} must be a JSON {'array' if kind is list else 'object'}, not {text}")
    return value


def _unknown_task(task_name: str, app: AioQueue, where: str) -> str:
    import difflib

    names = sorted(app.tasks)
    close = difflib.get_close_matches(task_name, names, n=3, cutoff=0.85)
    # Also by the function's name alone: "add" for "proj.tasks.add".
    by_short: dict[str, list[str]] = {}
    for name in names:
        by_short.setdefault(name.rpartition(".")[2], []).append(name)
    for short in difflib.get_close_matches(task_name.rpartition(".")[2], list(by_short), n=3,
                                           cutoff=0.75):
        close += [name for name in by_short[short] if name not in close]
    message = f"task {task_name!r} is not registered in {where}"
    if close:
        return f"{message}; did you mean {' or '.join(repr(n) for n in close[:3])}?"
    if names:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        message += f" (it registers {shown})"
    else:
        message += " (it registers no tasks)"
    return f"{message}; --no-check sends it anyway"


@cli.command()
def call(
    ctx: typer.Context,
    first: Annotated[str | None, typer.Argument(
        metavar="APP", show_default=False,
        help="The app as -A takes it; leave it out when you pass -A.")] = None,
    second: Annotated[str | None, typer.Argument(
        metavar="TASK_NAME", show_default=False,
        help="The task's registered name, for example proj.tasks.add.")] = None,
    words: Annotated[list[str] | None, typer.Argument(
        metavar="ARG", show_default=False,
        help="Arguments, each parsed as JSON, else taken as a string (or use -a).")]
    = None,
    app_opt: AppOpt = None,
    args: Annotated[str | None, typer.Option(
        "--args", "-a", show_default=False,
        help="Positional arguments as a JSON array, for example -a '[1, 2]'.")] = None,
    kwargs: Annotated[str | None, typer.Option(
        "--kwargs", "-k", show_default=False,
        help="Keyword arguments as a JSON object, for example -k '{\"x\": 1}'.")] = None,
    countdown: Annotated[float | None, typer.Option(
        "--countdown", show_default=False, help="Seconds to wait before running.")] = None,
    eta: Annotated[str | None, typer.Option(
        "--eta", show_default=False,
        help="When to run: an ISO 8601 date and time (UTC without a zone).")] = None,
    queue: Annotated[str | None, typer.Option("--queue", "-Q", show_default=False,
                                              help="Default: the task's route.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait and print the result.")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", help="With --wait.")] = None,
    no_check: Annotated[bool, typer.Option(
        "--no-check", help="Send even if the app does not register TASK_NAME (a task "
                           "that only other code's workers run).")] = False,
) -> None:
    """Send a task by name and print its id (and, with --wait, its result)."""
    rest = [w for w in (first, second) if w is not None] + list(words or [])
    positional_app = None
    if not (app_opt or ctx.find_root().params.get("app_name")):
        if not rest:
            _app_target(ctx, None, None)  # fails: which app?
        positional_app = rest.pop(0)
    if not rest:
        _fail("which task? for example: aioqueue -A proj call proj.tasks.add -a '[1, 2]'")
    task_name, *arg_words = rest
    app, where = find_app(_app_target(ctx, positional_app, app_opt))
    if args is not None and arg_words:
        _fail("give the arguments either as ARG... or with -a/--args, not both")
    positional = (_json_option(args, "-a/--args", list) if args is not None
                  else [_parse_arg(a) for a in arg_words])
    parsed_kwargs: dict[str, Any] = (_json_option(kwargs, "-k/--kwargs", dict)
                                     if kwargs is not None else {})
    if countdown is not None and eta is not None:
        _fail("--countdown and --eta both say when: give one")
    when: datetime | None = None
    if eta is not None:
        try:
            when = datetime.fromisoformat(eta)
        except ValueError:
            _fail(f"--eta {eta!r} is not an ISO 8601 date and time, e.g. 2030-01-31T09:30:00")
    if not no_check:
        _import_tasks(app, where)
    if not no_check and task_name not in app.tasks:
        _fail(_unknown_task(task_name, app, where))

    async def run() -> None:
        try:
            handle = await app.send_task(task_name, positional, parsed_kwargs,
                                         countdown=countdown, eta=when, queue=queue)
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


# -- beat, dead, status ------------------------------------------------------------------------
@cli.command()
def beat(
    ctx: typer.Context,
    target: TargetArg = None,
    app_opt: AppOpt = None,
    list_: Annotated[bool, typer.Option("--list", help="Print schedules and next fire times.")]
    = False,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "info",
) -> None:
    """Run the periodic scheduler (several at once are safe: one leads, each tick fires once)."""
    app, where = find_app(_app_target(ctx, target, app_opt))
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
    _import_tasks(app, where)  # so that tasks of include=[...] count as registered
    try:
        scheduler = beat_module.Beat(app)
    except AioQueueError as exc:
        _fail(str(exc))
    for unknown in scheduler.unknown_tasks():
        typer.echo(f"warning: schedule names task {unknown!r}, which {where} does not "
                   "register", err=True)

    async def run() -> None:
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


QueueOpt = Annotated[str | None, typer.Option("--queue", "-Q", help="Default: the app's.",
                                              show_default=False)]


def _run_dead(ctx: typer.Context, target: str | None, app_opt: str | None, queue: str | None,
              action: str, limit: int = 100) -> None:
    app, _ = find_app(_app_target(ctx, target, app_opt))
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
def dead_list(ctx: typer.Context, target: TargetArg = None, app_opt: AppOpt = None,
              queue: QueueOpt = None,
              limit: Annotated[int, typer.Option("--limit")] = 100) -> None:
    """Show dead letters with the reason each was dead-lettered."""
    _run_dead(ctx, target, app_opt, queue, "list", limit)


@dead_cli.command("requeue")
def dead_requeue(ctx: typer.Context, target: TargetArg = None, app_opt: AppOpt = None,
                 queue: QueueOpt = None) -> None:
    """Move every dead letter back to its queue."""
    _run_dead(ctx, target, app_opt, queue, "requeue")


@dead_cli.command("purge")
def dead_purge(ctx: typer.Context, target: TargetArg = None, app_opt: AppOpt = None,
               queue: QueueOpt = None) -> None:
    """Delete every dead letter of the queue."""
    _run_dead(ctx, target, app_opt, queue, "purge")


# -- operating: status, inspect, control, queues, result, purge, events, dashboard -------------
OPS_COMMANDS = ("status", "inspect", "control", "queues", "result", "purge", "events",
                "dashboard")
inspect_cli = typer.Typer(
    help="Ask the running workers what they do: active, scheduled, reserved, registered, "
         "stats, revoked (as celery inspect).", no_args_is_help=True)
control_cli = typer.Typer(
    help="Tell the running workers what to do: ping, shutdown, rate-limit, cancel (as celery "
         "control).", no_args_is_help=True)
cli.add_typer(inspect_cli, name="inspect")
cli.add_typer(control_cli, name="control")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout "
                                                      "(for scripts) instead of tables.")]
DestinationOpt = Annotated[str | None, typer.Option(
    "--destination", "-d", metavar="WORKER", show_default=False,
    help="Only this worker (its name, as aioqueue status lists it). Default: every worker.")]
TimeoutOpt = Annotated[float | None, typer.Option(
    "--timeout", "-t", min=0.0, metavar="SECONDS", show_default=False,
    help="How long to wait for the workers' answers (default: 1).")]
QueuesOpt = Annotated[list[str] | None, typer.Option(
    "--queues", "-Q", show_default=False,
    help="Queues (comma-separated or repeated). Default: every known queue.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", "--force", "-f",
                                      help="Do not ask for confirmation.")]

#: How many of the newest events ``aioqueue result`` looks through for a task's timings.
RESULT_EVENTS_SCAN = 5000
#: Final task events, as ``aioqueue result`` reads them.
_FINAL_EVENTS = frozenset({EventType.SUCCEEDED, EventType.FAILED, EventType.RETRIED,
                           EventType.REVOKED, EventType.DEAD})

T = TypeVar("T")


def _ops_app(ctx: typer.Context, target: str | None, app_opt: str | None,
             broker: str | None, prefix: str | None) -> AioQueue:
    """The app an operating command works on: the user's (-A, MODULE:ATTR), or a bare one on
    ``--broker`` (with ``--prefix``) where the app cannot be imported."""
    params = ctx.find_root().params
    url = broker or params.get("broker_url")
    key_prefix = prefix or params.get("key_prefix")
    named = target or app_opt or params.get("app_name")
    if url:
        if named:
            _fail(f"pass the app ({named}) or --broker, not both")
        try:
            return AioQueue("aioqueue", broker=url, key_prefix=key_prefix or "aioqueue")
        except AioQueueError as exc:
            _fail(str(exc))
    if key_prefix:
        _fail("--prefix goes with --broker (an app has its own key_prefix setting)")
    if not named:
        _fail("which app? pass -A, for example `aioqueue -A proj status`, or `aioqueue status "
              "proj:app`; where the app cannot be imported, --broker redis://HOST:PORT/DB")
    app, _ = find_app(_app_target(ctx, target, app_opt))
    return app


def _operate(app: AioQueue, work: Callable[[Monitor], Coroutine[Any, Any, T]]) -> T:
    """Run ``work(Monitor(app))`` on a loop of its own, then close the app's connections."""
    done: list[T] = []

    async def main() -> None:
        try:
            done.append(await work(Monitor(app)))
        finally:
            await app.close()

    _run(main)
    return done[0]


def _split_app(ctx: typer.Context, words: list[str] | None, app_given: bool,
               names: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """``[APP] NAME...``: the app comes first unless -A or --broker gave it."""
    params = ctx.find_root().params
    given = app_given or bool(params.get("app_name") or params.get("broker_url"))
    rest = list(words or [])
    if not given and len(rest) == len(names) + 1:
        return rest[0], rest[1:]
    if len(rest) != len(names):
        shown = " ".join(names)
        _fail(f"expected {shown}, got {' '.join(rest) or 'nothing'} (for example: aioqueue "
              f"-A proj {ctx.command_path.partition(' ')[2]} {shown})")
    return None, rest


def _queue_names(values: list[str] | None) -> list[str]:
    return [q.strip() for value in values or [] for q in value.split(",") if q.strip()]


def _jsonable(value: Any) -> Any:
    """``value`` when JSON can hold it, else its ``repr``."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _print_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, default=repr, ensure_ascii=False))


def _console() -> Console:
    from rich.console import Console

    # No markup: task names, ids and reprs are shown as they are ("add[1]" is no style).
    console = Console(markup=False, highlight=False, emoji=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200  # piped: whole ids rather than 80 columns of ellipses
    return console


def _cell(value: Any) -> Text:
    from rich.text import Text

    if value is None:
        return Text("-")
    if isinstance(value, float):
        return Text(f"{value:g}")
    if isinstance(value, list | tuple):
        return Text(", ".join(str(v) for v in value))
    return Text(str(value))


def _table(title: str | None, columns: list[str], rows: list[list[Any]],
           right: tuple[str, ...] = ()) -> RenderableType:
    """A table (under its title line); cells fold rather than lose characters."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table()
    for column in columns:
        table.add_column(Text(column), justify="right" if column in right else "left",
                         overflow="fold")
    for row in rows:
        table.add_row(*(_cell(value) for value in row))
    return table if title is None else Group(Text(title), table)


def age(seconds: float) -> str:
    """A duration as operators read it: ``42s``, ``3m12s``, ``2h05m``, ``3d04h``."""
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _seconds(value: float) -> str:
    return f"{value:.3f}s" if value < 60 else age(value)


def _worker_doc(info: WorkerInfo) -> dict[str, Any]:
    return {**msgspec.structs.asdict(info), "uptime_s": round(info.uptime_s, 3)}


def _queue_doc(queue: QueueDetails, now: float) -> dict[str, Any]:
    oldest = queue.oldest_waiting_at
    return {"name": queue.name, "waiting": queue.waiting, "running": queue.running,
            "delayed": queue.delayed, "dead": queue.dead, "oldest_waiting_at": oldest,
            "oldest_waiting_age_s": None if oldest is None else round(max(0.0, now - oldest),
                                                                      3)}


def _no_answer(destination: str | None) -> NoReturn:
    who = f"worker {destination!r}" if destination else "worker"
    typer.echo(f"no {who} answered (`aioqueue status` lists the live workers)", err=True)
    raise typer.Exit(1)


# -- status ------------------------------------------------------------------------------------
@cli.command()
def status(ctx: typer.Context, target: TargetArg = None, app_opt: AppOpt = None,
           queues: QueuesOpt = None, broker: BrokerOpt = None, prefix: PrefixOpt = None,
           as_json: JsonOpt = False) -> None:
    """Show the live workers and their load, then ready, delayed and dead counts per queue.

    With no worker running it says so (on stderr) and still exits 0.
    """
    app = _ops_app(ctx, target, app_opt, broker, prefix)
    names = _queue_names(queues)

    async def work(monitor: Monitor) -> tuple[list[WorkerInfo], list[QueueDetails],
                                              dict[str, str]]:
        return (await monitor.workers(), await monitor.queues(names or None),
                await monitor.rate_limits())

    workers, details, rate_limits = _operate(app, work)
    now = time.time()
    if as_json:
        _print_json({"workers": [_worker_doc(w) for w in workers],
                     "queues": [_queue_doc(q, now) for q in details],
                     "rate_limits": rate_limits})
        return
    if workers:
        _console().print(_table(
            f"{len(workers)} worker(s)",
            ["worker", "host", "pid", "queues", "concurrency", "running", "processed",
             "uptime", "load"],
            [[w.name, w.hostname, w.pid, w.queues, w.concurrency, w.running, w.processed,
              age(w.uptime_s), None if w.load is None else f"{w.load:.2f}"] for w in workers],
            right=("pid", "concurrency", "running", "processed", "uptime", "load")))
    else:
        typer.echo("no workers are running", err=True)
    for queue in details:
        typer.echo(f"{queue.name}: ready={queue.waiting} delayed={queue.delayed} "
                   f"dead={queue.dead}")
    for task_name, rate in rate_limits.items():
        typer.echo(f"rate limit {task_name}: {rate} (cluster-wide)")


# -- inspect -----------------------------------------------------------------------------------
def _inspect(ctx: typer.Context, what: str, target: str | None, app_opt: str | None,
             destination: str | None, timeout: float | None, broker: str | None,
             prefix: str | None, as_json: bool) -> None:
    app = _ops_app(ctx, target, app_opt, broker, prefix)
    answers = _operate(app, lambda monitor: monitor.inspect(
        what, destination=destination, timeout_s=timeout))
    if as_json:
        _print_json(answers)
    elif answers:
        console = _console()
        for worker_name, answer in answers.items():
            console.print(_answer_renderable(worker_name, what, answer))
    if not answers:
        _no_answer(destination)


#: Epoch-seconds fields of ``inspect stats``, shown as times.
_TIMES = frozenset({"started_at", "last_seen"})


def _answer_renderable(worker_name: str, what: str, answer: Any) -> RenderableType:
    """One worker's answer to ``inspect WHAT``: a table, or a line."""
    from rich.text import Text

    if isinstance(answer, list):
        if not answer:
            return Text(f"{worker_name}: no {what} - empty -")
        title = f"{worker_name}: {len(answer)} {what}"
        if all(isinstance(row, dict) for row in answer):
            columns = list(dict.fromkeys(key for row in answer for key in row))
            return _table(title, [c.replace("_", " ") for c in columns],
                          [[row.get(c) for c in columns] for row in answer])
        return _table(title, [what], [[row] for row in answer])
    if isinstance(answer, dict):
        return _table(f"{worker_name}: {what}", ["", "value"],
                      [[key, _clock(value) if key in _TIMES and isinstance(value, float)
                        else value] for key, value in answer.items()])
    return Text(f"{worker_name}: {answer}")


_INSPECT_HELP = {
    "active": "The tasks each worker runs now (id, task, queue, arguments, running for).",
    "scheduled": "The tasks each worker holds for later (aioqueue keeps delayed tasks in "
                 "Redis: see aioqueue queues).",
    "reserved": "The tasks each worker took and has not started (aioqueue takes only what "
                "it starts).",
    "registered": "The task names each worker knows.",
    "stats": "Each worker's description of itself: pid, queues, concurrency, processed...",
    "revoked": "The revoked task ids each worker knows.",
}


def _inspect_command(what: str) -> None:
    def command(ctx: typer.Context, target: TargetArg = None, app_opt: AppOpt = None,
                destination: DestinationOpt = None, timeout: TimeoutOpt = None,
                broker: BrokerOpt = None, prefix: PrefixOpt = None,
                as_json: JsonOpt = False) -> None:
        _inspect(ctx, what, target, app_opt, destination, timeout, broker, prefix, as_json)

    command.__doc__ = _INSPECT_HELP[what] + " Exit code 1 when no worker answers."
    command.__name__ = f"inspect_{what}"
    inspect_cli.command(what)(command)


for _what in _INSPECT_HELP:
    _inspect_command(_what)


# -- control -----------------------------------------------------------------------------------
WordsArg = Annotated[list[str] | None, typer.Argument(show_default=False)]


def _control(ctx: typer.Context, app: AioQueue, op: str, destination: str | None,
             timeout: float | None, as_json: bool, *, confirm: str | None = None,
             answered_or_fail: bool = True, **arguments: Any) -> None:
    async def work(monitor: Monitor) -> dict[str, Any] | None:
        if confirm is not None:
            live = [w.name for w in await monitor.workers()
                    if destination is None or w.name == destination]
            if not live:
                return {}
            who = ", ".join(live)
            if not typer.confirm(confirm.format(n=len(live), who=who), err=as_json):
                return None
        return await monitor.control(op, destination=destination, timeout_s=timeout,
                                     **arguments)

    answers = _operate(app, work)
    if answers is None:
        typer.echo("nothing sent", err=True)
        raise typer.Exit(1)
    if as_json:
        _print_json(answers)
    else:
        for worker_name, answer in answers.items():
            typer.echo(f"{worker_name}: {answer}")
    if not answers:
        if answered_or_fail:
            _no_answer(destination)
        typer.echo("no worker answered", err=True)


@control_cli.command("ping")
def control_ping(ctx: typer.Context, target: TargetArg = None, app_opt: AppOpt = None,
                 destination: DestinationOpt = None, timeout: TimeoutOpt = None,
                 broker: BrokerOpt = None, prefix: PrefixOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Ask every worker (or one) to answer pong. Exit code 1 when none answers."""
    app = _ops_app(ctx, target, app_opt, broker, prefix)
    _control(ctx, app, "ping", destination, timeout, as_json)


@control_cli.command("shutdown")
def control_shutdown(ctx: typer.Context, target: TargetArg = None, app_opt: AppOpt = None,
                     destination: DestinationOpt = None, timeout: TimeoutOpt = None,
                     broker: BrokerOpt = None, prefix: PrefixOpt = None,
                     yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Shut down every worker (or one) gracefully, after asking (unless --yes)."""
    app = _ops_app(ctx, target, app_opt, broker, prefix)
    _control(ctx, app, "shutdown", destination, timeout, as_json,
             confirm=None if yes else "Shut down {n} worker(s) ({who})?")


@control_cli.command("rate-limit")
def control_rate_limit(ctx: typer.Context,
                       words: Annotated[list[str] | None, typer.Argument(
                           metavar="[APP] TASK RATE", show_default=False,
                           help="The task's name and its rate, for example 10/s, 100/m, "
                                "1000/h (the app first unless -A or --broker).")] = None,
                       app_opt: AppOpt = None, destination: DestinationOpt = None,
                       timeout: TimeoutOpt = None, broker: BrokerOpt = None,
                       prefix: PrefixOpt = None, as_json: JsonOpt = False) -> None:
    """Set a task's cluster-wide rate limit, for example: rate-limit tasks.add 10/s.

    Kept in Redis (workers started later obey it too) and applied at once by running
    workers; 0 removes it. `status` lists the limits in force.
    """
    target, (task, rate) = _split_app(ctx, words, bool(app_opt or broker), ("TASK", "RATE"))
    if not re.fullmatch(r"\d+(\.\d+)?(/[smh])?", rate):
        _fail(f"rate {rate!r}: use a number of tasks per second, minute or hour, for example "
              "10/s, 100/m or 1000/h")
    app = _ops_app(ctx, target, app_opt, broker, prefix)
    _control(ctx, app, "rate_limit", destination, timeout, as_json, task=task, rate=rate)


@control_cli.command("cancel")
def control_cancel(ctx: typer.Context,
                   words: Annotated[list[str] | None, typer.Argument(
                       metavar="[APP] TASK_ID", show_default=False,
                       help="The task's id (the app first unless -A or --broker).")] = None,
                   app_opt: AppOpt = None, destination: DestinationOpt = None,
                   timeout: TimeoutOpt = None, broker: BrokerOpt = None,
                   prefix: PrefixOpt = None, as_json: JsonOpt = False) -> None:
    """Revoke a task and stop it where it runs (recorded, so a worker that takes it later
    does not run it either)."""
    target, (task_id,) = _split_app(ctx, words, bool(app_opt or broker), ("TASK_ID",))
    app = _ops_app(ctx, target, app_opt, broker, prefix)
    _control(ctx, app, "cancel", destination, timeout, as_json, answered_or_fail=False,
             task_id=task_id)
    if not as_json:
        typer.echo(f"revoked {task_id}")


# -- queues ------------------------------------------------------------------------------------
@cli.command("queues")
def queues_command(ctx: typer.Context, target: TargetArg = None, app_opt: AppOpt = None,
           queue_opt: QueuesOpt = None, broker: BrokerOpt = None, prefix: PrefixOpt = None,
           as_json: JsonOpt = False) -> None:
    """Per queue: messages waiting, running, delayed and dead, and how long the oldest
    waiting one has waited."""
    app = _ops_app(ctx, target, app_opt, broker, prefix)
    names = _queue_names(queue_opt)
    details = _operate(app, lambda monitor: monitor.queues(names or None))
    now = time.time()
    if as_json:
        _print_json([_queue_doc(q, now) for q in details])
        return
    _console().print(_table(
        None, ["queue", "waiting", "running", "delayed", "dead", "oldest waiting"],
        [[q.name, q.waiting, q.running, q.delayed, q.dead,
          None if q.oldest_waiting_at is None else age(now - q.oldest_waiting_at)]
         for q in details],
        right=("waiting", "running", "delayed", "dead", "oldest waiting")))


# -- result ------------------------------------------------------------------------------------
def _error_text(exc: BaseException) -> str:
    if isinstance(exc, RemoteTaskError):
        return str(exc)  # "module.Type: message"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _timings(events: list[tuple[str, Event]], task_id: str, now: float
             ) -> dict[str, float] | None:
    """Wait and run times of ``task_id`` from its newest events, if any were recorded."""
    final = started = sent = None
    for _, event in reversed(events):
        if event.task_id != task_id:
            continue
        if event.type in _FINAL_EVENTS:
            final = final or event
        elif event.type == EventType.STARTED:
            started = started or event
        elif event.type == EventType.SENT:
            sent = sent or event
    source = final or started
    if source is None:
        return None
    out: dict[str, float] = {}
    sent_at = source.sent_at if source.sent_at is not None else (
        None if sent is None else sent.timestamp)
    began = source.started_at
    if began is None and started is not None:
        began = started.started_at or started.timestamp
    if sent_at is not None and began is not None:
        out["wait_s"] = round(max(0.0, began - sent_at), 6)
    if final is not None and final.runtime is not None:
        out["run_s"] = round(final.runtime, 6)
    elif final is None and began is not None:
        out["running_for_s"] = round(max(0.0, now - began), 6)
    return out or None


@cli.command("result")
def result_command(ctx: typer.Context,
           words: Annotated[list[str] | None, typer.Argument(
               metavar="[APP] TASK_ID", show_default=False,
               help="The task's id (the app first unless -A or --broker).")] = None,
           app_opt: AppOpt = None, broker: BrokerOpt = None, prefix: PrefixOpt = None,
           as_json: JsonOpt = False) -> None:
    """Show a task's state, result or error with its traceback, when it finished, its
    retries and worker; with task events, also how long it waited and ran."""
    target, (task_id,) = _split_app(ctx, words, bool(app_opt or broker), ("TASK_ID",))
    app = _ops_app(ctx, target, app_opt, broker, prefix)

    async def work(monitor: Monitor) -> tuple[ResultInfo, list[tuple[str, Event]]]:
        return await monitor.task(task_id), await monitor.recent_events(RESULT_EVENTS_SCAN)

    info, events = _operate(app, work)
    now = time.time()
    timings = _timings(events, task_id, now)
    failed = isinstance(info.result, BaseException)
    error = _error_text(info.result) if failed else None
    value = None if failed else _jsonable(info.result)
    if as_json:
        _print_json({
            "id": info.id, "task": info.task, "state": str(info.state), "result": value,
            "error": error, "traceback": info.traceback,
            "date_done": None if info.date_done is None else info.date_done.isoformat(),
            "retries": info.retries, "worker": info.worker, "timings": timings})
        return
    lines = [f"id:        {info.id}", f"task:      {info.task or '-'}",
             f"state:     {info.state}"
             + (" (unknown id, or not run yet)" if info.state is State.PENDING else "")]
    if failed:
        lines.append(f"error:     {error}")
    elif info.state is not State.PENDING:
        lines.append(f"result:    {json.dumps(value, ensure_ascii=False)}")
    if info.date_done is not None:
        lines.append(f"date done: {info.date_done.isoformat()}")
    lines += [f"retries:   {info.retries}", f"worker:    {info.worker or '-'}"]
    for key, label in (("wait_s", "waited:    "), ("run_s", "ran:       "),
                       ("running_for_s", "running:   ")):
        if timings is not None and key in timings:
            lines.append(label + _seconds(timings[key]))
    typer.echo("\n".join(lines))
    if info.traceback:
        typer.echo("traceback:\n" + info.traceback.rstrip())


# -- purge -------------------------------------------------------------------------------------
@cli.command("purge")
def purge_command(ctx: typer.Context, target: TargetArg = None, app_opt: AppOpt = None,
          queue_opt: QueuesOpt = None, yes: YesOpt = False, broker: BrokerOpt = None,
          prefix: PrefixOpt = None, as_json: JsonOpt = False) -> None:
    """Delete the waiting and delayed messages of queues (every known queue by default),
    asking first for each queue unless --yes. Running tasks and dead letters stay."""
    app = _ops_app(ctx, target, app_opt, broker, prefix)
    names = _queue_names(queue_opt)

    async def work(monitor: Monitor) -> tuple[dict[str, int], list[str]]:
        purged: dict[str, int] = {}
        kept: list[str] = []
        for queue in await monitor.queues(names or None):
            count = queue.waiting + queue.delayed
            if count == 0:
                if not as_json:
                    typer.echo(f"queue {queue.name}: nothing to purge")
                purged[queue.name] = 0
                continue
            if not yes and not typer.confirm(
                    f"Delete {count} waiting and delayed messages from queue {queue.name}?",
                    err=as_json):
                kept.append(queue.name)
                if not as_json:
                    typer.echo(f"queue {queue.name}: kept")
                continue
            purged[queue.name] = await monitor.purge(queue.name, who="cli")
            if not as_json:
                typer.echo(f"queue {queue.name}: deleted {purged[queue.name]} message(s)")
        return purged, kept

    purged, kept = _operate(app, work)
    if as_json:
        _print_json({"purged": purged, "kept": kept})


# -- events ------------------------------------------------------------------------------------
def _clock(timestamp: float, *, date: bool = True) -> str:
    when = datetime.fromtimestamp(timestamp)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if date else when.strftime("%H:%M:%S")


def _event_subject(event: Event) -> str:
    if event.task_id is not None:
        return f"{event.name or '?'}[{event.task_id}]"
    return event.worker or "-"


def _event_details(event: Event) -> list[str]:
    """``key=value`` words of what an event says beyond its type and subject."""
    parts: list[str] = []
    info = event.info or {}
    if event.task_id is None:  # a worker event
        for key in ("queues", "concurrency", "running", "processed"):
            if key in info:
                value = info[key]
                shown = ",".join(map(str, value)) if isinstance(value, list) else value
                parts.append(f"{key}={shown}")
        return parts
    if event.worker:
        parts.append(f"worker={event.worker}")
    if event.type == EventType.SENT and event.queue:
        parts.append(f"queue={event.queue}")
    if event.type in (EventType.SENT, EventType.STARTED):
        parts += [f"args={event.args}", f"kwargs={event.kwargs}"]
    if event.runtime is not None:
        parts.append(f"runtime={event.runtime:.4f}s")
    if event.result is not None:
        parts.append(f"result={event.result}")
    if event.exception is not None:
        parts.append(f"exception={event.exception}")
    if event.retries:
        parts.append(f"retries={event.retries}")
    if "reason" in info:
        parts.append(f"reason={info['reason']}")
    return parts


def event_line(event: Event) -> str:
    """One event as ``aioqueue events --dump`` prints it."""
    return " ".join([_clock(event.timestamp), event.type, _event_subject(event),
                     *_event_details(event)])


def _event_doc(stream_id: str, event: Event) -> dict[str, Any]:
    fields = msgspec.structs.asdict(event)
    fields.pop("payload", None)
    return {"stream_id": stream_id, **{k: v for k, v in fields.items() if v is not None}}


class EventsView:
    """What ``aioqueue events`` shows live: tasks finished per second over the last minute,
    per-task counts by state, and the latest events."""

    LATEST = 15
    WINDOW_S = 60
    _BARS = " ▁▂▃▄▅▆▇█"

    def __init__(self, since: float) -> None:
        #: Events older than this are listed but not counted.
        self.since = since
        self.per_second: Counter[int] = Counter()
        self.by_task: dict[str, Counter[str]] = {}
        self.latest: deque[Event] = deque(maxlen=self.LATEST)
        self.seen = 0

    def add(self, event: Event) -> None:
        self.latest.append(event)
        self.seen += 1
        if event.task_id is None or event.timestamp < self.since:
            return
        state = STATE_OF.get(event.type, event.type)
        self.by_task.setdefault(event.name or "?", Counter())[state] += 1
        if event.type in (EventType.SUCCEEDED, EventType.FAILED):
            self.per_second[int(event.timestamp)] += 1

    def render(self, now: float) -> RenderableType:
        from rich.console import Group
        from rich.text import Text

        last = int(now) - 1  # the last whole second
        for second in [s for s in self.per_second if s <= last - self.WINDOW_S]:
            del self.per_second[second]
        counts = [self.per_second.get(s, 0) for s in range(last - self.WINDOW_S + 1, last + 1)]
        peak = max(counts)
        bars = "".join(self._BARS[0 if peak == 0 else -(-8 * n // peak)] for n in counts)
        throughput = Text(
            f"tasks finished per second, last {self.WINDOW_S} s: now {counts[-1]}/s, "
            f"average {sum(counts) / self.WINDOW_S:.2f}/s, peak {peak}/s\n|{bars}|")
        states = [s for s in STATE_OF.values()
                  if any(s in counter for counter in self.by_task.values())]
        per_task = _table(
            f"per task, since {_clock(self.since, date=False)}", ["task", *states, "total"],
            [[name, *(counter.get(s, 0) for s in states), sum(counter.values())]
             for name, counter in sorted(self.by_task.items())],
            right=(*states, "total"))
        latest = _table(
            f"latest events ({self.seen} seen)", ["time", "event", "task / worker", "details"],
            [[_clock(e.timestamp, date=False), e.type, _event_subject(e),
              " ".join(_event_details(e))] for e in reversed(self.latest)])
        if not self.by_task:
            per_task = Text("no task events in the last minute (workers record them with -E, "
                            "or the worker_send_task_events setting)")
        return Group(throughput, per_task, latest)


async def _follow(monitor: Monitor, backlog: int, duration: float | None,
                  on_event: Callable[[str, Event], None]) -> None:
    with anyio.move_on_after(duration):
        async for stream_id, event in monitor.tail(backlog=backlog, block_s=0.5):
            on_event(stream_id, event)


@cli.command("events")
def events_command(ctx: typer.Context, target: TargetArg = None, app_opt: AppOpt = None,
           dump: Annotated[bool, typer.Option(
               "--dump", help="Print each event as a line instead of the live view.")] = False,
           as_json: Annotated[bool, typer.Option(
               "--json", help="Print each event as one JSON object per line.")] = False,
           duration: Annotated[float | None, typer.Option(
               "--duration", min=0.0, metavar="SECONDS", show_default=False,
               help="Stop after this many seconds (default: until Ctrl-C).")] = None,
           backlog: Annotated[int, typer.Option(
               "--backlog", min=0, help="Also show this many events from before the start "
                                        "(the live view always counts the last minute).")] = 0,
           broker: BrokerOpt = None, prefix: PrefixOpt = None) -> None:
    """Follow task and worker events (workers record task events with -E): a live view of
    throughput, per-task counts and the latest events, or --dump / --json lines."""
    app = _ops_app(ctx, target, app_opt, broker, prefix)
    try:
        if as_json or dump:
            def line(stream_id: str, event: Event) -> None:
                typer.echo(json.dumps(_event_doc(stream_id, event), default=repr,
                                      ensure_ascii=False) if as_json else event_line(event))

            _operate(app, lambda monitor: _follow(monitor, backlog, duration, line))
        else:
            _operate(app, lambda monitor: _live_events(monitor, backlog, duration))
    except KeyboardInterrupt:
        pass


async def _live_events(monitor: Monitor, backlog: int, duration: float | None) -> None:
    from rich.live import Live

    started = time.time()
    view = EventsView(since=started - EventsView.WINDOW_S)
    # The last minute's events too, so the counts mean something from the first frame.
    primed = [e for _, e in await monitor.recent_events(max(backlog, 2000))]
    recent = [e for e in primed if e.timestamp >= view.since]
    for event in primed[-backlog:] if backlog else []:
        if event.timestamp < view.since:
            view.latest.append(event)
    for event in recent:
        view.add(event)
    with Live(view.render(time.time()), console=_console(), auto_refresh=False,
              redirect_stdout=False, redirect_stderr=False) as live:

        async def redraw() -> None:
            while True:
                await anyio.sleep(0.5)
                live.update(view.render(time.time()), refresh=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(redraw)
            await _follow(monitor, 0, duration, lambda _, event: view.add(event))
            tg.cancel_scope.cancel()
        live.update(view.render(time.time()), refresh=True)


# -- dashboard ---------------------------------------------------------------------------------
@cli.command("dashboard")
def dashboard_command(
    ctx: typer.Context, target: TargetArg = None, app_opt: AppOpt = None,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on; beyond loopback only with authentication.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="Port to listen on (0: any free one).")] = 5555,
    read_only: Annotated[bool, typer.Option(
        "--read-only", help="Show, never act (no purge, retry, revoke, shutdown).")] = False,
    user: Annotated[str | None, typer.Option(
        "--user", metavar="USER", show_default=False,
        help="Basic authentication: the user name (with --password).")] = None,
    password: Annotated[str | None, typer.Option(
        "--password", metavar="PASSWORD", show_default=False,
        envvar="AIOQUEUE_DASHBOARD_PASSWORD",
        help="Basic authentication: the password (better from the environment).")] = None,
    basic_auth: Annotated[str | None, typer.Option(
        "--basic-auth", metavar="USER:PASSWORD", show_default=False,
        envvar="AIOQUEUE_DASHBOARD_BASIC_AUTH",
        help="Basic authentication in one option (as Flower's), instead of --user and "
             "--password.")] = None,
    token: Annotated[str | None, typer.Option(
        "--token", metavar="TOKEN", show_default=False, envvar="AIOQUEUE_DASHBOARD_TOKEN",
        help="Bearer-token authentication instead of a user and password.")] = None,
    broker: BrokerOpt = None, prefix: PrefixOpt = None,
) -> None:
    """Serve the web dashboard: workers, queues, events, charts and actions."""
    if basic_auth is not None:
        if user is not None or password is not None:
            _fail("pass --basic-auth or --user and --password, not both")
        user, sep, password = basic_auth.partition(":")
        if not (sep and user and password):
            _fail("--basic-auth takes USER:PASSWORD")
    if (user is None) != (password is None):
        _fail("--user and --password go together")
    if token is not None and user is not None:
        _fail("pass --user and --password, or --token, not both")
    app = _ops_app(ctx, target, app_opt, broker, prefix)
    try:
        module = importlib.import_module("aioqueue.dashboard")
    except ModuleNotFoundError as exc:
        if exc.name in ("aioqueue.dashboard", None):
            _fail("this aioqueue has no dashboard (aioqueue.dashboard is missing)")
        _fail(f"the dashboard needs {exc.name}: pip install 'aioqueue[dashboard]'")
    serve = module.serve

    async def run() -> None:
        try:
            await serve(app, host=host, port=port, read_only=read_only, username=user,
                        password=password, token=token)
        finally:
            await app.close()

    try:
        _run(run)
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, the address is not this machine's
        typer.echo(f"Error: cannot serve the dashboard on {host}:{port}: {exc}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    """Entry point of the ``aioqueue`` script."""
    cli(prog_name="aioqueue")
