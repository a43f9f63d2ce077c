"""Celery's routing: ``task_routes`` in every form, ``task_queues``, and the worker's -Q/-X.

Routing is configuration, so most tests need no Redis: they build routers and settings and
ask them. The worker's queue choice is checked on the helper the command uses, and once for
real: a burst worker in a subprocess, as users run it, serving declared queues minus -X.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import typer

from aioqueue import AioQueue, ConfigurationError, Queue, Route, Settings, State
from aioqueue._celery_config import TaskRoutes, settings_from_env, settings_from_object
from aioqueue.cli import _queues
from aioqueue.routing import EXCHANGE_NOTICE, Router, declared_queues

# Routers named by import path below: this module, under whatever name pytest gave it.
HERE = __name__


def route_by_size(name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                  options: dict[str, Any], task: Any = None, **kw: Any) -> Any:
    """A Celery router function: big jobs to their own queue, at the front of it."""
    if name == "video.encode" and args and args[0] > 100:
        return {"queue": "big", "priority": 0}
    return None


class LegacyRouter:
    """A Celery 3 router class: named by path, it is instantiated."""

    def route_for_task(self, task: str, args: Any = None, kwargs: Any = None) -> Any:
        return "legacy" if task.startswith("old.") else None


ROUTES_BY_PATH = {"mapped.*": {"queue": "from-path"}}


# -- Celery's order ---------------------------------------------------------------------------
def test_an_exact_name_beats_a_pattern_of_the_same_dict() -> None:
    router = Router({"feed.*": "feeds", re.compile(r"feed\.i"): "regex",
                     "feed.import": "exact"})
    assert router.route("feed.import") == Route("exact")
    # Patterns in their order: the glob, written first, answers before the regex.
    assert router.route("feed.index") == Route("feeds")
    assert Router({re.compile(r"feed\.i"): "regex", "feed.*": "feeds"}).route(
        "feed.index") == Route("regex")
    assert router.route("unrouted") is None


def test_an_earlier_router_beats_a_later_one_even_by_pattern() -> None:
    router = Router([{"feed.*": "first"}, {"feed.import": "second", "mail.*": "mail"}])
    assert router.route("feed.import") == Route("first")  # the first map answers, by glob
    assert router.route("mail.send") == Route("mail")
    # (pattern, route) pairs are a map too, in their order.
    assert Router([[("a.*", "glob"), ("a.b", "exact")]]).route("a.b") == Route("exact")


def test_a_function_answering_none_lets_the_next_router_answer() -> None:
    calls: list[tuple[Any, ...]] = []

    def spy(name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
            options: dict[str, Any], task: Any = None, **kw: Any) -> Any:
        calls.append((name, args, kwargs, options, task))
        return None

    router = Router([spy, route_by_size, {"video.*": "media"}])
    assert router.route("video.encode", (500,), {"fast": True}, {"queue": None}) == Route(
        "big", priority=0)
    assert router.route("video.encode", (5,)) == Route("media")  # the function said None
    assert router.route("video.encode", (5,), task="the task") == Route("media")
    # Called on every send with Celery's arguments: its answer depends on them.
    assert calls == [("video.encode", (500,), {"fast": True}, {"queue": None}, None),
                     ("video.encode", (5,), {}, {}, None),
                     ("video.encode", (5,), {}, {}, "the task")]
    assert not router.static and Router({"a": "q"}).static


@pytest.mark.parametrize("separator", [".", ":"])
def test_an_import_path_names_a_router(separator: str) -> None:
    router = Router([f"{HERE}{separator}route_by_size", f"{HERE}{separator}LegacyRouter",
                     f"{HERE}{separator}ROUTES_BY_PATH"])
    assert router.route("video.encode", (101,)) == Route("big", 0)
    assert router.route("old.task") == Route("legacy")  # the class, instantiated
    assert router.route("mapped.x") == Route("from-path")  # a dict, by path
    assert router.route("video.encode", (1,)) is None


def test_an_import_path_is_imported_when_first_needed_as_celery_does() -> None:
    # A routers module may import the app: importing it while the app configures could cycle.
    router = Router(["no_such_module_anywhere.route_task", {"a": "q"}])
    with pytest.raises(ConfigurationError,
                       match=r"cannot import router 'no_such_module_anywhere\.route_task'"):
        router.route("a")
    with pytest.raises(ConfigurationError, match="'route_task' is not an import path"):
        Router("route_task")


def test_an_object_with_route_for_task_is_a_router() -> None:
    assert Router(LegacyRouter()).route("old.x") == Route("legacy")
    assert Router(LegacyRouter()).route("new.x") is None


# -- route values -----------------------------------------------------------------------------
def test_route_values_in_every_celery_form() -> None:
    class KombuQueue:  # kombu's Queue, duck-typed: only its name routes
        name, exchange, routing_key = "kombu-q", None, ""

    router = Router({
        "a": "plain",
        "b": {"queue": "dict"},
        "c": {"queue": "urgent", "priority": 0},
        "d": {"queue": Queue("declared")},
        "e": {"queue": KombuQueue()},
        "f": Queue("bare-queue"),
        "g": Route("route", 9),
    })
    assert [router.route(n) for n in "abcdefg"] == [
        Route("plain"), Route("dict"), Route("urgent", 0), Route("declared"),
        Route("kombu-q"), Route("bare-queue"), Route("route", 9)]
    assert router.notices == []


def test_a_dict_value_never_becomes_a_queue_named_after_it() -> None:
    app = AioQueue("x", broker="memory://", task_routes={
        "a": {"queue": "q", "routing_key": "q.a", "exchange": "x"},
        "b.*": {"queue": "b-queue", "priority": 4},
    })
    assert app.queue_for("a") == "q"
    assert app.conf.task_routes.get("a") == "q"
    assert app.conf.router().route("b.x") == Route("b-queue", 4)
    assert not any("{" in str(route) for route in app.conf.task_routes.values())


def test_a_glob_route_never_goes_silently_to_the_default_queue() -> None:
    app = AioQueue("x", broker="memory://", task_default_queue="default",
                   task_routes={"orders.*": {"queue": "orders"}})
    assert app.queue_for("orders.tasks.confirm") == "orders"
    assert app.queue_for("other.task") == "default"  # unrouted: the default, as it should
    # A glob whose route names no queue would send its tasks to the default: refused.
    with pytest.raises(ConfigurationError,
                       match=r"route for 'orders\.\*' must be a queue name.*routing_key"):
        AioQueue("x", broker="memory://", task_routes={"orders.*": {"routing_key": "orders"}})


def test_a_priority_is_kept_and_checked() -> None:
    conf = Settings()
    conf.update(task_routes={"report": {"queue": "reports", "priority": 0}})
    assert isinstance(conf.task_routes, TaskRoutes)  # a plain dict would lose the priority
    assert conf.task_routes.get("report") == "reports"
    assert conf.router().route("report") == Route("reports", priority=0)
    for bad in (10, -1, True, "high", 2.5):
        with pytest.raises(ConfigurationError, match=r"'report'.*0-9 \(0 runs first\)"):
            conf.update(task_routes={"report": {"queue": "reports", "priority": bad}})
    with pytest.raises(ValueError, match="0-9"):
        Route("q", priority=12)
    with pytest.raises(ValueError, match="non-empty"):
        Route("")


@pytest.mark.parametrize(("routes", "message"), [
    ({"a": {"exchange": "x"}}, r"route for 'a' must be a queue name.*'exchange': 'x'"),
    ({"a": ""}, "route for 'a' must be a queue name"),
    ({"a": 5}, "route for 'a' must be a queue name or a dict with 'queue'"),
    ({"a": {"queue": {"name": 1}}}, "route for 'a' must be a queue name"),
    ({5: "q"}, "key 5 is not a task name"),
    ([[("a",)]], r"\('a',\) is not a \(name, route\) pair"),
    (42, "router 42 is not supported"),
    ([{"a": "q"}, 3.5], "router 3.5 is not supported"),
])
def test_invalid_routes_say_what_is_wrong(routes: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings().update(task_routes=routes)
    with pytest.raises(ConfigurationError, match=message):
        settings_from_object({"CELERY_ROUTES": routes})


def test_a_function_answer_is_checked_when_it_comes() -> None:
    def bad(name: str, *args: Any, **kwargs: Any) -> Any:
        return {"queue": "q", "priority": 99} if name == "p" else {"routing_key": "k"}

    router = Router(bad)
    with pytest.raises(ConfigurationError, match=r"'p' \(from router .*bad\): priority"):
        router.route("p")
    with pytest.raises(ConfigurationError, match=r"'x' \(from router .*bad\) must be a queue"):
        router.route("x")


def test_exchanges_and_routing_keys_are_explained_once(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    found, notices = settings_from_object({"task_routes": {
        "a": {"queue": "a", "exchange": "a", "routing_key": "a"},
        "b": {"queue": "b", "routing_key": "b", "delivery_mode": 2},
    }})
    assert found["task_routes"] == {"a": "a", "b": "b"}
    assert notices == [
        f"task_routes: {EXCHANGE_NOTICE}",
        "task_routes: route for 'b': delivery_mode: a route sets only 'queue' and 'priority'; "
        "ignored"]

    def keyed(name: str, *args: Any, **kwargs: Any) -> Any:
        return {"queue": "q", "routing_key": name}

    router = Router(keyed)
    with caplog.at_level(logging.WARNING, logger="aioqueue.routing"):
        assert router.route("one") == router.route("two") == Route("q")
    assert [r.getMessage() for r in caplog.records] == [f"task_routes: {EXCHANGE_NOTICE}"]


# -- what conf.task_routes holds, and conf.router() -------------------------------------------
def test_conf_task_routes_keeps_each_form() -> None:
    conf = Settings()
    conf.update(task_routes={"a": "q", "b": {"queue": "r"}})
    assert type(conf.task_routes) is dict and conf.task_routes == {"a": "q", "b": "r"}
    conf.update(task_routes={"a.*": "q"})
    assert isinstance(conf.task_routes, TaskRoutes) and conf.task_routes.get("a.b") == "q"
    conf.update(task_routes=route_by_size)
    assert conf.task_routes is route_by_size  # answers depend on arguments: ask the router
    conf.update(task_routes=[f"{HERE}.route_by_size", {"video.*": "media"}])
    assert conf.task_routes == [f"{HERE}.route_by_size", {"video.*": "media"}]
    assert conf.router().route("video.encode", (200,)) == Route("big", 0)
    assert conf.router().route("video.encode", (2,)) == Route("media")
    conf.update(task_routes=None)
    assert conf.task_routes == {} and conf.router().route("a") is None


def test_the_router_follows_changes_to_the_setting() -> None:
    conf = Settings()
    conf.update(task_routes={"a": "first"})
    router = conf.router()
    assert conf.router() is router  # reused while nothing changes
    conf.task_routes = {"a": "second"}  # settings can change after creation
    assert conf.router().route("a") == Route("second")
    conf.task_routes["b"] = "added"  # ... even in place
    assert conf.router().route("b") == Route("added")
    conf.update(task_routes={"a.*": {"queue": "glob", "priority": 1}})
    assert conf.router().route("a.x") == Route("glob", 1)


def test_a_normalised_map_keeps_its_patterns_when_reused() -> None:
    first = Settings()
    first.update(task_routes={"a.*": "glob", "b": "exact"})
    second = Settings()
    second.update(task_routes=first.task_routes)
    assert second.router().route("a.x") == Route("glob")
    assert Router([first.task_routes, {"c": "c"}]).route("a.y") == Route("glob")


# -- task_queues ------------------------------------------------------------------------------
def test_task_queues_in_celery_dict_form() -> None:
    found, notices = settings_from_object({"task_queues": {
        "default": {"exchange": "default", "routing_key": "default"},
        "videos": {"exchange": "media", "exchange_type": "topic", "routing_key": "media.video"},
        "plain": None,
    }})
    assert found["task_queues"] == ["default", "videos", "plain"]
    assert notices == [f"task_queues: {EXCHANGE_NOTICE}"]


def test_task_queues_in_queue_form() -> None:
    class KombuExchange:
        name = "media"

    class KombuQueue:  # kombu.Queue("images", Exchange("media"), routing_key="media.image")
        name, exchange, routing_key = "images", KombuExchange(), "media.image"
        queue_arguments, max_priority = None, None

    app = AioQueue("x", broker="memory://")
    app.config_from_object({"CELERY_QUEUES": (
        Queue("default"),
        Queue("videos", "media", routing_key="media.video",
              queue_arguments={"x-max-priority": 10}),
        KombuQueue(),
        "plain",
        Queue("default"),  # declared twice: once is enough
    )})
    assert app.conf.task_queues == ["default", "videos", "images", "plain"]
    assert [n.partition(": ")[2] for n in app.config_notices if "task_queues" in n] == [
        EXCHANGE_NOTICE,
        "every queue takes priorities 0-9 (0 runs first) with no maximum to declare: "
        "max_priority and x-max-priority are accepted and ignored"]
    assert Queue("q", exchange=KombuExchange()).exchange == "media"
    assert Queue("q", durable=False, message_ttl=5).notices == [
        "queue 'q': durable, message_ttl: no effect on Redis streams (a queue is a stream, "
        "created on first use); ignored"]


def test_task_queues_from_code_and_the_environment() -> None:
    conf = Settings()
    conf.update(task_queues=[Queue("a"), "b"])
    assert conf.task_queues == ["a", "b"]
    assert settings_from_env({"AIOQUEUE_TASK_QUEUES": "a, b"}) == {"task_queues": ["a", "b"]}
    assert declared_queues("a,b,,a") == ["a", "b"]
    assert declared_queues(None) == []


@pytest.mark.parametrize(("value", "message"), [
    (42, "task_queues must be a list of queue names or Queue objects"),
    (["ok", ""], "task_queues: '' is not a queue name"),
    ([None], "task_queues: None is not a queue name"),
    ({"q": 5}, r"task_queues\['q'\] must be a dict of queue options"),
    ({"q": {"name": "other"}}, r"task_queues\['q'\]: .*'name'"),
])
def test_invalid_task_queues_say_what_is_wrong(value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings().update(task_queues=value)
    with pytest.raises(ConfigurationError, match=message):
        declared_queues(value)
    with pytest.raises(ConfigurationError, match="Queue name must be a non-empty string"):
        Queue("")


# -- the worker's queues: -Q, -X, task_queues -------------------------------------------------
def test_the_worker_serves_q_else_declared_queues_else_the_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = AioQueue("x", broker="memory://", task_default_queue="fallback")
    assert _queues(None, app) == ["fallback"]
    assert _queues(None, app, ["other"]) == ["fallback"]  # excluding what is not served
    app.conf.update(task_queues=["a", "b", "c"])
    assert _queues(None, app) == ["a", "b", "c"]  # Celery: every declared queue
    assert _queues(None, app, ["b"]) == ["a", "c"]
    assert _queues(["x,y", "z"], app, ["y,z"]) == ["x"]  # -Q wins over task_queues
    assert _queues(["a,a"], app) == ["a"]
    with pytest.raises(typer.Exit) as stopped:
        _queues(None, app, ["a,b", "c"])
    assert stopped.value.exit_code == 2
    assert capsys.readouterr().err == (
        "Error: -X/--exclude-queues a,b,c leaves no queue to consume: this worker would serve "
        "a, b, c\n")


ROUTED_APP = """
import os
from aioqueue import AioQueue, Queue

app = AioQueue("routed", broker=os.environ["CLI_REDIS_URL"],
               task_queues=[Queue("alpha"), Queue("beta")])

@app.task(name="routed.echo")
async def echo(word):
    return word
"""


def run_worker(args: list[str], cwd: Path, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLI_REDIS_URL": redis_url}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run([sys.executable, "-m", "aioqueue", "-A", "routed", "worker",
                           "--burst", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


async def test_a_burst_worker_serves_declared_queues_minus_excluded_ones(
    tmp_path: Path, redis_url: str
) -> None:
    (tmp_path / "routed.py").write_text(ROUTED_APP)
    app = AioQueue("routed", broker=redis_url, task_queues=["alpha", "beta"])
    try:
        echo = app.task(name="routed.echo")(_echo)
        served = await echo.apply_async(("served",), queue="alpha")
        excluded = await echo.apply_async(("excluded",), queue="beta")

        # No -Q: the declared queues, minus -X's.
        first = await anyio.to_thread.run_sync(run_worker, ["-X", "beta"], tmp_path, redis_url)
        assert first.returncode == 0, first.stderr
        assert " queues:       alpha\n" in first.stdout
        with anyio.fail_after(5):
            assert await served.get() == "served"
        assert await excluded.state() is State.PENDING  # beta's task was not run...

        second = await anyio.to_thread.run_sync(run_worker, ["-Q", "alpha,beta", "-X", "alpha"],
                                                tmp_path, redis_url)
        assert second.returncode == 0, second.stderr
        assert " queues:       beta\n" in second.stdout
        with anyio.fail_after(5):
            assert await excluded.get() == "excluded"  # ... it waited in its queue
    finally:
        await app.close()


async def _echo(word: str) -> str:
    return word
