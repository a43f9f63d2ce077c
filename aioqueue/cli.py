"""The ``aioqueue`` command: a thin Typer layer that parses, imports the app and delegates.

Celery users' habits work: ``aioqueue -A proj worker -l info`` (or ``worker -A proj``, or the
positional ``worker proj:app``) finds the app as ``celery -A`` does (:func:`find_app`),
``aioqueue -A proj call proj.add -a '[1, 2]' -k '{}'`` sends a task by name, ``--version``
prints what a bug report needs. A user's import error is one short message pointing at the
user's own file and line (exit code 2), never a traceback through aioqueue and importlib.

Command help is what ``--help`` prints, so command docstrings here are plain text (no reST).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import platform
import re
import socket
import sys
import sysconfig
import traceback
from collections.abc import Callable, Coroutine
from datetime import datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version
from types import ModuleType
from typing import Annotated, Any, NoReturn

import anyio
import typer

from . import __version__
from ._concurrency import run_main
from ._supervisor import RECYCLE_EXIT_CODE
from .app import AioQueue
from .errors import AioQueueError
from .worker import Worker

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
def versions() -> str:
    """What ``aioqueue --version`` prints: aioqueue, Python, redis-py and the platform."""
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


@cli.callback()
def _root(
    app_name: AppOpt = None,
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
    root = ctx.find_root().params.get("app_name")
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


def _setup_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        _fail(f"unknown log level {level!r}: use debug, info, warning, error or critical")
    logging.basicConfig(level=numeric, format=LOG_FORMAT, stream=sys.stderr)


def _banner(app: AioQueue, where: str, concurrency: int, queues: list[str], beat: bool,
            processes: int, max_tasks: int | None, max_memory_kb: int | None) -> str:
    loop = "uvloop" if _has_uvloop() else "asyncio"
    lines = [
        f" -------------- aioqueue@{socket.gethostname()} v{__version__} "
        f"({platform.python_implementation()} {platform.python_version()})",
        f" app:          {app.main} ({where})",
        f" broker:       {app.display_broker_url}",
        f" results:      {app.display_broker_url} (expire after {app.conf.result_expires_s:g}s)",
        f" concurrency:  {concurrency} ({loop})"
        + (f" x {processes} processes" if processes > 1 else ""),
        f" queues:       {', '.join(queues)}",
        f" serializer:   {app.conf.task_serializer}",
    ]
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


def _queues(values: list[str] | None, app: AioQueue) -> list[str]:
    names = [q.strip() for value in values or [] for q in value.split(",") if q.strip()]
    return names or [app.conf.task_default_queue]


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
                                                          "or repeated).")] = None,
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
) -> None:
    """Run a worker, for example: aioqueue -A proj worker -c 100 -Q default -l info.

    --max-tasks-per-child and --max-memory-per-child default to the app's settings
    worker_max_tasks_per_child and worker_max_memory_per_child (as Celery's).
    """
    app, where = find_app(_app_target(ctx, target, app_opt))
    _import_tasks(app, where)
    _setup_logging(loglevel)
    size = concurrency or app.conf.worker_concurrency
    names = _queues(queues, app)
    max_tasks = (max_tasks_per_child if max_tasks_per_child is not None
                 else _positive_setting(app, "worker_max_tasks_per_child"))
    max_memory = (max_memory_per_child if max_memory_per_child is not None
                  else _positive_setting(app, "worker_max_memory_per_child"))
    supervised = os.environ.get("AIOQUEUE_SUPERVISED") == "1"
    if not supervised:
        typer.echo(_banner(app, where, size, names, beat, processes, max_tasks, max_memory))
        if not app.tasks:
            typer.echo(_no_tasks_warning(where), err=True)
        # Recycling needs someone to start the replacement: a supervisor, even for one.
        if processes > 1 or max_tasks is not None or max_memory is not None:
            from ._supervisor import supervise

            raise typer.Exit(supervise(sys.argv, processes, max_tasks=max_tasks,
                                       max_memory_kb=max_memory, burst=burst))
    w = app.worker(concurrency=size, queues=names, burst=burst, beat=beat, name=name)
    if supervised and max_tasks is not None:
        # The worker stops itself after max_tasks; app.worker() does not take it (yet).
        max_kw: dict[str, Any] = {"max_tasks": max_tasks}
        if _accepts(app.worker, "max_tasks"):
            w = app.worker(concurrency=size, queues=names, burst=burst, beat=beat,
                           name=w.name, **max_kw)
        else:
            w = Worker(app, concurrency=w.concurrency, queues=w.queues, burst=burst,
                       beat=beat, name=w.name, **max_kw)

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


@cli.command()
def status(ctx: typer.Context, target: TargetArg = None, app_opt: AppOpt = None,
           queues: Annotated[list[str] | None, typer.Option("--queues", "-Q")] = None) -> None:
    """Print ready, delayed and dead message counts per queue."""
    app, _ = find_app(_app_target(ctx, target, app_opt))
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
    cli(prog_name="aioqueue")
