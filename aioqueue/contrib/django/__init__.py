"""Django: Celery's Django idioms on aioqueue.

What a Celery user's Django project relies on, and where it lives here:

* ``Task.delay_on_commit`` / ``Task.apply_async_on_commit`` (Celery 5.4) call
  :func:`send_on_commit`: the task is sent when the current transaction commits, never on
  rollback, and at once outside a transaction (Django's ``transaction.on_commit``).
* ``app.autodiscover_tasks()`` calls :func:`installed_app_modules`: the module names of
  ``INSTALLED_APPS`` (it runs ``django.setup()`` first when nobody has yet).
* The worker fix-up, as Celery's ``celery.fixups.django``: :func:`fixup` (when
  ``DJANGO_SETTINGS_MODULE`` is set) or :func:`install` registers a ``task_context`` that
  calls ``django.db.close_old_connections()`` before and after every task run, in the
  thread that runs it (so a ``def`` task never inherits a broken or expired connection,
  and ``CONN_MAX_AGE`` is honoured as between two requests), and closes the caches after
  it; and a ``worker_init`` step that runs ``django.setup()`` if needed.
* :class:`TasksBackend` (imported lazily, from :mod:`.backend`): a backend for Django's
  Tasks framework, ``django.tasks`` (Django 6) or the ``django_tasks`` backport.

Django ships no type information, so everything from it is typed ``Any`` here.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ...errors import ConfigurationError

if TYPE_CHECKING:
    from ...app import AioQueue
    from ...task import Task
    from .backend import TasksBackend as TasksBackend

__all__ = (
    "DjangoFixup",
    "TasksBackend",
    "fixup",
    "install",
    "installed_app_modules",
    "send_on_commit",
)

log = logging.getLogger("aioqueue.django")

#: The environment variable whose presence makes :func:`fixup` install the fix-up.
SETTINGS_ENV = "DJANGO_SETTINGS_MODULE"


def _module(name: str) -> Any:
    """A Django module, typed ``Any`` (Django has no type information)."""
    return importlib.import_module(name)


def __getattr__(name: str) -> Any:
    # The Tasks backend needs django.tasks or django_tasks: import it only when asked for,
    # so delay_on_commit and the fix-up work with Django alone.
    if name == "TasksBackend":
        from .backend import TasksBackend

        return TasksBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- transactions ----------------------------------------------------------------------------
def send_on_commit(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> None:
    """Send ``task`` with these arguments when the current transaction commits.

    Nothing is sent if the transaction rolls back; outside a transaction (autocommit) it is
    sent at once, as ``django.db.transaction.on_commit`` does. ``options`` are
    ``apply_async``'s, plus ``using`` (the database alias whose transaction counts) and
    ``robust`` (Django's: an error while sending is logged instead of raised).
    """
    options = dict(options)
    using = options.pop("using", None)
    robust = bool(options.pop("robust", False))
    transaction = _module("django.db.transaction")

    def send() -> None:
        # Django runs on_commit callbacks in the committing thread, which runs no event loop
        # (Django refuses transactions in async code): a blocking send.
        task.apply_async(args, kwargs, **options)

    transaction.on_commit(send, using=using, robust=robust)


# -- discovery -------------------------------------------------------------------------------
def _setup_django() -> None:
    """``django.setup()`` unless Django's app registry is already populated."""
    apps = _module("django.apps").apps
    if apps.models_ready:  # ready, or inside an AppConfig.ready() of a populate() under way
        return
    if apps.loading:
        raise ConfigurationError(
            "Django is still importing its applications: app.autodiscover_tasks() (or a "
            "task) ran from inside an app module or models module; call it from "
            "proj/celery.py or after django.setup()")
    django = _module("django")
    improperly_configured = _module("django.core.exceptions").ImproperlyConfigured
    try:
        django.setup()
    except improperly_configured as exc:
        raise ConfigurationError(
            f"Django is not configured ({exc}): set {SETTINGS_ENV}, e.g. "
            f"os.environ.setdefault({SETTINGS_ENV!r}, 'proj.settings') in proj/celery.py"
        ) from exc


def installed_app_modules() -> list[str]:
    """The module names of Django's ``INSTALLED_APPS`` (their ``AppConfig.name``).

    What ``app.autodiscover_tasks()`` looks in for ``tasks`` modules, as Celery's. Runs
    ``django.setup()`` first if nobody has yet (a worker started with ``aioqueue worker
    proj.celery:app``).
    """
    _setup_django()
    apps = _module("django.apps").apps
    return [config.name for config in apps.get_app_configs()]


# -- the worker fix-up -----------------------------------------------------------------------
class _TaskRunContext:
    """Entered around one task run: Django's request-boundary clean-up, before and after.

    Celery's fix-up does this in its ``task_prerun``/``task_postrun`` handlers. Django keeps
    database connections per thread, so it must run in the thread that runs the task: for
    a ``def`` task ``app.task_context`` enters it there. For an ``async def`` task it runs
    on the event loop's thread, which holds no connection (Django refuses the ORM there),
    so it costs next to nothing.
    """

    __slots__ = ("fixup",)

    def __init__(self, fixup: DjangoFixup) -> None:
        self.fixup = fixup

    def __enter__(self) -> None:
        self.fixup.setup()
        self.fixup.close_database()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.fixup.close_database()
        self.fixup.close_cache()


class DjangoFixup:
    """Celery's Django fix-up for an aioqueue app (see the module docstring).

    Made and installed by :func:`install` (or :func:`fixup`); one per app.
    """

    def __init__(self, app: AioQueue) -> None:
        self.app = app
        self._setup_lock = threading.Lock()
        self._installed = False

    def install(self) -> DjangoFixup:
        """Register the task context and the worker-start step (once)."""
        if self._installed:
            return self
        from ...signals import worker_init

        self.app.task_context(self.task_context)
        worker_init.connect(self._on_worker_init)
        self._installed = True
        return self

    # -- hooks ---------------------------------------------------------------------------------
    def task_context(self, task: Task[Any, Any], request: Any) -> _TaskRunContext:
        """The ``app.task_context`` factory: clean-up before and after each run."""
        return _TaskRunContext(self)

    async def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app:
            return  # another app's worker in this process
        import asyncio

        # In a thread: an AppConfig.ready() may touch the database, which Django refuses
        # on a thread that runs an event loop.
        await asyncio.to_thread(self.on_worker_start)

    def on_worker_start(self) -> None:
        """What a worker does once before consuming: ``django.setup()`` if needed, make the
        configured aioqueue Tasks backends (so their runner tasks are registered), and warn
        about ``DEBUG`` (it keeps every query in memory, as Celery warns)."""
        self.setup()
        try:
            from .backend import register_configured_backends
        except ImportError:  # neither django.tasks nor the django_tasks backport
            pass
        else:
            register_configured_backends()
        if getattr(_module("django.conf").settings, "DEBUG", False):
            log.warning("Django's settings.DEBUG is on: it keeps every SQL query in memory, "
                        "which grows without bound in a worker; never use it in production")

    # -- steps -----------------------------------------------------------------------------------
    def setup(self) -> None:
        """``django.setup()`` unless done (thread-safe; cheap once done)."""
        if _module("django.apps").apps.ready:
            return
        with self._setup_lock:
            _setup_django()

    def close_database(self) -> None:
        """``django.db.close_old_connections()`` in this thread; never fails a task."""
        try:
            _module("django.db").close_old_connections()
        except Exception:
            log.warning("closing old database connections failed", exc_info=True)

    def close_cache(self) -> None:
        """``django.core.cache.close_caches()``, as Django does after each request."""
        try:
            _module("django.core.cache").close_caches()
        except Exception:
            log.warning("closing Django's caches failed", exc_info=True)


_fixups: weakref.WeakKeyDictionary[AioQueue, DjangoFixup] = weakref.WeakKeyDictionary()
_fixups_lock = threading.Lock()


def install(app: AioQueue) -> DjangoFixup:
    """Install the Django fix-up on ``app`` (idempotent): see :class:`DjangoFixup`."""
    with _fixups_lock:
        existing = _fixups.get(app)
        if existing is None:
            existing = _fixups[app] = DjangoFixup(app)
    return existing.install()


def fixup(app: AioQueue, env: str = SETTINGS_ENV) -> DjangoFixup | None:
    """Install the fix-up when ``$DJANGO_SETTINGS_MODULE`` is set, as Celery does.

    Returns None when it is not set, or when Django is not installed (logged).
    """
    if not os.environ.get(env):
        return None
    try:
        importlib.import_module("django")
    except ImportError:
        log.warning("%s is set but Django is not installed: the Django fix-up is not "
                    "applied", env)
        return None
    return install(app)
