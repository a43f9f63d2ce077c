"""The dashboard's Starlette application: the page, its JSON API and its event stream.

Every URL is relative to where the app is mounted, so ``api.mount("/tasks",
create_app(aq))`` works as well as serving it at ``/``. Read endpoints are ``GET
api/...``; actions are ``POST api/actions/<action>`` with a JSON body, refused with 403
when the dashboard is read-only. Actions are recorded in the audit log under the name of
whoever took them (the basic-auth user, ``token``, or ``dashboard`` without auth).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import AioQueueError, ConfigurationError
from ..events import Event
from ..monitor import Monitor
from . import _views as views
from ._auth import WHO, Auth, Guard
from ._hub import Hub, sse

if TYPE_CHECKING:
    from ..app import AioQueue

STATIC = Path(__file__).parent / "static"
#: Events read to rebuild the task list, and a task's detail or retry.
DEFAULT_SCAN = 5_000
DETAIL_SCAN = 20_000
MAX_SCAN = 50_000
#: Most tasks one "retry all" sends.
RETRY_ALL_MAX = 1_000
#: Most event streams open at once (each holds a queue; the reader is shared).
MAX_STREAMS = 200
#: Events a reconnecting page may catch up on before it is told to re-read everything.
BACKLOG = 1_000

_encoder = msgspec.json.Encoder()
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'")


class HTTPProblem(Exception):
    """A request the dashboard refuses: becomes ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(data: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(data), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPProblem(400, f"{name} must be an integer, got {raw!r}") from None
    return max(low, min(high, value))


def _text(body: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or len(value) > 1000:
        raise HTTPProblem(400, f"'{name}' must be a non-empty string")
    return value


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Handler) -> Handler:
    """Turns refusals and broker errors into JSON answers."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except HTTPProblem as problem:
            return _json({"error": problem.message}, problem.status)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        except AioQueueError as exc:  # Redis unreachable, a broken record...
            return _json({"error": f"{type(exc).__name__}: {exc}"}, 503)

    return run


class Dashboard:
    """The endpoints, over one app's :class:`~aioqueue.monitor.Monitor`."""

    def __init__(self, aq: AioQueue, *, read_only: bool, auth: Auth,
                 overview_interval_s: float = 2.0) -> None:
        self.aq = aq
        self.monitor = Monitor(aq)
        self.read_only = read_only
        self.auth = auth
        self.hub = Hub(self.monitor, self._overview, interval_s=overview_interval_s)
        from .. import __version__

        self.version = __version__
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        self.page = page.replace("{{version}}", __version__).encode()
        #: The last events read: (newest id then, how many were asked, the events).
        self._events: tuple[str | None, int, list[tuple[str, Event]]] | None = None

    async def recent_events(self, count: int) -> list[tuple[str, Event]]:
        """The newest ``count`` events, re-read only when the stream has grown since the last
        read (one cheap round trip to check): pages refreshing on every event share it."""
        newest = await self.aq.broker.read_log("events", count=1)
        newest_id = newest[-1][0] if newest else None
        cached = self._events
        if cached is not None and cached[0] == newest_id and cached[1] >= count:
            return cached[2][-count:]
        events = await self.monitor.recent_events(count)
        self._events = (newest_id, count, events)
        return events

    async def _overview(self) -> dict[str, Any]:
        return await views.overview(self.monitor)

    # -- the page ----------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        return Response(self.page, media_type="text/html; charset=utf-8", headers={
            "content-security-policy": _CSP, "cache-control": "no-cache"})

    # -- reading -----------------------------------------------------------------------------
    async def config(self, request: Request) -> Response:
        return _json({
            "app": self.aq.main,
            "broker": self.aq.display_broker_url,
            "version": self.version,
            "read_only": self.read_only,
            "who": request.scope.get(WHO, "dashboard"),
            "auth": self.auth.required,
            "default_queue": self.aq.conf.task_default_queue,
            "timezone": str(self.aq.conf.timezone),
            "states": list(views.STATES),
            "events_enabled": bool(self.aq.conf.worker_send_task_events),
        })

    async def overview(self, request: Request) -> Response:
        minutes = _int(request, "minutes", 60, 1, 24 * 60)
        return _json(await views.overview(self.monitor, minutes))

    async def events(self, request: Request) -> Response:
        count = _int(request, "count", 50, 1, 1000)
        events = await self.recent_events(count)
        return _json({"events": [views.event_json(i, e) for i, e in events],
                      "last_event_id": events[-1][0] if events else None})

    async def tasks(self, request: Request) -> Response:
        flt = views.TaskFilter.from_mapping(request.query_params)
        limit = _int(request, "limit", 200, 1, 2000)
        scan = _int(request, "scan", DEFAULT_SCAN, 1, MAX_SCAN)
        events = await self.recent_events(scan)
        audit = await self.monitor.audit_log(1000)
        return _json(views.task_list(events, flt, limit, audit))

    async def task(self, request: Request) -> Response:
        task_id = request.query_params.get("id", "")
        if not task_id:
            raise HTTPProblem(400, "give the task id: api/task?id=...")
        scan = _int(request, "scan", DETAIL_SCAN, 1, MAX_SCAN)
        events = await self.recent_events(scan)
        stored: Any
        try:
            stored = await self.monitor.task(task_id)
        except AioQueueError as exc:  # an undecodable record: show the rest anyway
            stored = exc
        audit = await self.monitor.audit_log(1000)
        detail = views.task_detail(task_id, events, stored, audit)
        if detail["task"] is None and (stored is None or getattr(stored, "state", "") ==
                                       "PENDING"):
            detail["note"] = (f"no event of this task in the newest {len(events)} events and "
                              f"no stored result")
        return _json(detail)

    async def dead(self, request: Request) -> Response:
        count = _int(request, "count", 100, 1, 1000)
        wanted = request.query_params.get("queue")
        names = [wanted] if wanted else await self.monitor.queue_names()
        queues = await self.monitor.queues(names)
        out = []
        for details in queues:
            letters = [] if details.dead == 0 else await self.aq.broker.dead_letters(
                details.name, count)
            out.append({"queue": details.name, "count": details.dead,
                        "letters": [views.dead_letter_json(self.aq, d) for d in letters]})
        return _json({"queues": out})

    async def scheduled(self, request: Request) -> Response:
        queues = await self.monitor.queues()
        data = await views.schedules(self.aq)
        data["queues"] = [{"name": q.name, "delayed": q.delayed} for q in queues]
        return _json(data)

    async def audit(self, request: Request) -> Response:
        count = _int(request, "count", 200, 1, 10_000)
        entries = await self.monitor.audit_log(count)
        return _json({"entries": [views.audit_json(e) for e in reversed(entries)]})

    # -- live --------------------------------------------------------------------------------
    async def stream(self, request: Request) -> Response:
        # A reconnecting EventSource says where it stopped (Last-Event-ID): that is newer
        # than the ``after`` of the URL it first opened.
        after = views.valid_stream_id(request.headers.get("last-event-id")
                                      or request.query_params.get("after"))
        if len(self.hub.subscribers) >= MAX_STREAMS:
            raise HTTPProblem(503, f"too many open event streams (over {MAX_STREAMS})")

        async def body() -> AsyncIterator[bytes]:
            # Subscribed here, not before: a generator that never starts (the client left
            # first) never runs its ``finally`` either.
            sub = await self.hub.subscribe()
            try:
                hello = {"cursor": self.hub.cursor, "read_only": self.read_only,
                         "interval_s": self.hub.interval_s}
                yield b"retry: 2000\n\n" + sse("hello", hello)
                if after is not None:
                    try:
                        backlog = await self.monitor.events_after(after, BACKLOG)
                    except AioQueueError as exc:  # the page re-reads when it is back
                        backlog = []
                        yield sse("status", {"ok": False, "error": str(exc)[:500]})
                    if len(backlog) >= BACKLOG:
                        yield sse("resync", {"reason": "too many events missed"})
                    elif backlog:
                        yield sse("events", [views.event_json(i, e) for i, e in backlog],
                                  backlog[-1][0])
                while True:
                    try:
                        message = await asyncio.wait_for(sub.queue.get(), 15.0)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if message is None:
                        return
                    yield message
            finally:
                self.hub.unsubscribe(sub)

        return StreamingResponse(body(), media_type="text/event-stream", headers={
            "cache-control": "no-store", "x-accel-buffering": "no"})

    # -- acting ------------------------------------------------------------------------------
    async def action(self, request: Request) -> Response:
        if self.read_only:
            raise HTTPProblem(403, "this dashboard is read-only")
        _same_origin(request)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPProblem(415, "send the action's arguments as application/json")
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise HTTPProblem(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise HTTPProblem(400, "the body must be a JSON object")
        who = str(request.scope.get(WHO, "dashboard"))
        name = request.path_params["action"]
        act = {
            "retry": self._retry,
            "retry-all": self._retry_all,
            "revoke": self._revoke,
            "requeue-dead": self._requeue_dead,
            "purge-dead": self._purge_dead,
            "purge-queue": self._purge_queue,
        }.get(name)
        if act is None:
            raise HTTPProblem(404, f"no action {name!r}")
        return _json(await act(body, who))

    async def _retry(self, body: dict[str, Any], who: str) -> dict[str, Any]:
        task_id = _text(body, "task_id")
        events = await self.recent_events(DETAIL_SCAN)
        row = views.group_tasks(events).get(task_id)
        event = None if row is None else row.retry_event()
        if event is None:
            raise HTTPProblem(409, f"task {task_id} cannot be retried: no failure of it that "
                                   f"kept its message in the newest {len(events)} events")
        try:
            new_id = await self.monitor.retry(event, who=who)
        except ConfigurationError as exc:
            raise HTTPProblem(409, str(exc)) from None
        return {"task_id": new_id, "retry_of": task_id}

    async def _retry_all(self, body: dict[str, Any], who: str) -> dict[str, Any]:
        flt = views.TaskFilter.from_mapping(body)
        flt.states = (flt.states & views.RETRIABLE_STATES) or views.RETRIABLE_STATES
        events = await self.recent_events(_body_int(body, "scan", DEFAULT_SCAN))
        retried_as, _ = views.retry_links(await self.monitor.audit_log(10_000))
        done: list[dict[str, str]] = []
        skipped = 0
        for row in views.group_tasks(events).values():
            summary = row.summary()
            if not flt.matches(row, summary):
                continue
            event = row.retry_event()
            if event is None or row.id in retried_as or len(done) >= RETRY_ALL_MAX:
                skipped += 1
                continue
            try:
                new_id = await self.monitor.retry(event, who=who)
            except ConfigurationError:
                skipped += 1
                continue
            done.append({"from": row.id, "to": new_id})
        return {"retried": done, "skipped": skipped}

    async def _revoke(self, body: dict[str, Any], who: str) -> dict[str, Any]:
        task_id = _text(body, "task_id")
        terminate = bool(body.get("terminate", False))
        await self.monitor.revoke(task_id, terminate=terminate, who=who)
        return {"task_id": task_id, "terminate": terminate}

    async def _requeue_dead(self, body: dict[str, Any], who: str) -> dict[str, Any]:
        queue = _text(body, "queue")
        ids = body.get("entry_ids")
        if ids is not None and (not isinstance(ids, list) or not all(
                isinstance(i, str) for i in ids)):
            raise HTTPProblem(400, "'entry_ids' must be a list of strings (or absent: all)")
        n = await self.monitor.requeue_dead(queue, ids, who=who)
        return {"queue": queue, "requeued": n}

    async def _purge_dead(self, body: dict[str, Any], who: str) -> dict[str, Any]:
        queue = _text(body, "queue")
        return {"queue": queue, "purged": await self.monitor.purge_dead(queue, who=who)}

    async def _purge_queue(self, body: dict[str, Any], who: str) -> dict[str, Any]:
        queue = _text(body, "queue")
        return {"queue": queue, "purged": await self.monitor.purge(queue, who=who)}

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        await self.hub.close()


def _body_int(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise HTTPProblem(400, f"'{name}' must be an integer")
    return max(1, min(MAX_SCAN, value))


def _same_origin(request: Request) -> None:
    """Refuse an action that a page of another site makes the browser send (CSRF).

    Browsers say where a request comes from (``Sec-Fetch-Site``, ``Origin``); a client
    that is not a browser says nothing and is let through (it had to authenticate anyway).
    """
    site = request.headers.get("sec-fetch-site")
    if site == "same-origin":
        return
    origin = request.headers.get("origin")
    if origin is None and site in (None, "none"):
        return
    hosts = {request.headers.get("host", "").lower()}
    forwarded = request.headers.get("x-forwarded-host")
    if forwarded:
        hosts.add(forwarded.split(",")[0].strip().lower())
    if origin is None or urlsplit(origin).netloc.lower() not in hosts:
        raise HTTPProblem(403, f"cross-origin action refused (Origin {origin})")


def create_app(aq: AioQueue, *, read_only: bool = False, username: str | None = None,
               password: str | None = None, token: str | None = None) -> Starlette:
    """The dashboard of ``aq`` as a Starlette app, to serve or to mount in another app.

    ``read_only`` hides the actions and refuses them (403). ``username`` and ``password``
    require HTTP basic auth; ``token`` accepts ``Authorization: Bearer <token>`` (or
    ``?token=`` once in the browser, which sets a cookie); with both, either works.
    """
    auth = Auth(username, password, token)
    dash = Dashboard(aq, read_only=read_only, auth=auth)
    g = _guarded
    routes = [
        Route("/", dash.index),
        Route("/api/config", g(dash.config)),
        Route("/api/overview", g(dash.overview)),
        Route("/api/events", g(dash.events)),
        Route("/api/tasks", g(dash.tasks)),
        Route("/api/task", g(dash.task)),
        Route("/api/dead", g(dash.dead)),
        Route("/api/scheduled", g(dash.scheduled)),
        Route("/api/audit", g(dash.audit)),
        Route("/api/stream", g(dash.stream)),
        Route("/api/actions/{action}", g(dash.action), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    try:  # Prometheus /metrics of the whole system, with aioqueue[metrics] installed
        from ..metrics import create_metrics_app

        routes.append(Route("/metrics", create_metrics_app(aq)))
    except ImportError:
        pass
    app = Starlette(routes=routes, middleware=[Middleware(Guard, auth=auth)],
                    lifespan=dash.lifespan)
    app.state.aioqueue_dashboard = dash
    return app
