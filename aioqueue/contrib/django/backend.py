"""A backend for Django's Tasks framework that runs tasks on aioqueue workers.

::

    TASKS = {
        "default": {
            "BACKEND": "aioqueue.contrib.django.TasksBackend",
            "OPTIONS": {"app": "proj.celery:app"},   # the AioQueue (default: the current app)
        }
    }

Works with ``django.tasks`` (Django 6) and, when that is absent, the ``django_tasks``
backport. How a Django task travels:

* ``enqueue()`` sends one aioqueue message to a runner task the backend registers on the
  app -- ``aioqueue.django_task`` (a thread, for ``def`` tasks) or
  ``aioqueue.django_task_async`` (the event loop, for ``async def`` tasks) -- carrying the
  Django task's module path, its arguments, and its ``queue_name`` (the aioqueue queue;
  Django's ``"default"`` is the app's default queue) and ``run_after`` (the eta). The
  Django result id is the aioqueue task id. A small record beside the result (the task's
  module path and arguments) lets ``get_result`` answer before the task has run.
* The worker imports the task's module (only a module already imported, or one inside
  an ``INSTALLED_APPS`` package: a message cannot make a worker import anything else),
  checks it names a Django task, and runs it; with ``takes_context=True`` it gets a
  ``TaskContext``. The return value is stored as aioqueue's result (JSON-normalised, as
  Django requires); an exception fails the aioqueue task.
* ``get_result()`` maps aioqueue's state: nothing yet / PENDING / RETRY -> READY,
  STARTED -> RUNNING, SUCCESS -> SUCCESSFUL, FAILURE / REVOKED -> FAILED (with a
  ``TaskError`` naming the exception class and its traceback).

Priorities: Django's -100..100 (higher first, 0 by default) map onto aioqueue's lanes 0..9
(0 first) by :func:`lane_of`: 0 and above run in lane 0 with aioqueue's own default (nothing
runs before it), and below 0 in nine steps down to lane 9. Limits: ``started_at`` is not
recorded (None).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from ..._sync import portal
from ..._time import to_epoch
from ...errors import ConfigurationError, NotRegistered
from ...message import ResultRecord, State

if TYPE_CHECKING:
    from ...app import AioQueue
    from ...task import Task

__all__ = ("ASYNC_RUNNER", "SYNC_RUNNER", "TasksBackend", "register_configured_backends")

log = logging.getLogger("aioqueue.django")

#: The aioqueue task that runs a Django ``def`` task (in a worker thread).
SYNC_RUNNER = "aioqueue.django_task"
#: The aioqueue task that runs a Django ``async def`` task (on the worker's event loop).
ASYNC_RUNNER = "aioqueue.django_task_async"
#: Suffix of the id under which the enqueue record (module path, arguments) is stored.
_META_SUFFIX = ":django"


@dataclass(frozen=True)
class _Framework:
    """The parts of Django's Tasks framework used here, from whichever package has it."""

    package: str
    BaseTaskBackend: Any
    Task: Any
    TaskResult: Any
    TaskResultStatus: Any
    TaskError: Any
    TaskContext: Any
    DEFAULT_QUEUE_NAME: str
    backends: Any  # the TASKS handler: backends[alias]
    signals: Any
    ResultDoesNotExist: Any
    normalize_json: Callable[[Any], Any]
    SUCCESSFUL: Any  # 6.0 and the backport: SUCCESSFUL; later versions: SUCCEEDED


def _load_framework() -> _Framework:
    for package in ("django.tasks", "django_tasks"):
        try:
            root: Any = importlib.import_module(package)
        except ImportError:
            continue
        base: Any = importlib.import_module(f"{package}.base")
        backends_base: Any = importlib.import_module(f"{package}.backends.base")
        signals: Any = importlib.import_module(f"{package}.signals")
        exceptions: Any = importlib.import_module(f"{package}.exceptions")
        normalize_json = getattr(importlib.import_module("django.utils.json"), "normalize_json",
                                 None) if package == "django.tasks" else None
        if normalize_json is None:
            normalize_json = importlib.import_module(f"{package}.utils").normalize_json
        status = base.TaskResultStatus
        return _Framework(
            package=package,
            BaseTaskBackend=backends_base.BaseTaskBackend,
            Task=base.Task,
            TaskResult=base.TaskResult,
            TaskResultStatus=status,
            TaskError=base.TaskError,
            TaskContext=base.TaskContext,
            DEFAULT_QUEUE_NAME=getattr(base, "DEFAULT_TASK_QUEUE_NAME", "default"),
            backends=getattr(root, "task_backends", None) or root.tasks,
            signals=signals,
            ResultDoesNotExist=exceptions.TaskResultDoesNotExist,
            normalize_json=normalize_json,
            SUCCESSFUL=getattr(status, "SUCCESSFUL", None) or status.SUCCEEDED,
        )
    raise ImportError(
        "aioqueue.contrib.django.TasksBackend needs Django's Tasks framework: Django 6 "
        "(django.tasks) or, on Django 5, the backport (pip install django-tasks)")


_fw = _load_framework()


# -- helpers ---------------------------------------------------------------------------------
def _settings() -> Any:
    return importlib.import_module("django.conf").settings


def _datetime(epoch: float | None) -> datetime | None:
    """An epoch as Django expects it: aware UTC with ``USE_TZ``, else naive local time."""
    if epoch is None:
        return None
    moment = datetime.fromtimestamp(epoch, UTC)
    if not getattr(_settings(), "USE_TZ", True):
        timezone: Any = importlib.import_module("django.utils.timezone")
        moment = timezone.make_naive(moment)
    return moment


def _epoch(moment: datetime | None) -> float | None:
    """A Django datetime as an epoch (a naive one is in Django's current time zone)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        timezone: Any = importlib.import_module("django.utils.timezone")
        moment = timezone.make_aware(moment)
    return to_epoch(moment)


def _resolve_app(spec: Any) -> AioQueue:
    from ...app import AioQueue, current_app

    if spec is None:
        return current_app()
    if isinstance(spec, AioQueue):
        return spec
    if not isinstance(spec, str):
        raise ConfigurationError(f"TASKS OPTIONS 'app' must be 'module:attribute', not {spec!r}")
    module_name, sep, attribute = spec.partition(":")
    if not sep:
        module_name, _, attribute = spec.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(
            f"TASKS OPTIONS 'app': cannot find {spec!r} ({exc}); use 'proj.celery:app'"
        ) from exc
    if not isinstance(obj, AioQueue):
        raise ConfigurationError(f"TASKS OPTIONS 'app': {spec} is a {type(obj).__name__}, "
                                 "not an AioQueue")
    return obj


def _may_import(module_name: str) -> bool:
    """Whether a message may make this process import ``module_name``: only modules already
    imported, or inside the packages of INSTALLED_APPS."""
    if module_name in sys.modules:
        return True
    from . import installed_app_modules

    return any(module_name == app or module_name.startswith(app + ".")
               for app in installed_app_modules())


def _django_task(module_path: str, task_id: str | None = None) -> Any:
    """The Django task at ``module_path`` (``package.module.function``)."""
    module_name, _, attribute = module_path.rpartition(".")
    refused = NotRegistered(
        f"{module_path!r} is not a Django task of an installed app", task_id=task_id,
        task_name=module_path)
    if not module_name or not _may_import(module_name):
        raise refused
    found = getattr(importlib.import_module(module_name), attribute, None)
    if not isinstance(found, _fw.Task) or found.module_path != module_path:
        raise refused
    return found


def _new_result(task: Any, result_id: str, status: Any, *, args: Any, kwargs: Any,
                backend: str, enqueued_at: float | None = None, started_at: float | None = None,
                finished_at: float | None = None, worker_ids: list[str] | None = None,
                errors: list[Any] | None = None) -> Any:
    values: dict[str, Any] = {
        "task": task, "id": result_id, "status": status,
        "enqueued_at": _datetime(enqueued_at), "started_at": _datetime(started_at),
        "finished_at": _datetime(finished_at),
        "last_attempted_at": _datetime(started_at if started_at is not None else finished_at),
        "args": list(args), "kwargs": dict(kwargs), "backend": backend,
        "errors": errors or [], "worker_ids": worker_ids or [],
    }
    for f in dataclasses.fields(_fw.TaskResult):  # fields of later Django versions
        if (f.init and f.name not in values and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING):
            values[f.name] = {} if f.name.endswith("metadata") else None
    return _fw.TaskResult(**values)


def _set(result: Any, **changes: Any) -> None:
    for name, value in changes.items():
        object.__setattr__(result, name, value)  # TaskResult is frozen, as Django's own do


def _task_error(exc_type: str, traceback: str) -> Any:
    return _fw.TaskError(exception_class_path=exc_type, traceback=traceback)


# -- the worker side -------------------------------------------------------------------------
def _start(runner: Task[..., Any], module_path: str, args: list[Any], kwargs: dict[str, Any],
           backend: str, enqueued_at: float | None) -> tuple[Any, Any, tuple[Any, ...]]:
    request = runner.request
    django_task = _django_task(module_path, request.id)
    result = _new_result(
        django_task, request.id, _fw.TaskResultStatus.RUNNING, args=args, kwargs=kwargs,
        backend=backend, enqueued_at=enqueued_at, started_at=time.time(),
        worker_ids=[request.hostname or "aioqueue"] * max(1, request.deliveries))
    _fw.signals.task_started.send(sender=type(django_task.get_backend()), task_result=result)
    call_args: tuple[Any, ...] = tuple(args)
    if django_task.takes_context:
        call_args = (_fw.TaskContext(task_result=result), *call_args)
    return django_task, result, call_args


def _failed(django_task: Any, result: Any, exc: BaseException) -> NoReturn:
    """Record the failure on the Django result, send ``task_finished``, re-raise."""
    import traceback

    _set(result, status=_fw.TaskResultStatus.FAILED, finished_at=_datetime(time.time()))
    result.errors.append(_task_error(f"{type(exc).__module__}.{type(exc).__qualname__}",
                                     "".join(traceback.format_exception(exc))))
    _fw.signals.task_finished.send(sender=type(django_task.get_backend()), task_result=result)
    raise exc


def _succeeded(django_task: Any, result: Any, value: Any) -> Any:
    """Record the return value (JSON-normalised, as Django requires), send
    ``task_finished``; returns what aioqueue stores."""
    try:
        value = _fw.normalize_json(value)
    except (TypeError, ValueError) as exc:
        _failed(django_task, result, exc)
    _set(result, status=_fw.SUCCESSFUL, finished_at=_datetime(time.time()), _return_value=value)
    _fw.signals.task_finished.send(sender=type(django_task.get_backend()), task_result=result)
    return value


def run_django_task(runner: Task[..., Any], module_path: str, args: list[Any],
                    kwargs: dict[str, Any], backend: str,
                    enqueued_at: float | None = None) -> Any:
    """``aioqueue.django_task``: run a Django ``def`` task (in a worker thread)."""
    django_task, result, call_args = _start(runner, module_path, args, kwargs, backend,
                                            enqueued_at)
    try:
        value = django_task.call(*call_args, **kwargs)
    except Exception as exc:
        _failed(django_task, result, exc)
    return _succeeded(django_task, result, value)


async def run_django_task_async(runner: Task[..., Any], module_path: str, args: list[Any],
                                kwargs: dict[str, Any], backend: str,
                                enqueued_at: float | None = None) -> Any:
    """``aioqueue.django_task_async``: run a Django ``async def`` task on the event loop."""
    django_task, result, call_args = _start(runner, module_path, args, kwargs, backend,
                                            enqueued_at)
    try:
        value = await django_task.acall(*call_args, **kwargs)
    except Exception as exc:
        _failed(django_task, result, exc)
    return _succeeded(django_task, result, value)


def _register_runners(app: AioQueue) -> None:
    """Register the runner tasks on ``app`` (once; a worker needs them before any message)."""
    options: dict[str, Any] = {"bind": True, "track_started": True, "max_retries": 0}
    if SYNC_RUNNER not in app.tasks:
        app.task(name=SYNC_RUNNER, **options)(run_django_task)
    if ASYNC_RUNNER not in app.tasks:
        app.task(name=ASYNC_RUNNER, **options)(run_django_task_async)


def register_configured_backends() -> None:
    """Make every ``TASKS`` backend that is a :class:`TasksBackend`, so the runner tasks are
    registered on their apps (a worker calls this at start, through the Django fix-up)."""
    module_loading: Any = importlib.import_module("django.utils.module_loading")
    for alias, params in (getattr(_settings(), "TASKS", None) or {}).items():
        try:
            cls = module_loading.import_string(params.get("BACKEND", ""))
        except ImportError:
            continue  # Django reports it the first time that backend is used
        if isinstance(cls, type) and issubclass(cls, TasksBackend):
            backend = _fw.backends[alias]  # made now: registers its runners on its app
            log.debug("Django tasks backend %r runs on %r", alias, backend.app)


# -- the backend -----------------------------------------------------------------------------
_BaseTaskBackend: Any = _fw.BaseTaskBackend


def lane_of(django_priority: int) -> int:
    """Django's task priority (-100..100, higher first) as aioqueue's (0..9, 0 first): 0 and
    above share lane 0, aioqueue's default (nothing runs before it); below 0, nine steps."""
    if django_priority >= 0:
        return 0
    return min(9, math.ceil(-django_priority * 9 / 100))


class TasksBackend(_BaseTaskBackend):  # type: ignore[misc]
    """Django's Tasks framework on aioqueue (see the module docstring)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.app: AioQueue = _resolve_app(self.options.get("app"))
        _register_runners(self.app)

    # -- enqueue -------------------------------------------------------------------------------
    def _prepare(self, task: Any, args: Any, kwargs: Any) -> tuple[Any, Any]:
        from ...app import new_task_id

        self.validate_task(task)
        now = time.time()
        result = _new_result(task, new_task_id(), _fw.TaskResultStatus.READY, args=args,
                             kwargs=kwargs, backend=self.alias, enqueued_at=now)
        run_after = _epoch(task.run_after)
        runner = self.app.tasks[ASYNC_RUNNER if inspect.iscoroutinefunction(task.func)
                                else SYNC_RUNNER]
        queue = None if task.queue_name == _fw.DEFAULT_QUEUE_NAME else task.queue_name
        meta = ResultRecord(id=result.id + _META_SUFFIX, state=State.PENDING, task=runner.name,
                            date_done=now, result={
                                "module_path": task.module_path, "args": result.args,
                                "kwargs": result.kwargs, "backend": self.alias,
                                "queue_name": task.queue_name, "priority": task.priority,
                                "run_after": run_after, "enqueued_at": now})
        ttl = self.app.conf.result_expires_s + max(0.0, (run_after or now) - now)

        async def send() -> None:
            message = runner.apply_async(
                args=(task.module_path, result.args, result.kwargs, self.alias, now),
                task_id=result.id, queue=queue, priority=lane_of(task.priority),
                eta=None if run_after is None else datetime.fromtimestamp(run_after, UTC),
                reply=False)
            # Both commands leave in one write; the record first, so it is there as soon as
            # the task can run.
            await asyncio.gather(
                self.app.broker.set_result(meta.id, self.app.serializer.encode(meta), ttl),
                message)

        return result, send

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Send the task to the aioqueue workers; returns its READY ``TaskResult``."""
        result, send = self._prepare(task, args, kwargs)
        portal.call(send, "TasksBackend.enqueue() (use `await task.aenqueue()` in async code)")
        _fw.signals.task_enqueued.send(type(self), task_result=result)
        return result

    async def aenqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """``enqueue`` in async code, on the running loop (no thread hop)."""
        result, send = self._prepare(task, args, kwargs)
        await send()
        _fw.signals.task_enqueued.send(type(self), task_result=result)
        return result

    # -- results -------------------------------------------------------------------------------
    def get_result(self, result_id: str) -> Any:
        """The task's ``TaskResult`` from aioqueue's stored state; raises
        ``TaskResultDoesNotExist`` for an unknown (or expired) id."""
        ids = [result_id, result_id + _META_SUFFIX]
        raw = portal.call(lambda: self.app.broker.get_results(ids),
                          "TasksBackend.get_result() (use `await aget_result()` in async code)")
        return self._to_result(result_id, raw[0], raw[1])

    async def aget_result(self, result_id: str) -> Any:
        """``get_result`` in async code, on the running loop."""
        raw = await self.app.broker.get_results([result_id, result_id + _META_SUFFIX])
        return self._to_result(result_id, raw[0], raw[1])

    def _to_result(self, result_id: str, raw: bytes | None, raw_meta: bytes | None) -> Any:
        serializer = self.app.serializer
        meta_record = None if raw_meta is None else serializer.decode_record(raw_meta)
        meta = meta_record.result if meta_record is not None else None
        if not isinstance(meta, dict) or "module_path" not in meta:
            raise _fw.ResultDoesNotExist(result_id)
        task = _django_task(meta["module_path"], result_id)
        changes: dict[str, Any] = {}
        if meta.get("backend") not in (None, task.backend):
            changes["backend"] = meta["backend"]
        if meta.get("queue_name") not in (None, task.queue_name):
            changes["queue_name"] = meta["queue_name"]
        if meta.get("run_after") is not None:
            changes["run_after"] = _datetime(meta["run_after"])
        if changes:
            task = dataclasses.replace(task, **changes)
        record = None if raw is None else serializer.decode_record(raw)
        state = State.PENDING if record is None else record.state
        finished = record.date_done if record is not None and state in (
            State.SUCCESS, State.FAILURE, State.REVOKED) else None
        errors: list[Any] = []
        if state is State.SUCCESS:
            status = _fw.SUCCESSFUL
        elif state in (State.FAILURE, State.REVOKED):
            status = _fw.TaskResultStatus.FAILED
            assert record is not None
            exc_type = record.exc_type or "builtins.Exception"
            errors.append(_task_error(
                exc_type, record.traceback or f"{exc_type}: {record.exc_message or ''}\n"))
        elif state is State.STARTED:
            status = _fw.TaskResultStatus.RUNNING
        else:  # PENDING, RETRY
            status = _fw.TaskResultStatus.READY
        worker = record.worker if record is not None else None
        result = _new_result(task, result_id, status, args=meta.get("args", []),
                             kwargs=meta.get("kwargs", {}),
                             backend=str(meta.get("backend") or self.alias),
                             enqueued_at=meta.get("enqueued_at"), finished_at=finished,
                             worker_ids=[worker] if worker else [], errors=errors)
        if state is State.SUCCESS:
            assert record is not None
            _set(result, _return_value=record.result)
        return result
