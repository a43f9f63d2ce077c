"""The dashboard's JSON API, auth, actions and event stream, against a real worker.

The app is driven through httpx's ASGI transport; the event stream (which that transport
cannot stream) and ``serve`` go through a real uvicorn server on a free loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from aioqueue import AioQueue, ConfigurationError
from aioqueue.dashboard import create_app, serve
from aioqueue.dashboard._hub import QUEUE_SIZE, Subscriber
from aioqueue.dashboard._server import is_loopback
from aioqueue.monitor import Monitor
from aioqueue.testing import free_port
from tests.dashboard_server import eventually, served


def client_for(app: Any, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                             headers=headers)


async def post(client: httpx.AsyncClient, action: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(f"/api/actions/{action}", json=body)


@pytest.fixture
def events_app(app: AioQueue) -> AioQueue:
    app.conf.update(worker_send_task_events=True)
    return app


async def test_overview_lists_the_worker_and_its_queues(events_app: AioQueue) -> None:
    app = events_app
    async with client_for(create_app(app)) as client:
        empty = (await client.get("/api/overview")).json()
        assert empty["workers"] == []  # the page warns: no workers are running
        async with app.worker(concurrency=3, queues=["default", "mail"], name="w-dash"):
            overview = (await client.get("/api/overview")).json()
    [worker] = overview["workers"]
    assert (worker["name"], worker["queues"], worker["concurrency"]) == (
        "w-dash", ["default", "mail"], 3)
    assert worker["events"] is True and worker["uptime_s"] >= 0
    assert {q["name"] for q in overview["queues"]} >= {"default", "mail"}
    tp = overview["throughput"]
    assert len(tp["minutes"]) == 60 and set(tp["series"]) >= {"SUCCESS", "FAILURE"}


async def test_a_task_run_appears_with_its_arguments_result_and_timings(
        events_app: AioQueue) -> None:
    app = events_app

    @app.task(name="dash.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with client_for(create_app(app)) as client, app.worker(concurrency=2):
        handle = await add.delay(2, 3)
        assert await handle.get(timeout=10) == 5

        async def listed() -> Any:
            rows = (await client.get("/api/tasks", params={"name": "add"})).json()["tasks"]
            return [r for r in rows if r["id"] == handle.id and r["state"] == "SUCCESS"]

        [row] = await eventually(listed)
        assert (row["name"], row["queue"], row["args"], row["result"]) == (
            "dash.add", "default", "(2, 3)", "5")
        assert row["worker"] and row["runtime"] is not None and row["wait"] is not None
        assert (await client.get("/api/tasks", params={"state": "FAILURE"})).json()["tasks"] == []
        assert (await client.get("/api/tasks", params={"id": handle.id[:8]})).json()["total"] == 1
        future = time.time() + 3600
        assert (await client.get("/api/tasks", params={"since": future})).json()["total"] == 0
        assert (await client.get("/api/tasks", params={"state": "NOPE"})).status_code == 400
        detail = (await client.get("/api/task", params={"id": handle.id})).json()
        assert detail["stored"]["state"] == "SUCCESS" and detail["stored"]["result"] == "5"
        assert [e["type"] for e in detail["events"]] == ["task-started", "task-succeeded"]


async def test_a_failed_task_shows_its_traceback_and_a_retry_makes_it_succeed(
        events_app: AioQueue) -> None:
    app = events_app
    attempts: list[int] = []

    @app.task(name="dash.flaky")
    async def flaky(n: int) -> int:
        attempts.append(n)
        if len(attempts) == 1:
            raise ValueError("first attempt fails")
        return n * 2

    async with client_for(create_app(app, username="ops", password="s3cret"),
                          authorization=basic("ops", "s3cret")) as client, \
            app.worker(concurrency=1):
        failed = await flaky.delay(21)
        with pytest.raises(ValueError):
            await failed.get(timeout=10)

        async def failure() -> Any:
            detail = (await client.get("/api/task", params={"id": failed.id})).json()
            return detail if detail["task"] and detail["task"]["state"] == "FAILURE" else None

        detail = await eventually(failure)
        task = detail["task"]
        assert task["exception"] == "ValueError: first attempt fails"
        assert "Traceback" in task["traceback"] and "first attempt fails" in task["traceback"]
        assert task["retriable"] is True
        assert detail["stored"]["state"] == "FAILURE"
        failures = (await client.get("/api/tasks", params={"state": "FAILURE"})).json()["tasks"]
        assert [r["id"] for r in failures] == [failed.id]

        response = await post(client, "retry", {"task_id": failed.id})
        assert response.status_code == 200, response.text
        new_id = response.json()["task_id"]
        assert new_id != failed.id
        assert await app.AsyncResult(new_id).get(timeout=10) == 42

        async def linked() -> Any:
            rows = (await client.get("/api/tasks", params={"id": failed.id})).json()["tasks"]
            return rows if rows and rows[0]["retried_as"] == new_id else None

        await eventually(linked)
    assert attempts == [21, 21]
    async with client_for(create_app(app)) as client:
        [entry] = (await client.get("/api/audit")).json()["entries"]
    assert (entry["who"], entry["action"], entry["target"], entry["detail"]) == (
        "ops", "retry", failed.id, f"as {new_id}")


async def test_retry_all_matching_the_filter_and_revoke(events_app: AioQueue) -> None:
    app = events_app
    calls: list[str] = []

    @app.task(name="dash.once_broken")
    async def once_broken(tag: str) -> str:
        calls.append(tag)
        if calls.count(tag) == 1:
            raise RuntimeError(f"broken {tag}")
        return tag

    async with client_for(create_app(app)) as client, app.worker(concurrency=2):
        handles = [await once_broken.delay(tag) for tag in ("a", "b")]
        for handle in handles:
            with pytest.raises(RuntimeError):
                await handle.get(timeout=10)

        async def both_failed() -> bool:
            body = (await client.get("/api/tasks", params={"state": "FAILURE"})).json()
            return bool(body["total"] == 2)

        await eventually(both_failed)
        response = await post(client, "retry-all", {"name": "once_broken"})
        assert response.status_code == 200, response.text
        retried = response.json()["retried"]
        assert sorted(r["from"] for r in retried) == sorted(h.id for h in handles)
        for r in retried:
            assert await app.AsyncResult(r["to"]).get(timeout=10) in ("a", "b")
        again = (await post(client, "retry-all", {"name": "once_broken"})).json()
        assert again == {"retried": [], "skipped": 2}  # each failure is retried once
        later = await once_broken.apply_async(args=("c",), countdown=3600)
        assert (await post(client, "revoke", {"task_id": later.id})).status_code == 200
        assert str(await app.AsyncResult(later.id).state()) == "REVOKED"
        actions = [e["action"] for e in (await client.get("/api/audit")).json()["entries"]]
        assert actions == ["revoke", "retry", "retry"]  # newest first


async def test_dead_letters_are_listed_decoded_and_requeued(events_app: AioQueue) -> None:
    app = events_app
    async with client_for(create_app(app)) as client, app.worker(concurrency=1):
        # Unknown to the worker: dead-lettered on first sight.
        sent = await app.send_task("dash.later", args=(7,), kwargs={"why": "test"})

        async def dead() -> Any:
            body = (await client.get("/api/dead")).json()
            return [q for q in body["queues"] if q["queue"] == "default" and q["count"]]

        [queue] = await eventually(dead)
        [letter] = queue["letters"]
        assert (letter["task"], letter["task_id"], letter["args"], letter["kwargs"]) == (
            "dash.later", sent.id, "(7,)", "{'why': 'test'}")
        assert letter["reason"] == "not registered: dash.later" and letter["failed_at"]

        @app.task(name="dash.later")
        async def later(n: int, why: str) -> str:
            return f"{n} {why}"

        response = await post(client, "requeue-dead",
                              {"queue": "default", "entry_ids": [letter["entry_id"]]})
        assert response.json() == {"queue": "default", "requeued": 1}
        assert await app.AsyncResult(sent.id).get(timeout=10) == "7 test"
        assert (await client.get("/api/dead")).json()["queues"][0]["count"] == 0
        await app.send_task("dash.nobody", args=())
        await eventually(dead)
        assert (await post(client, "purge-dead", {"queue": "default"})).json()["purged"] == 1


async def test_read_only_hides_and_refuses_actions(events_app: AioQueue) -> None:
    async with client_for(create_app(events_app, read_only=True)) as client:
        assert (await client.get("/api/config")).json()["read_only"] is True
        assert (await client.get("/api/overview")).status_code == 200
        for action, body in [("retry", {"task_id": "x"}), ("retry-all", {}),
                             ("revoke", {"task_id": "x"}), ("purge-queue", {"queue": "q"}),
                             ("requeue-dead", {"queue": "q"}), ("purge-dead", {"queue": "q"})]:
            response = await post(client, action, body)
            assert response.status_code == 403, action
    assert await Monitor(events_app).audit_log() == []


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_authentication_is_required_when_configured(app: AioQueue) -> None:
    dashboard = create_app(app, username="ops", password="pw", token="t0ken")
    async with client_for(dashboard) as client:
        for path in ("/", "/api/overview", "/api/stream", "/static/app.js"):
            response = await client.get(path)
            assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Basic")
        bad = await client.get("/api/config", headers={"authorization": basic("ops", "no")})
        assert bad.status_code == 401
        ok = await client.get("/api/config", headers={"authorization": basic("ops", "pw")})
        assert ok.status_code == 200 and ok.json()["who"] == "ops"
        bearer = await client.get("/api/config", headers={"authorization": "Bearer t0ken"})
        assert bearer.status_code == 200 and bearer.json()["who"] == "token"
        assert (await client.get("/api/config",
                                 headers={"authorization": "Bearer nope"})).status_code == 401
        # In a browser: ?token= once sets a cookie and drops the token from the address.
        page = await client.get("/?token=t0ken")
        assert page.status_code == 303 and page.headers["location"] == "./"
        assert "t0ken" not in page.headers["set-cookie"]
        assert (await client.get("/api/config")).status_code == 200  # by the cookie
        assert "text/html" in (await client.get("/")).headers["content-type"]
    with pytest.raises(ConfigurationError, match="both"):
        create_app(app, username="ops")


async def test_actions_refuse_other_sites_and_non_json(events_app: AioQueue) -> None:
    async with client_for(create_app(events_app)) as client:
        evil = await client.post("/api/actions/purge-queue", json={"queue": "default"},
                                 headers={"origin": "https://evil.example"})
        assert evil.status_code == 403
        form = await client.post("/api/actions/purge-queue", content=b"queue=default",
                                 headers={"content-type": "application/x-www-form-urlencoded"})
        assert form.status_code == 415
        same = await client.post("/api/actions/purge-queue", json={"queue": "default"},
                                 headers={"origin": "http://dash"})
        assert same.status_code == 200 and same.json()["purged"] == 0


async def test_mounted_under_a_prefix_the_page_uses_relative_urls(app: AioQueue) -> None:
    outer = Starlette(routes=[Mount("/tasks", app=create_app(app))])
    async with client_for(outer) as client:
        page = await client.get("/tasks/")
        assert page.status_code == 200
        assert 'src="static/app.js' in page.text and 'src="/' not in page.text
        assert (await client.get("/tasks/static/app.js")).status_code == 200
        assert (await client.get("/tasks/api/config")).json()["app"] == "tests"


async def test_schedules_show_their_next_fire_times(app: AioQueue) -> None:
    app.conf.beat_schedule = {"tick": {"task": "dash.tick", "schedule": 60.0}}
    async with client_for(create_app(app)) as client:
        body = (await client.get("/api/scheduled")).json()
    [entry] = body["schedules"]
    assert (entry["name"], entry["task"], entry["schedule"]) == ("tick", "dash.tick",
                                                                 "every 60s")
    assert len(entry["next"]) == 3 and entry["next"][0] > time.time()
    assert {"name": "default", "delayed": 0} in body["queues"]


async def test_serve_refuses_a_non_loopback_host_without_auth(app: AioQueue) -> None:
    for host in ("0.0.0.0", "192.0.2.10", "example.com", "::"):
        with pytest.raises(ConfigurationError, match="not a loopback address"):
            await serve(app, host=host, port=free_port())
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert is_loopback("127.3.2.1") and not is_loopback("10.0.0.1")


async def test_the_stream_pushes_events_of_a_task_run_after_connecting(
        events_app: AioQueue) -> None:
    app = events_app

    @app.task(name="dash.live")
    async def live(n: int) -> int:
        return n

    async with served(app, token="tk") as base, app.worker(concurrency=1), \
            httpx.AsyncClient(headers={"authorization": "Bearer tk"}) as client:
        with anyio.fail_after(15):
            async with client.stream("GET", base + "api/stream") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                seen: list[str] = []
                event = ""
                handle = None
                async for line in stream.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                        seen.append(event)
                    elif line.startswith("data: ") and event == "hello":
                        handle = await live.delay(5)  # after connecting
                    elif line.startswith("data: ") and event == "events":
                        assert handle is not None
                        states = {(e["task_id"], e["state"]) for e in json.loads(line[6:])}
                        if (handle.id, "SUCCESS") in states:
                            break
                else:
                    raise AssertionError(f"the stream ended; saw {seen}")
        assert seen[0] == "hello" and "overview" in seen
        # Stopping the server ends open streams instead of waiting for them.


async def test_one_reader_serves_every_page_and_stops_with_the_last(app: AioQueue) -> None:
    hub = create_app(app).state.aioqueue_dashboard.hub
    first, second = await hub.subscribe(), await hub.subscribe()
    reader = hub._task
    assert reader is not None and hub.cursor is not None
    for sub in (first, second):
        message = await asyncio.wait_for(sub.queue.get(), 5)
        assert message is not None and message.startswith(b"event: overview\n")
    hub.unsubscribe(first)
    assert not reader.done()
    hub.unsubscribe(second)
    await asyncio.wait([reader], timeout=5)
    assert reader.done() and hub._task is None


def test_a_page_that_cannot_keep_up_is_told_to_resync() -> None:
    async def fill() -> list[bytes | None]:
        sub = Subscriber()
        for i in range(QUEUE_SIZE + 1):
            sub.offer(b"message %d" % i)
        return [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]

    [only] = asyncio.run(fill())
    assert only is not None and only.startswith(b"event: resync\n")


async def test_the_dashboard_serves_prometheus_metrics_behind_its_auth(app: AioQueue) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    @app.task(name="dash.waits")
    async def waits() -> None:
        return None

    await waits.delay_many([() for _ in range(3)])
    dashboard = create_app(app, token="s3cret")
    async with client_for(dashboard) as anonymous:
        assert (await anonymous.get("/metrics")).status_code == 401
    async with client_for(dashboard, Authorization="Bearer s3cret") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    lengths = {s.labels["queue_name"]: s.value
               for family in text_string_to_metric_families(response.text)
               if family.name == "celery_queue_length" for s in family.samples}
    assert lengths["default"] == 3
