"""Celery users' configuration, unchanged: config files, Celery's names, env overrides.

Configuration files under ``tests/celery_configs`` are written as Celery projects write them;
each configures an app that runs tasks end to end on the session's real Redis.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
import redis.asyncio as aioredis

from aioqueue import AioQueue, ConfigurationError, Settings, crontab
from aioqueue._celery_config import (
    CELERY_NEW_NAMES,
    CELERY_OLD_NAMES,
    ConfigImportError,
    TaskRoutes,
    settings_from_env,
    settings_from_object,
    translate_setting,
)
from aioqueue.beat import describe
from aioqueue.broker import Enqueue
from aioqueue.message import (
    COMPRESSIONS,
    Serializer,
    TaskMessage,
    get_serializer,
)

OLD_STYLE = "tests.celery_configs.old_style"
DJANGO_STYLE = "tests.celery_configs.django_style"
SHANGHAI = ZoneInfo("Asia/Shanghai")
#: Short timeouts, as tests/conftest.py's apps (none of the config files sets these).
FAST = {"shutdown_timeout": 2.0, "broker_connection_timeout": 2.0,
        "delayed_poll_interval": 0.02, "visibility_timeout": 2.0}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AIOQUEUE_* setting from the developer's shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("AIOQUEUE_") and name not in ("AIOQUEUE_SUPERVISED",):
            monkeypatch.delenv(name)


@pytest.fixture
def config_broker(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point the config files at the test Redis and make them import afresh."""
    monkeypatch.setenv("CELERY_CONFIG_TEST_BROKER", redis_url)
    for name in (OLD_STYLE, DJANGO_STYLE):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield redis_url



def new_app(apps: list[AioQueue], name: str = "celerycfg", **settings: Any) -> AioQueue:
    application = AioQueue(name, **{**FAST, **settings})
    apps.append(application)
    return application


def notice_about(app: AioQueue, name: str) -> str:
    found = [n for n in app.config_notices if n.startswith(name)]
    assert len(found) == 1, (name, app.config_notices)
    return found[0]


# -- whole configuration files, end to end -------------------------------------------------
async def test_old_style_module_configures_a_working_app(
    config_broker: str, apps: list[AioQueue], raw: aioredis.Redis
) -> None:
    app = new_app(apps)
    assert app.config_from_object(OLD_STYLE) is True
    conf = app.conf
    assert conf.broker_url == conf.result_backend == config_broker
    assert conf.timezone == "Asia/Shanghai" and conf.enable_utc is True
    assert conf.result_expires == 3600 and conf.worker_concurrency == 8
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_time_limit == 60 and conf.task_default_queue == "celery"
    assert conf.task_annotations == {"tasks.add": {"rate_limit": "10/s", "max_retries": 1}}
    assert app.conf.annotations_for("tasks.add") == {"rate_limit": "10/s", "max_retries": 1}
    assert "always on in aioqueue" in notice_about(app, "CELERY_ACKS_LATE (task_acks_late)")
    assert "free concurrency slots" in notice_about(app, "CELERYD_PREFETCH_MULTIPLIER")
    assert "rate_limit" not in " ".join(app.config_notices)  # enforced, cluster-wide

    @app.task(name="tasks.add", bind=True)
    async def add(self: Any, x: int, y: int) -> tuple[int, str]:
        return x + y, self.request.queue

    @app.task(name="feed.tasks.import_feed", bind=True)
    async def import_feed(self: Any, url: str) -> tuple[str, str]:
        return url.upper(), self.request.queue

    @app.task(name="tasks.report", bind=True)
    async def report(self: Any) -> str:
        return str(self.request.queue)

    async with app.worker(queues=["celery", "math", "feeds"]) as worker:
        assert worker.concurrency == 8
        handles = [await add.delay(16, 16), await import_feed.delay("x"), await report.delay()]
        with anyio.fail_after(5):
            assert await handles[0] == [32, "math"]  # CELERY_ROUTES by name (json: a list)
            assert await handles[1] == ["X", "feeds"]  # by glob
            assert await handles[2] == "celery"  # CELERY_DEFAULT_QUEUE
    # CELERY_TASK_RESULT_EXPIRES: the stored result lives an hour.
    assert 3500 < await raw.ttl(f"aioqueue:result:{handles[0].id}") <= 3600

    # CELERYBEAT_SCHEDULE, with crontab(hour="10, 17") read in Asia/Shanghai.
    listed = {name: (task, times) for name, task, _, times in
              describe(app, n=3, now=datetime(2026, 3, 1, 9, 59, tzinfo=SHANGHAI))}
    task, times = listed["report-at-10-and-17"]
    assert task == "tasks.report"
    assert [t.astimezone(UTC) for t in times] == [
        datetime(2026, 3, 1, 2, 0, tzinfo=UTC),  # 10:00 in Shanghai
        datetime(2026, 3, 1, 9, 0, tzinfo=UTC),  # 17:00
        datetime(2026, 3, 2, 2, 0, tzinfo=UTC),
    ]
    assert listed["add-every-30-seconds"][1][0] == datetime(2026, 3, 1, 1, 59, 30, tzinfo=UTC)


async def test_django_settings_with_the_celery_namespace_configure_a_working_app(
    config_broker: str, apps: list[AioQueue]
) -> None:
    app = new_app(apps)
    app.config_from_object(DJANGO_STYLE, namespace="CELERY")
    conf = app.conf
    assert conf.broker_url == conf.result_backend == config_broker
    assert conf.timezone == "Asia/Shanghai"  # Django's TIME_ZONE, as Celery falls back to it
    assert conf.result_expires == 600 and conf.worker_concurrency == 4
    assert conf.task_track_started is True and conf.task_time_limit == 1800
    assert conf.task_default_queue == "django"
    assert conf.beat_schedule["expire-unconfirmed-orders"]["kwargs"] == {"older_than_s": 3600}
    # Django's own settings are not settings of ours: no error, no notice.
    assert not [n for n in app.config_notices if n.startswith(("DEBUG", "INSTALLED_APPS"))]
    assert conf.worker_send_task_events is True  # events exist: the setting is taken
    assert not [n for n in app.config_notices if "SEND_TASK_EVENTS" in n]
    assert "arguments are not stored" in notice_about(app, "CELERY_RESULT_EXTENDED")

    @app.task(name="orders.tasks.confirm", bind=True)
    async def confirm(self: Any, order: int) -> list[Any]:
        return [order, self.request.queue]

    @app.task(name="orders.mail.send", bind=True)
    def send(self: Any, to: str) -> list[Any]:  # a sync task: runs in a thread
        return [to, self.request.queue]

    async with app.worker(queues=["orders", "django"]):
        first, second = await confirm.delay(7), await send.delay("a@b.c")
        with anyio.fail_after(5):
            assert await first == [7, "orders"]
            assert await second == ["a@b.c", "django"]


def test_a_real_django_settings_object_is_read_with_its_defaults() -> None:
    from django.conf import LazySettings

    settings = LazySettings()  # not django.conf.settings: nothing global is configured
    settings.configure(CELERY_BROKER_URL="redis://cache:6379/2", CELERY_TASK_ACKS_LATE=True,
                       CELERY_WORKER_PREFETCH_MULTIPLIER=1)
    found, notices = settings_from_object(settings, namespace="CELERY")
    # Django's default TIME_ZONE is America/Chicago: Celery would use it too.
    assert found == {"broker_url": "redis://cache:6379/2", "timezone": "America/Chicago",
                     "worker_prefetch_multiplier": 1}
    assert [n.split(":")[0] for n in notices] == [
        "CELERY_TASK_ACKS_LATE (task_acks_late)",
        "CELERY_WORKER_PREFETCH_MULTIPLIER (worker_prefetch_multiplier)"]


class Config:
    """Celery's documented class-based configuration."""

    broker_url = "memory://"
    enable_utc = True
    timezone = "Europe/London"


@pytest.mark.parametrize("target", [f"{__name__}:Config", f"{__name__}.Config", Config])
def test_objects_and_paths_as_celery_accepts_them(target: Any, apps: list[AioQueue]) -> None:
    app = new_app(apps)
    app.config_from_object(target)
    assert (app.conf.timezone, app.conf.broker_url) == ("Europe/London", "memory://")


def test_namespace_semantics_follow_celery() -> None:
    config = {
        "CELERY_BROKER_URL": "redis://new",      # prefixed new name: wins
        "BROKER_URL": "redis://old",             # old name: read, lower priority
        "CELERY_ACKS_LATE": True,                # old name that starts with the prefix: read
        "CELERYD_CONCURRENCY": 3,                # old name: read
        "worker_concurrency": 5,                 # plain new name: beats the old one
        "CELERY_TIMEZONE": "Europe/Berlin",      # beats Django's TIME_ZONE
        "TIME_ZONE": "Asia/Shanghai",
        "DEBUG": True, "SECRET_KEY": "x",        # the host's own: ignored
    }
    found, notices = settings_from_object(config, namespace="CELERY")
    assert found == {"broker_url": "redis://new", "worker_concurrency": 5,
                     "timezone": "Europe/Berlin"}
    assert [n.split(" ")[0] for n in notices] == ["CELERY_ACKS_LATE"]
    # Lowercase namespace: lowercase names, in the namespace's case only.
    assert settings_from_object({"celery_broker_url": "redis://x"}, namespace="celery")[0] == {
        "broker_url": "redis://x"}
    with pytest.raises(ConfigurationError, match=r"'CELERY_broker_url' \(did you mean "
                                                 r"CELERY_BROKER_URL"):
        settings_from_object({"CELERY_broker_url": "x"}, namespace="CELERY")
    # Without a namespace, CELERY_BROKER_URL is not a Celery name: the error says why.
    with pytest.raises(ConfigurationError, match="namespace='CELERY'"):
        settings_from_object({"CELERY_BROKER_URL": "redis://x"})


# -- Celery's names --------------------------------------------------------------------------
def test_every_celery_name_is_recognised() -> None:
    assert len(CELERY_NEW_NAMES) >= 200 and len(CELERY_OLD_NAMES) >= len(CELERY_NEW_NAMES)
    spot_checks = {
        "BROKER_URL": "broker_url", "CELERY_RESULT_BACKEND": "result_backend",
        "CELERY_TASK_RESULT_EXPIRES": "result_expires", "CELERYD_CONCURRENCY":
        "worker_concurrency", "CELERYD_TASK_TIME_LIMIT": "task_time_limit",
        "CELERY_DEFAULT_QUEUE": "task_default_queue", "CELERY_ROUTES": "task_routes",
        "CELERYBEAT_SCHEDULE": "beat_schedule", "CELERY_SEND_EVENTS": "worker_send_task_events",
        "CELERY_MESSAGE_COMPRESSION": "task_compression", "CELERY_ENABLE_UTC": "enable_utc",
        "CELERY_MAX_CACHED_RESULTS": "result_cache_max", "CELERY_IMPORTS": "imports",
    }
    for old, new in spot_checks.items():
        assert CELERY_OLD_NAMES[old] == new
    # Every name, old or new, is either mapped or explained: never "unknown".
    fields = set(Settings.__dataclass_fields__)
    explained = 0
    for name in sorted({*CELERY_NEW_NAMES, *CELERY_OLD_NAMES} - fields):
        found, notices = translate_setting(name, None)
        explained += bool(notices)
        assert set(found) <= fields, name
    assert explained > 150


@pytest.mark.parametrize(("celery", "value", "setting", "expected"), [
    ("BROKER_URL", "memory://", "broker_url", "memory://"),
    ("CELERY_RESULT_BACKEND", "memory://", "result_backend", "memory://"),
    ("CELERY_TIMEZONE", "Asia/Shanghai", "timezone", "Asia/Shanghai"),
    ("CELERY_TASK_RESULT_EXPIRES", 60, "result_expires", 60),
    ("result_expires", timedelta(hours=1), "result_expires", timedelta(hours=1)),
    ("CELERYD_CONCURRENCY", 16, "worker_concurrency", 16),
    ("CELERYD_PREFETCH_MULTIPLIER", 4, "worker_prefetch_multiplier", 4),
    ("CELERYD_TASK_TIME_LIMIT", 30, "task_time_limit", 30),
    ("task_soft_time_limit", 20, "task_soft_time_limit", 20),
    ("CELERY_DEFAULT_QUEUE", "work", "task_default_queue", "work"),
    ("CELERY_ROUTES", {"a.b": {"queue": "q"}}, "task_routes", {"a.b": "q"}),
    ("CELERY_ANNOTATIONS", {"*": {"time_limit": 5}}, "task_annotations", {"*": {"time_limit": 5}}),
    ("CELERY_IGNORE_RESULT", True, "task_ignore_result", True),
    ("CELERY_TASK_SERIALIZER", "json", "task_serializer", "json"),
    ("CELERY_MESSAGE_COMPRESSION", "zlib", "task_compression", "zlib"),
    ("task_compression", "bzip2", "task_compression", "bz2"),  # kombu's name
    ("CELERY_TRACK_STARTED", True, "task_track_started", True),
    ("CELERY_ENABLE_UTC", True, "enable_utc", True),
    ("broker_transport_options", {"visibility_timeout": 45}, "visibility_timeout", 45),
    ("broker_transport_options", {"global_keyprefix": "myapp:"}, "key_prefix", "myapp"),
    ("CELERYD_MAX_TASKS_PER_CHILD", 100, "worker_max_tasks_per_child", 100),
    ("BROKER_CONNECTION_RETRY_ON_STARTUP", False, "broker_connection_retry_on_startup", False),
    ("BROKER_CONNECTION_TIMEOUT", 3.5, "broker_connection_timeout", 3.5),
    ("CELERY_IMPORTS", ("proj.tasks",), "imports", ["proj.tasks"]),
    ("include", ["proj.more"], "imports", ["proj.more"]),
    ("CELERYBEAT_SCHEDULE", {"s": {"task": "t", "schedule": 5}}, "beat_schedule",
     {"s": {"task": "t", "schedule": 5}}),
])
def test_celery_names_map_onto_settings(
    celery: str, value: Any, setting: str, expected: Any, apps: list[AioQueue]
) -> None:
    # Through a configuration object and through the constructor (Settings.update).
    from_object = new_app(apps, broker="memory://")
    from_object.config_from_object({celery: value})
    assert getattr(from_object.conf, setting) == expected
    if celery != "include":  # AioQueue(include=...) is the constructor's own argument
        from_update = new_app(apps, broker="memory://", **{celery: value})
        assert getattr(from_update.conf, setting) == expected


async def test_a_key_prefix_from_the_configuration_keeps_replies_flowing(
    redis_url: str, raw: aioredis.Redis, apps: list[AioQueue]
) -> None:
    app = new_app(apps, broker=redis_url)
    app.config_from_object({"broker_transport_options": {"global_keyprefix": "proj:"}})
    assert app.conf.key_prefix == "proj"
    assert app._reply_to.startswith("proj:reply:")  # workers push only under their prefix

    @app.task(name="cfg.prefixed")
    async def prefixed() -> str:
        return "ok"

    async with app.worker():
        handle = await prefixed.delay()
        with anyio.fail_after(5):
            assert await handle == "ok"
    assert await raw.exists(f"proj:result:{handle.id}")
    assert not await raw.keys("aioqueue:*")


def test_accept_content_picks_celery_default_serializer_and_is_checked() -> None:
    found, notices = settings_from_object({"accept_content": ["application/json"]})
    assert found["task_serializer"] == "json"  # Celery's default, which accept_content allows
    assert any("Celery's default is 'json'" in n for n in notices)
    with pytest.raises(ConfigurationError, match="task_serializer 'msgpack' is not in "
                                                 "accept_content"):
        AioQueue("x", broker="memory://", accept_content=["json"])
    assert AioQueue("x", broker="memory://", accept_content=["msgpack", "json"]).conf


@pytest.mark.parametrize(("name", "value", "says"), [
    ("task_acks_late", True, "a task is acknowledged only with its result"),
    ("CELERY_ACKS_LATE", False, "a task is acknowledged only with its result"),
    ("worker_prefetch_multiplier", 4, "prefetch is effectively 1 per slot"),
    ("accept_content", ["msgpack"], "checked against task_serializer"),
    ("enable_utc", False, "read as UTC either way"),
    ("worker_pool", "prefork", "asyncio; sync tasks run in threads"),
    ("CELERYD_POOL", "gevent", "asyncio; sync tasks run in threads"),
    ("event_queue_ttl", 5.0, "one capped Redis stream"),
    ("result_extended", True, "arguments are not stored"),
    ("task_soft_time_limit", 10, "not enforced"),
    ("task_reject_on_worker_lost", True, "delivered again after visibility_timeout"),
    ("CELERY_RESULT_DBURI", "sqlite://", "results live in Redis"),
    ("CELERYD_LOG_FILE", "x.log", "removed in Celery 4.0"),
])
def test_settings_without_meaning_here_give_one_notice(
    name: str, value: Any, says: str, apps: list[AioQueue]
) -> None:
    app = new_app(apps, broker="memory://")
    app.config_from_object({name: value})
    app.config_from_object({name: value})  # read twice: still one notice
    assert says in notice_about(app, name)
    direct = new_app(apps, broker="memory://", **{name: value})  # conf.update: the same
    assert says in notice_about(direct, name)


@pytest.mark.parametrize(("config", "message"), [
    ({"CELERY_TASK_RESULT_EXPIRE": 60},
     r"unknown setting 'CELERY_TASK_RESULT_EXPIRE' \(did you mean CELERY_TASK_RESULT_EXPIRES"),
    ({"worker_concurency": 8}, r"unknown setting 'worker_concurency' \(did you mean "
                               r"worker_concurrency"),
    ({"visiblity_timeout": 8}, r"did you mean visibility_timeout"),
    ({"my_helper": 8}, "needs a leading underscore"),
])
def test_unknown_names_raise_with_did_you_mean(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        settings_from_object(config)
    (name,) = config
    with pytest.raises(ConfigurationError, match=f"unknown setting '{name}'"):
        AioQueue("x", broker="memory://", **config)  # conf.update: the same names


def test_every_unknown_name_is_reported_at_once() -> None:
    with pytest.raises(ConfigurationError) as caught:
        settings_from_object({"CELERY_TIMEZON": "UTC", "BROKER_URLS": "x"})
    assert "CELERY_TIMEZON" in str(caught.value) and "BROKER_URLS" in str(caught.value)


def test_old_and_new_names_disagreeing_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="both set result_expires"):
        settings_from_object({"result_expires": 5, "CELERY_TASK_RESULT_EXPIRES": 6})
    assert settings_from_object({"result_expires": 5, "CELERY_TASK_RESULT_EXPIRES": 5})[0] == {
        "result_expires": 5}


@pytest.mark.parametrize(("config", "message"), [
    ({"task_always_eager": True}, "no eager mode"),
    ({"BROKER_HOST": "rabbit"}, "put it in broker_url"),
    ({"task_routes": [42]}, "router 42 is not supported"),  # functions and paths are routers
    ({"task_routes": {"a": {"exchange": "x"}}}, "must be a queue name or a dict with 'queue'"),
    ({"broker_use_ssl": {"cert_reqs": "required"}, "broker_url": "redis://h"}, "rediss://"),
    ({"task_annotations": ["proj.annotations.MyAnnotation"]}, "only dicts"),
    ({"task_serializer": "yaml"}, "unknown serializer 'yaml'"),
    ({"task_compression": "brotli"}, "task_compression must be None or one of"),
    ({"beat_schedule": {"x": {"task": "t", "schedule": type("solar", (), {})()}}}, "solar"),
])
def test_settings_that_cannot_be_honoured_are_refused(
    config: dict[str, Any], message: str, apps: list[AioQueue]
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        new_app(apps, broker="memory://").config_from_object(config)


def test_routes_take_celery_forms() -> None:
    import re

    class Queue:  # kombu's Queue, as far as routing is concerned
        name = "kombu-q"

    app = AioQueue("x", broker="memory://", task_routes=[
        {"feed.tasks.import_feed": "exact", re.compile(r"video\..*"): {"queue": "media"}},
        [("feed.tasks.*", {"queue": "feeds"}), ("billing.charge", {"queue": Queue()})],
    ])
    assert isinstance(app.conf.task_routes, TaskRoutes)
    assert app.queue_for("feed.tasks.import_feed") == "exact"  # the first map's exact name
    assert app.queue_for("feed.tasks.other") == "feeds"
    assert app.queue_for("video.encode") == "media"
    assert app.queue_for("billing.charge") == "kombu-q"
    assert app.queue_for("nothing.matches") == "default"
    assert app.queue_for("video.encode", queue="explicit") == "explicit"


def test_annotations_resolve_as_celery_applies_them() -> None:
    conf = Settings()
    conf.update(task_annotations=[{"tasks.add": {"time_limit": 5, "max_retries": 2}},
                                  {"tasks.add": {"time_limit": 9}, "*": {"time_limit": 1}}])
    # The first map naming the task, then the first "*" (set last, so it wins: Celery's order).
    assert conf.annotations_for("tasks.add") == {"time_limit": 1, "max_retries": 2}
    assert conf.annotations_for("other") == {"time_limit": 1}
    with pytest.raises(ConfigurationError, match="task_annotations must be"):
        conf.update(task_annotations={"tasks.add": 5})


def test_celery_schedule_objects_are_converted() -> None:
    class CeleryCrontab:  # celery.schedules.crontab keeps the fields it was given like this
        _orig_minute, _orig_hour, _orig_day_of_week = "0", "10, 17", "*"
        _orig_day_of_month, _orig_month_of_year = "*", "*"

    class CelerySchedule:  # celery.schedules.schedule
        run_every = timedelta(seconds=30)

    found, notices = settings_from_object({"beat_schedule": {
        "cron": {"task": "t", "schedule": CeleryCrontab(), "relative": True},
        "every": {"task": "t", "schedule": CelerySchedule(),
                  "options": {"queue": "q", "priority": 5}},
    }})
    schedule = found["beat_schedule"]
    assert schedule["cron"] == {"task": "t", "schedule": crontab(minute="0", hour="10,17")}
    assert schedule["every"] == {"task": "t", "schedule": timedelta(seconds=30),
                                 "options": {"queue": "q"}}
    assert any("'relative' has no effect" in n for n in notices)
    assert any("options priority have no effect" in n for n in notices)


def test_enable_utc_false_without_timezone_uses_the_host_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    found, notices = settings_from_object({"CELERY_ENABLE_UTC": False})
    assert found == {"enable_utc": False, "timezone": "Europe/Berlin"}
    (notice,) = notices
    assert "read as UTC either way" in notice and "this host's zone, Europe/Berlin" in notice
    assert settings_from_object({"enable_utc": False, "timezone": "UTC"})[0]["timezone"] == "UTC"


# -- environment ------------------------------------------------------------------------------
async def test_aioqueue_variables_override_code_and_config_files(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, apps: list[AioQueue]
) -> None:
    monkeypatch.setenv("AIOQUEUE_BROKER_URL", redis_url)
    monkeypatch.setenv("AIOQUEUE_WORKER_CONCURRENCY", "3")
    monkeypatch.setenv("AIOQUEUE_TASK_TRACK_STARTED", "yes")
    monkeypatch.setenv("AIOQUEUE_RESULT_EXPIRES", "120.5")
    monkeypatch.setenv("AIOQUEUE_TASK_TIME_LIMIT", "none")
    monkeypatch.setenv("AIOQUEUE_TASK_ROUTES", '{"env.routed": "envq"}')
    monkeypatch.setenv("AIOQUEUE_SUPERVISED", "1")  # aioqueue's own: not a setting
    monkeypatch.setenv("AIOQUEUE_BROKER", "redis://examples-only")  # the examples' own
    app = new_app(apps, broker="redis://nowhere.invalid:1/0", worker_concurrency=50,
                  task_time_limit=5)
    app.config_from_object({"BROKER_URL": "redis://also-nowhere:1/0", "CELERYD_CONCURRENCY": 9})
    conf = app.conf
    assert (conf.broker_url, conf.worker_concurrency) == (redis_url, 3)
    assert conf.task_track_started is True and conf.result_expires == 120.5
    assert conf.task_time_limit is None and app.queue_for("env.routed") == "envq"

    @app.task(name="env.routed")
    async def routed() -> str:
        return "ran on the environment's broker"

    async with app.worker(queues=["envq"]):
        handle = await routed.delay()
        with anyio.fail_after(5):
            assert await handle == "ran on the environment's broker"


@pytest.mark.parametrize(("environ", "message"), [
    ({"AIOQUEUE_WORKER_CONCURENCY": "8"},
     r"unknown environment variable AIOQUEUE_WORKER_CONCURENCY \(did you mean "
     r"AIOQUEUE_WORKER_CONCURRENCY\?\)"),
    ({"AIOQUEUE_WORKER_CONCURRENCY": "eight"}, "AIOQUEUE_WORKER_CONCURRENCY='eight': expected "
                                               "an integer"),
    ({"AIOQUEUE_WORKER_CONCURRENCY": "0"}, "AIOQUEUE_WORKER_CONCURRENCY: worker_concurrency "
                                           "must be at least 1"),
    ({"AIOQUEUE_TASK_IGNORE_RESULT": "maybe"}, "AIOQUEUE_TASK_IGNORE_RESULT='maybe': expected "
                                               "true/false"),
    ({"AIOQUEUE_TASK_ROUTES": "[1]"}, "AIOQUEUE_TASK_ROUTES='\\[1\\]': expected JSON dict"),
    ({"AIOQUEUE_BEAT_SCHEDULE": "{nope"}, "AIOQUEUE_BEAT_SCHEDULE='{nope': expected JSON"),
    ({"AIOQUEUE_VISIBILITY_TIMEOUT": "-1"}, "AIOQUEUE_VISIBILITY_TIMEOUT: visibility_timeout"),
])
def test_bad_environment_variables_are_named(
    environ: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        settings_from_env(environ)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=message):
        AioQueue("x", broker="memory://")


def test_environment_values_take_each_setting_type() -> None:
    assert settings_from_env({
        "AIOQUEUE_ACCEPT_CONTENT": "msgpack, json",  # a list: comma-separated or JSON
        "AIOQUEUE_IMPORTS": '["a.tasks", "b.tasks"]',
        "AIOQUEUE_TASK_COMPRESSION": "zlib",
        "AIOQUEUE_MAX_DELIVERIES": "7",
        "AIOQUEUE_ENABLE_UTC": "off",
        "AIOQUEUE_TEST_REDIS_6_0": "/opt/redis",  # the test suite's own: not a setting
        "PATH": "/usr/bin",
    }) == {"accept_content": ["msgpack", "json"], "imports": ["a.tasks", "b.tasks"],
           "task_compression": "zlib", "max_deliveries": 7, "enable_utc": False}


def test_config_from_envvar(
    config_broker: str, monkeypatch: pytest.MonkeyPatch, apps: list[AioQueue]
) -> None:
    monkeypatch.delenv("CELERY_CONFIG_MODULE", raising=False)
    app = new_app(apps)
    with pytest.raises(ConfigurationError, match="CELERY_CONFIG_MODULE is not set"):
        app.config_from_envvar("CELERY_CONFIG_MODULE")
    assert app.config_from_envvar("CELERY_CONFIG_MODULE", silent=True) is False
    monkeypatch.setenv("CELERY_CONFIG_MODULE", OLD_STYLE)
    assert app.config_from_envvar("CELERY_CONFIG_MODULE") is True
    assert app.conf.broker_url == config_broker and app.conf.timezone == "Asia/Shanghai"

    monkeypatch.setenv("CELERY_CONFIG_MODULE", "tests.celery_configs.no_such_module")
    assert app.config_from_envvar("CELERY_CONFIG_MODULE", silent=True) is False
    with pytest.raises(ConfigImportError, match="no_such_module") as caught:
        app.config_from_envvar("CELERY_CONFIG_MODULE")
    # Catchable as Celery users do (ImportError) and as aioqueue users do.
    assert isinstance(caught.value, ImportError)
    assert isinstance(caught.value, ConfigurationError)
    with pytest.raises(ConfigImportError, match="has no attribute 'Nope'"):
        app.config_from_object(f"{OLD_STYLE}:Nope")


# -- compression ------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", COMPRESSIONS)
@pytest.mark.parametrize("serializer", ["msgpack", "json", "pickle"])
def test_compressed_messages_decode_with_any_serializer_setting(
    codec: str, serializer: str
) -> None:
    msg = TaskMessage(id="1", task="t", args=("x" * 10_000,))
    data = get_serializer(serializer, codec).encode(msg)
    assert data[:1] == b"\xc1" and len(data) < 1000
    assert get_serializer(serializer).decode_message(data) == msg  # the receiver's own setting
    assert get_serializer(serializer, "zlib").decode_message(data) == msg


def test_corrupt_compressed_message_is_a_serialization_error() -> None:
    from aioqueue import SerializationError

    with pytest.raises(SerializationError, match="corrupt compressed data"):
        get_serializer("msgpack").decode_message(b"\xc1zgarbage")
    with pytest.raises(SerializationError, match="unknown compression tag"):
        get_serializer("msgpack").decode_message(b"\xc1?abc")


STREAM = "aioqueue:{default}:stream"


async def test_mixed_producers_a_worker_runs_compressed_and_plain_messages(
    app: AioQueue, raw: aioredis.Redis
) -> None:
    assert app.conf.task_compression is None  # this worker's app does not compress

    @app.task(name="cfg.size")
    async def size(text: str) -> int:
        return len(text)

    # Another producer, with task_compression="zlib", enqueues next to a plain one.
    compressing = get_serializer(app.conf.task_serializer, "zlib")
    msg = TaskMessage(id="compressed-1", task="cfg.size", args=("y" * 50_000,),
                      reply_to=None, queue="default")
    await app.broker.enqueue([Enqueue("default", compressing.encode(msg))])
    plain = await size.delay("abc")
    entries = await raw.xrange(STREAM)
    assert [e[1][b"m"][:2] == b"\xc1z" for e in entries] == [True, False]
    async with app.worker():
        with anyio.fail_after(5):
            assert await app.AsyncResult("compressed-1").get(timeout=5) == 50_000
            assert await plain == 3


class CompressingApp(AioQueue):
    """The wiring app.py needs: its ``serializer`` passes ``task_compression`` along."""

    @property
    def serializer(self) -> Serializer:
        return get_serializer(self.conf.task_serializer, self.conf.task_compression)


async def test_task_compression_round_trips_through_a_worker(
    redis_url: str, raw: aioredis.Redis, apps: list[AioQueue]
) -> None:
    app = CompressingApp("compress", broker=redis_url, **FAST)
    apps.append(app)
    app.config_from_object({"CELERY_MESSAGE_COMPRESSION": "gzip"})
    assert app.conf.task_compression == "gzip"

    @app.task(name="cfg.echo")
    async def echo(text: str) -> str:
        return text

    handle = await echo.delay("z" * 100_000)
    (entry,) = await raw.xrange(STREAM)
    assert entry[1][b"m"][:2] == b"\xc1g" and len(entry[1][b"m"]) < 2_000
    async with app.worker():
        with anyio.fail_after(5):
            assert await handle == "z" * 100_000


# -- time, as Celery reads it -------------------------------------------------------------------
@pytest.mark.parametrize("enable_utc", [True, False])
async def test_naive_eta_is_read_as_utc_whatever_the_timezone(
    enable_utc: bool, redis_url: str, raw: aioredis.Redis, apps: list[AioQueue]
) -> None:
    # Celery 5.7, same settings: a naive eta of 2026-01-01 12:00 is due at 1767268800.0
    # (20:00 in Shanghai) with enable_utc True and False alike.
    app = new_app(apps, broker=redis_url, timezone="Asia/Shanghai", enable_utc=enable_utc)

    @app.task(name="cfg.later")
    async def later() -> None: ...

    naive = datetime(2026, 1, 1, 12, 0)
    msg, _ = app._build("cfg.later", (), {}, eta=naive, now=naive.timestamp() - 3600)
    assert msg.eta == 1767268800.0
    far = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=1)  # naive, a day ahead
    await later.apply_async(eta=far, expires=far + timedelta(hours=1))
    ((member, score),) = await raw.zrange("aioqueue:{default}:delayed", 0, -1, withscores=True)
    assert score == far.replace(tzinfo=UTC).timestamp()
    stored = get_serializer(app.conf.task_serializer).decode_message(member)
    assert stored.expires == (far + timedelta(hours=1)).replace(tzinfo=UTC).timestamp()


def test_crontab_fields_accept_the_spaces_celery_accepts() -> None:
    assert crontab(hour="10, 17", minute="0") == crontab(hour="10,17", minute="0")
    assert crontab(minute=" 0 , 30 ", day_of_week="mon, fri") == crontab(
        minute="0,30", day_of_week="mon,fri")
    assert crontab(hour="10, 17", minute="0").describe() == (
        "crontab(minute='0', hour='10,17', day_of_week='*')")
    with pytest.raises(ValueError, match="contains whitespace"):
        crontab(minute="0 1")  # one part with a space inside still shifts cron's fields
    with pytest.raises(ValueError, match="crontab hour='10,' is invalid"):
        crontab(hour="10,")  # an empty part, as Celery's "empty part"


def test_worker_recycling_and_start_up_settings_are_taken_without_notice(
        apps: list[AioQueue]) -> None:
    app = new_app(apps, broker="memory://")
    app.config_from_object({"CELERYD_MAX_TASKS_PER_CHILD": 10,
                            "worker_max_memory_per_child": 200_000,
                            "broker_connection_retry_on_startup": False})
    assert app.conf.worker_max_tasks_per_child == 10
    assert app.conf.worker_max_memory_per_child == 200_000
    assert app.conf.broker_connection_retry_on_startup is False
    assert app.config_notices == []


def test_annotations_from_a_config_apply_to_tasks(apps: list[AioQueue]) -> None:
    app = new_app(apps, broker="memory://")
    app.config_from_object({"CELERY_ANNOTATIONS": {"tasks.add": {"max_retries": 1},
                                                    "*": {"time_limit": 5}}})

    @app.task(name="tasks.add", max_retries=9)  # annotations win, as in Celery
    async def add(x: int, y: int) -> int:
        return x + y

    assert add.options.max_retries == 1 and add.options.time_limit == 5


def test_the_dashboards_environment_variables_are_not_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`aioqueue dashboard` reads these itself: an app made beside them must not refuse
    them as unknown settings (it did, so the documented token set-up failed at import)."""
    for name in ("AIOQUEUE_DASHBOARD_TOKEN", "AIOQUEUE_DASHBOARD_PASSWORD",
                 "AIOQUEUE_DASHBOARD_BASIC_AUTH"):
        monkeypatch.setenv(name, "secret")
    app = AioQueue("dash", broker="memory://")
    assert app.conf.broker_url == "memory://"


def test_celerys_sentinel_transport_options_point_to_the_url() -> None:
    app = AioQueue("sentinel", broker="memory://")
    app.config_from_object({"broker_transport_options": {"master_name": "mymaster"}})
    assert "sentinel://" in " ".join(app.config_notices)
