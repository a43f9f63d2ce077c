"""The Redis broker: streams for queues, sorted sets for delays, strings for results.

The only module that imports ``redis``. Redis errors are wrapped here, at the boundary:
connection failures become :class:`BrokerConnectionError` naming the URL (never its
password) after a bounded wait, so a producer calling ``delay`` while Redis is down gets a
clear error instead of hanging.

Blocking reads (``XREADGROUP ... BLOCK``, ``BLMPOP``) each run on a dedicated connection and
are never cancelled mid-call: a cancelled read may already have been served, and cancelled
redis-py commands have corrupted connections before (redis-py #2665). To stop one early we
send ``CLIENT UNBLOCK`` from another connection, which makes the server answer "nothing".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import parse_url

from .._keys import CONSUMER_GROUP, Keys
from .._lua import load as load_lua
from ..errors import BrokerConnectionError, BrokerError
from ._resp import RespConnection, RespError
from .base import DeadLetter, Delivery, Enqueue, Outcome

__all__ = ("RedisBroker", "redact_url")


def _field(fields: list[bytes] | None, name: bytes) -> bytes:
    """A field of a stream entry given as [name, value, ...] (empty if missing)."""
    if fields:
        for index in range(0, len(fields) - 1, 2):
            if fields[index] == name:
                return fields[index + 1]
    return b""

log = logging.getLogger("aioqueue.broker")
T = TypeVar("T")

_CONNECTION_ERRORS = (
    redis_errors.ConnectionError, redis_errors.TimeoutError, ConnectionError, TimeoutError, OSError
)
#: Error replies that mean "not now" rather than "no" (redis-py retries these too).
_TRANSIENT_REPLIES = ("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN")
#: Dead-letter streams are capped so a flood of poison messages cannot fill Redis.
DEAD_LETTER_MAXLEN = 100_000
_MOVE_BATCH = 1000


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _resp_options(url: str, connect_timeout_s: float) -> dict[str, Any]:
    """Connection settings for the lean hot-path connection, parsed as redis-py parses them."""
    parsed = parse_url(url)
    options: dict[str, Any] = {
        "host": parsed.get("host", "localhost"),
        "port": int(parsed.get("port", 6379)),
        "path": parsed.get("path"),
        "username": parsed.get("username"),
        "password": parsed.get("password"),
        "db": int(parsed.get("db", 0) or 0),
        "connect_timeout_s": connect_timeout_s,
    }
    if url.lower().startswith("rediss://"):
        options["ssl"] = ssl.create_default_context()
    return options


class _Blocking:
    """A dedicated connection for one blocking command, unblockable from another one."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.conn = RespConnection(**options)
        self.client_id: int | None = None
        self.busy = False

    async def call(self, *args: Any) -> Any:
        if self.client_id is None or not self.conn.connected:
            self.client_id = await self.conn.client_id()
        self.busy = True
        try:
            return await self.conn.execute(*args)
        except BaseException:
            self.client_id = None
            raise
        finally:
            self.busy = False

    async def unblock(self, via: RespConnection) -> None:
        if self.busy and self.client_id is not None:
            # On failure the blocked read simply returns at its own timeout.
            with contextlib.suppress(*_CONNECTION_ERRORS, RespError):
                await via.execute("CLIENT", "UNBLOCK", self.client_id)

    async def close(self) -> None:
        await self.conn.close()


class RedisBroker:
    """Queues, results, control and schedules on one Redis server."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "aioqueue",
        connect_timeout_s: float = 10.0,
        max_block_s: float = 2.0,
    ) -> None:
        self.url = url
        self.display_url = redact_url(url)
        self.keys = Keys(prefix)
        #: How long a producer's command retries while Redis is unreachable.
        self.connect_timeout_s = connect_timeout_s
        self._max_block_s = max_block_s
        # Typed as Any on purpose: redis-py's stubs type replies as ``bytes | str`` whatever
        # ``decode_responses`` says; ours is always False, so replies are bytes.
        self._client: Any = aioredis.Redis.from_url(
            url, socket_connect_timeout=min(connect_timeout_s, 5.0)
        )
        # The hot path (enqueue, fetch, settle, results) runs on lean connections: see _resp.py.
        options = _resp_options(url, min(connect_timeout_s, 5.0))
        self._hot = RespConnection(**options)
        self._fetch = _Blocking(options)
        self._replies = _Blocking(options)
        self._settle_lua = load_lua("settle")
        self._settle_sha = hashlib.sha1(self._settle_lua.encode()).hexdigest()
        self._move_due_lua = load_lua("move_due")
        self._move_due_sha = hashlib.sha1(self._move_due_lua.encode()).hexdigest()
        self._lease = self._client.register_script(load_lua("lease"))
        self._release = self._client.register_script(load_lua("release"))
        self._requeue_dead = self._client.register_script(load_lua("requeue_dead"))
        self._known_groups: set[str] = set()
        self._closed = False

    # -- plumbing --------------------------------------------------------------------------
    async def _call(
        self, op: Callable[[], Awaitable[T]], *, deadline_s: float | None = None
    ) -> T:
        """Run ``op``, retrying with back-off while Redis is unreachable, up to a deadline."""
        limit = self.connect_timeout_s if deadline_s is None else deadline_s
        give_up_at = time.monotonic() + limit
        delay = 0.05
        while True:
            try:
                try:
                    return await op()
                except RespError as exc:
                    if str(exc).startswith(_TRANSIENT_REPLIES):
                        # A restarting server: as good as unreachable for now, so wait.
                        raise ConnectionError(str(exc)) from exc
                    raise
            except _CONNECTION_ERRORS as exc:
                remaining = give_up_at - time.monotonic()
                if self._closed or remaining <= 0:
                    raise BrokerConnectionError(
                        f"cannot reach Redis at {self.display_url}: {exc}"
                    ) from exc
                await anyio.sleep(min(delay, remaining))
                delay = min(delay * 2, 1.0)
            except (redis_errors.ResponseError, RespError) as exc:
                if "NOGROUP" in str(exc):
                    # The stream vanished (Redis restarted without persistence, or FLUSHDB).
                    self._known_groups.clear()
                raise BrokerError(f"Redis at {self.display_url} refused a command: {exc}") from exc

    async def connect(self) -> None:
        await self._call(self._client.ping)

    async def close(self) -> None:
        self._closed = True
        await self.interrupt_fetch()
        await self.interrupt_replies()
        await self._fetch.close()
        await self._replies.close()
        await self._hot.close()
        await self._client.aclose()

    # -- producing -------------------------------------------------------------------------
    def _add_command(self, item: Enqueue) -> tuple[Any, ...]:
        if item.due_at is None:
            return ("XADD", self.keys.stream(item.queue), "*", "m", item.payload)
        return ("ZADD", self.keys.delayed(item.queue), repr(item.due_at), item.payload)

    async def enqueue(self, items: Sequence[Enqueue]) -> None:
        hot = self._hot
        if len(items) == 1:
            command = self._add_command(items[0])
            try:
                # The common case straight through; the retrying wrapper only on trouble.
                await hot.execute(*command)
            except (*_CONNECTION_ERRORS, RespError):
                await self._call(lambda: hot.execute(*command))
            return
        commands = [self._add_command(item) for item in items]

        # One write out, one read back.
        await self._call(lambda: hot.execute_many(commands))

    # -- consuming -------------------------------------------------------------------------
    async def ensure_queues(self, queues: Sequence[str]) -> None:
        for queue in queues:
            stream = self.keys.stream(queue)
            if stream in self._known_groups:
                continue

            async def create(stream: str = stream) -> None:
                try:
                    await self._client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
                except redis_errors.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

            await self._call(create)
            self._known_groups.add(stream)

    async def fetch(
        self, queues: Sequence[str], consumer: str, count: int, timeout_s: float
    ) -> list[Delivery]:
        await self.ensure_queues(queues)
        streams = [self.keys.stream(q) for q in queues]
        names = {stream.encode(): q for stream, q in zip(streams, queues, strict=True)}
        command: list[Any] = ["XREADGROUP", "GROUP", CONSUMER_GROUP, consumer, "COUNT", count]
        if timeout_s > 0:
            command += ["BLOCK", max(1, int(min(timeout_s, self._max_block_s) * 1000))]
        command += ["STREAMS", *streams, *(">" for _ in streams)]
        try:
            reply = await self._fetch.call(*command)
        except _CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(f"cannot reach Redis at {self.display_url}: {exc}") from exc
        except RespError as exc:
            if "NOGROUP" in str(exc):
                self._known_groups.clear()
                return []
            if "UNBLOCKED" in str(exc):
                return []
            raise BrokerError(f"Redis at {self.display_url} refused XREADGROUP: {exc}") from exc
        out: list[Delivery] = []
        for stream_name, entries in reply or ():
            queue = names[stream_name]
            for entry_id, fields in entries:
                out.append(Delivery(queue, entry_id.decode(), _field(fields, b"m")))
        return out

    async def interrupt_fetch(self) -> None:
        await self._fetch.unblock(self._hot)

    async def reclaim(
        self, queues: Sequence[str], consumer: str, idle_s: float, count: int
    ) -> list[Delivery]:
        idle_ms = int(idle_s * 1000)
        out: list[Delivery] = []
        for queue in queues:
            if len(out) >= count:
                break
            stream = self.keys.stream(queue)
            pending = await self._call(partial(
                self._client.xpending_range,
                stream, CONSUMER_GROUP, "-", "+", count - len(out), idle=idle_ms,
            ))
            if not pending:
                continue
            times = {p["message_id"]: int(p["times_delivered"]) for p in pending}
            # XCLAIM re-checks the idle time, so two workers racing here cannot both win.
            claimed = await self._call(partial(
                self._client.xclaim, stream, CONSUMER_GROUP, consumer, idle_ms, list(times)
            ))
            for entry_id, fields in claimed:
                payload = fields.get(b"m", b"") if fields else b""
                out.append(Delivery(queue, entry_id.decode(), payload, times[entry_id] + 1))
        return out

    async def keep_claimed(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        by_queue: dict[str, list[str]] = defaultdict(list)
        for d in deliveries:
            by_queue[d.queue].append(d.message_id)

        async def run() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                for queue, ids in by_queue.items():
                    pipe.xclaim(self.keys.stream(queue), CONSUMER_GROUP, consumer, 0, ids,
                                justid=True)
                await pipe.execute()

        await self._call(run)

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        # One Lua call: the results are stored in the same atomic step as the acks, so a crash
        # can never leave a message acknowledged without its result (or a retry unscheduled).
        args: list[Any] = [CONSUMER_GROUP]
        acks: dict[str, list[str]] = defaultdict(list)
        reply_ttls: dict[str, int] = {}
        now = repr(time.time())
        result_key = self.keys.result
        for o in outcomes:
            if o.record is not None and o.task_id is not None:
                ttl_ms = max(1, int(o.result_ttl_s * 1000))
                args += ("S", result_key(o.task_id), o.record, ttl_ms)
                if o.reply_to is not None:
                    args += ("P", o.reply_to, o.record)
                    reply_ttls[o.reply_to] = max(reply_ttls.get(o.reply_to, 0), ttl_ms)
            requeue = o.requeue
            if requeue is not None:
                if requeue.due_at is None:
                    args += ("Q", self.keys.stream(requeue.queue), requeue.payload)
                else:
                    args += ("Z", self.keys.delayed(requeue.queue), requeue.payload,
                             repr(requeue.due_at))
            d = o.delivery
            if d is not None:
                if o.dead_reason is not None:
                    args += ("L", self.keys.dead(d.queue), d.payload, o.dead_reason, now,
                             d.message_id, DEAD_LETTER_MAXLEN)
                acks[d.queue].append(d.message_id)
        for key, ttl_ms in reply_ttls.items():
            args += ("X", key, ttl_ms)
        for queue, ids in acks.items():
            args += ("A", self.keys.stream(queue), len(ids), *ids)
        hot, lua, sha = self._hot, self._settle_lua, self._settle_sha
        await self._call(lambda: hot.evalsha(lua, sha, [], args))

    async def move_due(self, queues: Sequence[str], now: float) -> int:
        hot, lua, sha = self._hot, self._move_due_lua, self._move_due_sha

        async def run() -> int:
            moved = await asyncio.gather(*(
                hot.evalsha(lua, sha, [self.keys.delayed(q), self.keys.stream(q)],
                            [repr(now), _MOVE_BATCH])
                for q in queues
            ))
            return sum(int(n) for n in moved)

        return await self._call(run)

    async def forget_consumer(self, queues: Sequence[str], consumer: str) -> None:
        # Housekeeping on the way out: never hold a stopping worker for long.
        for q in queues:
            stream = self.keys.stream(q)
            pending = await self._call(partial(
                self._client.xpending_range, stream, CONSUMER_GROUP, "-", "+", 1,
                consumername=consumer,
            ), deadline_s=1.0)
            if not pending:
                await self._call(partial(
                    self._client.xgroup_delconsumer, stream, CONSUMER_GROUP, consumer
                ), deadline_s=1.0)

    # -- results ---------------------------------------------------------------------------
    async def get_result(self, task_id: str) -> bytes | None:
        key, hot = self.keys.result(task_id), self._hot
        value: bytes | None = await self._call(lambda: hot.execute("GET", key))
        return value

    async def get_results(self, task_ids: Sequence[str]) -> list[bytes | None]:
        keys = [self.keys.result(task_id) for task_id in task_ids]
        if not keys:
            return []
        hot = self._hot
        values: list[bytes | None] = await self._call(lambda: hot.execute("MGET", *keys))
        return values

    async def set_result(self, task_id: str, record: bytes, ttl_s: float) -> None:
        key = self.keys.result(task_id)
        await self._call(lambda: self._client.set(key, record, px=max(1, int(ttl_s * 1000))))

    async def delete_result(self, task_id: str) -> None:
        key = self.keys.result(task_id)
        await self._call(lambda: self._client.delete(key))

    async def wait_replies(self, reply_to: str, timeout_s: float) -> list[bytes]:
        timeout = repr(max(0.001, min(timeout_s, self._max_block_s)))
        try:
            reply = await self._replies.call("BLMPOP", timeout, 1, reply_to, "LEFT",
                                             "COUNT", 1000)
        except _CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(f"cannot reach Redis at {self.display_url}: {exc}") from exc
        except RespError as exc:
            if "UNBLOCKED" in str(exc):
                return []
            raise BrokerError(f"Redis at {self.display_url} refused BLMPOP: {exc}") from exc
        if not reply:
            return []
        _key, values = reply
        return list(values)

    async def interrupt_replies(self) -> None:
        await self._replies.unblock(self._hot)

    # -- control ---------------------------------------------------------------------------
    async def revoke(self, task_id: str, until: float, control: bytes) -> None:
        async def run() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zadd(self.keys.revoked, {task_id: until})
                pipe.publish(self.keys.control, control)
                await pipe.execute()

        await self._call(run)

    async def revoked_ids(self, now: float) -> set[str]:
        key = self.keys.revoked

        async def run() -> list[bytes]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(key, "-inf", now)
                pipe.zrange(key, 0, -1)
                _, ids = await pipe.execute()
                return list(ids)

        return {i.decode() for i in await self._call(run)}

    async def control_messages(self) -> AsyncIterator[bytes]:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await self._call(lambda: pubsub.subscribe(self.keys.control))
            while not self._closed:
                try:
                    message = await pubsub.get_message(timeout=0.5)
                except _CONNECTION_ERRORS as exc:
                    raise BrokerConnectionError(
                        f"lost control channel of Redis at {self.display_url}: {exc}"
                    ) from exc
                if message is not None and message.get("type") == "message":
                    yield bytes(message["data"])
        finally:
            with (anyio.CancelScope(shield=True), anyio.move_on_after(1.0),
                  contextlib.suppress(*_CONNECTION_ERRORS)):
                await pubsub.aclose()

    async def queue_sizes(self, queues: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        async def run() -> list[int]:
            async with self._client.pipeline(transaction=False) as pipe:
                for q in queues:
                    pipe.xlen(self.keys.stream(q))
                    pipe.zcard(self.keys.delayed(q))
                    pipe.xlen(self.keys.dead(q))
                return [int(n) for n in await pipe.execute()]

        counts = await self._call(run)
        return {q: (counts[3 * i], counts[3 * i + 1], counts[3 * i + 2])
                for i, q in enumerate(queues)}

    # -- dead letters ----------------------------------------------------------------------
    async def dead_letters(self, queue: str, count: int) -> list[DeadLetter]:
        key = self.keys.dead(queue)
        entries = await self._call(lambda: self._client.xrange(key, "-", "+", count=count))
        out = []
        for entry_id, fields in entries:
            out.append(DeadLetter(
                queue=queue,
                entry_id=entry_id.decode(),
                payload=fields.get(b"m", b""),
                reason=fields.get(b"reason", b"").decode(errors="replace"),
                failed_at=float(fields.get(b"failed_at", b"0") or 0),
            ))
        return out

    async def requeue_dead(self, queue: str, entry_ids: Sequence[str] | None) -> int:
        keys = [self.keys.dead(queue), self.keys.stream(queue)]
        args = list(entry_ids or ())
        await self.ensure_queues([queue])
        moved = await self._call(lambda: self._requeue_dead(keys=keys, args=args))
        return int(moved)

    async def purge_dead(self, queue: str) -> int:
        key = self.keys.dead(queue)

        async def run() -> int:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xlen(key)
                pipe.delete(key)
                n, _ = await pipe.execute()
                return int(n)

        return await self._call(run)

    # -- beat ------------------------------------------------------------------------------
    async def acquire_lease(self, owner: str, ttl_s: float) -> bool:
        key = self.keys.beat_lease
        got = await self._call(
            lambda: self._lease(keys=[key], args=[owner, max(1, int(ttl_s * 1000))])
        )
        return bool(got)

    async def release_lease(self, owner: str) -> None:
        key = self.keys.beat_lease
        await self._call(lambda: self._release(keys=[key], args=[owner]))

    async def claim_tick(self, name: str, tick: float, ttl_s: float) -> bool:
        key = self.keys.beat_tick(name, tick)
        got = await self._call(
            lambda: self._client.set(key, b"1", nx=True, px=max(1, int(ttl_s * 1000)))
        )
        return bool(got)

    async def last_runs(self) -> dict[str, float]:
        key = self.keys.beat_last_run
        raw: dict[bytes, bytes] = await self._call(lambda: self._client.hgetall(key))
        return {k.decode(): float(v) for k, v in raw.items()}

    async def set_last_run(self, name: str, tick: float) -> None:
        key = self.keys.beat_last_run
        await self._call(lambda: self._client.hset(key, name, repr(tick)))

    async def replace_schedules(self, schedules: dict[str, str]) -> None:
        """Store what this deployment declares, dropping schedules no longer declared."""
        key, runs = self.keys.beat_schedules, self.keys.beat_last_run

        async def run() -> None:
            old = await self._client.hkeys(key)
            gone = [k for k in old if k.decode() not in schedules]
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if schedules:
                    pipe.hset(key, mapping=schedules)
                if gone:
                    pipe.hdel(runs, *gone)
                await pipe.execute()

        await self._call(run)
