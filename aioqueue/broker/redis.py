"""The Redis broker: streams for queues, sorted sets for delays, strings for results.

The only module that talks to Redis. Every data-path command (enqueue, fetch, reclaim,
heartbeat, settle, results, control state, dead letters, beat) runs on the lean
auto-pipelining connection of ``_resp.py``: one client, one reading of the URL, one timeout
model, one error taxonomy, pub/sub (the workers' control channel) included: a subscription is a
``RespConnection`` of its own. (It used redis-py until importing that was found to be a
third of a worker's start-up.)

Errors are wrapped here, at the boundary: connection failures (and replies that mean "not
now", such as ``LOADING``) are retried with back-off up to ``broker_connection_timeout``,
then raised as :class:`BrokerConnectionError` naming the URL (never its password); a refusal
is a :class:`BrokerError`.

Blocking reads (``XREADGROUP ... BLOCK``, ``BLMPOP``) each run on a dedicated connection and
are never cancelled mid-call: a cancelled read may already have been served. To stop one
early we send ``CLIENT UNBLOCK`` from another connection, which makes the server answer
"nothing".

Behind Redis Sentinel (``sentinel://``, see ``_sentinel.py``) every RESP connection asks the
sentinels for the master at each (re)connect (and once a second while in use) and checks its
role; ``READONLY`` (a demoted master) counts as "not now" like ``LOADING``, and its socket is
dropped, so every retry loop (producers, fetch, settle, the result listener, beat) follows
a failover through its usual reconnect; a resubscription asks the sentinels too.

On Redis Cluster (``redis+cluster://``, see ``_cluster.py``) an app's keys are all in the
slot of its key prefix's hash tag; every RESP connection asks the cluster which master owns
that slot at each (re)connect, and ``MOVED``/``ASK`` count as "not now" too (the socket is
dropped and the next try goes where the slot is now). ``CROSSSLOT`` is a bug: a
``BrokerError``. A subscription goes to the slot's master of the moment it is made (classic
pub/sub reaches every node of a cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio

from .._keys import CONSUMER_GROUP, Keys
from .._lua import Script, script
from ..errors import BrokerConnectionError, BrokerError, SerializationError
from ..flow import Admission, Gate
from ._lanes import LanePlanner
from ._resp import RespArgumentError, RespConnection, RespError
from ._url import RedisTarget, parse_redis_url
from .base import (
    REPLY_CAP,
    DeadLetter,
    Delivery,
    Enqueue,
    Outcome,
    QueueDetails,
    Release,
    Revocations,
    SettleFailure,
)

__all__ = ("MIN_REDIS_VERSION", "RedisBroker")

log = logging.getLogger("aioqueue.broker")
T = TypeVar("T")

_CONNECTION_ERRORS = (ConnectionError, TimeoutError, OSError)
#: Error replies that mean "not now" rather than "no" (redis-py retries these too).
_TRANSIENT_REPLIES = ("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "READONLY",
                      "MOVED", "ASK")  # Redis Cluster: the slot is elsewhere (now or soon)
#: Dead-letter streams are capped so a flood of poison messages cannot fill Redis.
DEAD_LETTER_MAXLEN = 100_000
#: XPENDING IDLE and LPOP with a count need 6.2; BLMPOP (7.0) has a fallback for 6.2.
MIN_REDIS_VERSION = (6, 2)
#: A reply list is read at once by a listening producer; kept only this long for one
#: that is not listening (fire-and-forget senders, a process that exited), and capped.
REPLY_TTL_S = 300.0
#: Settle guards (see settle.lua) only need to outlive a replay of the same batch.
SETTLE_GUARD_TTL_S = 3600.0
_MOVE_BATCH = 1000
_REQUEUE_BATCH = 10_000
_ENTRY_ID = re.compile(r"\d+(-\d+)?")

_FETCH, _RECLAIM, _KEEP, _SETTLE = (script(n) for n in ("fetch", "reclaim", "keep_claimed",
                                                         "settle"))
_MOVE_DUE, _PRUNE, _REVOKE = script("move_due"), script("prune_consumers"), script("revoke")
_LEASE, _RELEASE, _REQUEUE = script("lease"), script("release"), script("requeue_dead")
_PURGE = script("purge_queue")
_GATE, _ADMIT, _PROMOTE = script("gate"), script("admit"), script("promote_slots")
_CAS_RESULT = script("cas_result")
#: Control answers wait this long for the asker to read them.
CONTROL_REPLY_TTL_S = 60.0


def _message(flat: list[bytes] | None) -> bytes:
    """The ``m`` field of a stream entry's flat [name, value, ...] reply (empty if none)."""
    if flat and flat[0] == b"m":  # how aioqueue writes entries: a single field
        return flat[1]
    return _fields(flat).get(b"m", b"")


def _fields(flat: list[bytes] | None) -> dict[bytes, bytes]:
    """A stream entry's or a hash's flat [name, value, ...] reply as a dict."""
    if not flat:
        return {}
    return dict(zip(flat[::2], flat[1::2], strict=False))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def _key_indexer(keys: list[str]) -> Callable[[str], int]:
    """``k(key)``: the key's 1-based index in ``keys`` (a script's KEYS), appending it the
    first time, so a script call lists each key once and names it by index."""
    index: dict[str, int] = {}

    def k(key: str) -> int:
        found = index.get(key)
        if found is None:
            keys.append(key)
            found = index[key] = len(keys)
        return found

    return k


class _Blocking:
    """A dedicated connection for one blocking command, unblockable from another one."""

    def __init__(self, target: RedisTarget, block_s: float) -> None:
        # The read timeout covers the server-side block plus the usual allowance.
        self.conn = RespConnection(**target.resp_options(extra_read_timeout_s=block_s))
        self.client_id: int | None = None
        self.busy = False
        #: Awaited with the new client id after each (re)connect, before the command.
        self.on_connect: Callable[[int], Awaitable[None]] | None = None

    async def call(self, *args: Any) -> Any:
        if self.client_id is None or not self.conn.connected:
            self.client_id = await self.conn.client_id()
            if self.on_connect is not None:
                try:
                    await self.on_connect(self.client_id)
                except BaseException:
                    self.client_id = None  # told nobody: tell them at the next call
                    raise
        self.busy = True
        try:
            return await self.conn.execute(*args)
        except BaseException:
            self.client_id = None
            raise
        finally:
            self.busy = False

    async def unblock(self, via: RespConnection) -> None:
        here, there = self.conn.address, via.address
        if here is not None and there is not None and here != there:
            # Client ids are per server: in a failover the two connections may reach
            # different ones, and there this id names a stranger. The read returns at
            # its own timeout.
            return
        if self.busy and self.client_id is not None:
            # On failure the blocked read simply returns at its own timeout.
            with contextlib.suppress(*_CONNECTION_ERRORS, RespError):
                await via.execute("CLIENT", "UNBLOCK", self.client_id)

    async def close(self) -> None:
        await self.conn.close()


class RedisBroker:
    """Queues, results, control and schedules on one Redis server."""

    #: Most replies one reply list keeps (see :data:`~aioqueue.broker.base.REPLY_CAP`).
    reply_cap: int = REPLY_CAP
    #: The events stream's cap and how long the per-minute counters live (the app sets
    #: them from ``events_max_len`` / ``events_stats_ttl``).
    events_max_len: int = 100_000
    events_stats_ttl_s: float = 7 * 86400.0

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "aioqueue",
        connect_timeout_s: float = 10.0,
        max_block_s: float = 2.0,
    ) -> None:
        self.url = url
        self.target = parse_redis_url(url, connect_timeout_s=min(connect_timeout_s, 5.0),
                                      read_timeout_s=connect_timeout_s)
        self.display_url = self.target.display_url
        if self.target.cluster is not None:
            # Every key in the slot of the prefix's hash tag (the default gets one, a prefix
            # without raises ConfigurationError); connections go to that slot's master.
            cluster = self.target.cluster.for_prefix(prefix)
            prefix = cluster.prefix or prefix
            self.target = dataclasses.replace(self.target, cluster=cluster)
        self.keys = Keys(prefix)
        #: How long a producer's command retries while Redis is unreachable.
        self.connect_timeout_s = connect_timeout_s
        self._max_block_s = max_block_s
        self._hot = RespConnection(**self.target.resp_options())
        self._fetch = _Blocking(self.target, max_block_s)
        self._replies = _Blocking(self.target, max_block_s)
        #: Queues already added to the known-queues set by this broker.
        self._announced: set[str] = set()
        #: Priority lanes: per queue, the priorities messages were sent at (sorted, 0
        #: included); and the (queue, priority) pairs this producer announced.
        self._lanes: dict[str, tuple[int, ...]] = {}
        self._announced_lanes: set[tuple[str, int]] = set()
        self.lanes = LanePlanner()
        #: A blocking connection for tailing a log (monitors only), made on first use.
        self._log_reader: _Blocking | None = None
        #: The control channel's subscription, while one is open.
        self._subscriber: RespConnection | None = None
        #: The consumer whose client id the fetch connection announces (see fetchers).
        self._fetcher: str | None = None
        #: False once the server refused CLIENT LIST (see take_over_dead).
        self._take_over = True
        self._known_groups: set[str] = set()
        self._checked_server = False
        #: False on a server without BLMPOP (found at the first wait): BLPOP + LPOP instead.
        self._blmpop = True
        self._closed = False

    # -- plumbing --------------------------------------------------------------------------
    def _refused(self, what: str, exc: BaseException) -> BrokerError:
        if "NOGROUP" in str(exc):
            # The stream vanished (Redis restarted without persistence, or FLUSHDB).
            self._known_groups.clear()
        return BrokerError(f"Redis at {self.display_url} refused {what}: {exc}")

    async def _call(
        self, op: Callable[[], Awaitable[T]], *, what: str = "a command",
        deadline_s: float | None = None,
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
            except RespArgumentError as exc:
                raise SerializationError(f"cannot send {what} to Redis: {exc}") from exc
            except _CONNECTION_ERRORS as exc:
                remaining = give_up_at - time.monotonic()
                if self._closed or remaining <= 0:
                    raise BrokerConnectionError(
                        f"cannot reach Redis at {self.display_url}: {exc}"
                    ) from exc
                await anyio.sleep(min(delay, remaining))
                delay = min(delay * 2, 1.0)
            except RespError as exc:
                raise self._refused(what, exc) from exc

    async def _run(self, *command: Any) -> Any:
        """One command on the shared connection, through the retrying wrapper."""
        hot = self._hot
        return await self._call(lambda: hot.execute(*command), what=str(command[0]))

    async def _eval(self, lua: Script, keys: Sequence[Any], args: Sequence[Any],
                    *, deadline_s: float | None = None) -> Any:
        hot, k, a = self._hot, list(keys), list(args)
        return await self._call(lambda: hot.evalsha(lua.source, lua.sha, k, a),
                                what=f"the {lua.name} script", deadline_s=deadline_s)

    async def connect(self) -> None:
        await self._run("PING")
        if not self._checked_server:
            if self.target.sentinel is not None and (address := self._hot.address):
                log.info("Redis Sentinel: %s is at %s:%s", self.target.sentinel.describe(),
                         *address)
            cluster = self.target.cluster
            if cluster is not None and (address := self._hot.address):
                log.info("Redis Cluster: key_prefix %r%s, slot %s, is on the master at %s:%s",
                         self.keys.prefix, " (the default 'aioqueue' with a hash tag, so "
                         "that every key is in one slot)" if self.keys.prefix == "{aioqueue}"
                         else "", cluster.slot, *address)
            await self._check_server()

    async def _check_server(self) -> None:
        """Refuse a server that is too old; warn when it may evict queued messages."""
        info = (await self._run("INFO", "server")).decode(errors="replace")
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        version = fields.get("redis_version", "0")
        name = "Valkey" if "valkey_version" in fields else "Redis"
        if name == "Valkey":
            version = fields.get("valkey_version", version)
        if fields.get("redis_version") and _version(fields["redis_version"]) < MIN_REDIS_VERSION:
            raise BrokerError(
                f"{name} at {self.display_url} is version {version}; aioqueue needs Redis "
                f"{'.'.join(map(str, MIN_REDIS_VERSION))} or newer (or Valkey 7.2+)"
            )
        try:
            policy = await self._hot.execute("CONFIG", "GET", "maxmemory-policy")
        except RespError:
            policy = None  # managed services often disable CONFIG: nothing to check then
        if policy and len(policy) == 2 and policy[1] != b"noeviction":
            log.warning(
                "Redis at %s has maxmemory-policy %s: under memory pressure it may evict "
                "queued messages; set it to noeviction", self.display_url,
                policy[1].decode(errors="replace"),
            )
        self._checked_server = True

    def abandon(self) -> None:
        # Only producer connections can be open on a loop that closed under us (a worker
        # closes its broker before its loop ends).
        for conn in (self._hot, self._fetch.conn, self._replies.conn):
            conn.abandon()
        if self._log_reader is not None:
            self._log_reader.conn.abandon()
        if self._subscriber is not None:
            self._subscriber.abandon()

    async def close(self) -> None:
        self._closed = True
        await self.interrupt_fetch()
        await self.interrupt_replies()
        await self._fetch.close()
        await self._replies.close()
        if self._log_reader is not None:
            await self._log_reader.close()
        await self._hot.close()
        if self._subscriber is not None:
            await self._subscriber.close()

    # -- producing -------------------------------------------------------------------------
    def _add_command(self, item: Enqueue) -> tuple[Any, ...]:
        if item.due_at is None:
            return ("XADD", self.keys.stream(item.queue, item.priority), "*", "m", item.payload)
        return ("ZADD", self.keys.delayed(item.queue, item.priority), repr(item.due_at),
                item.payload)

    async def enqueue(self, items: Sequence[Enqueue]) -> None:
        hot = self._hot
        if items and items[0].queue not in self._announced:
            await self._announce_queues({item.queue for item in items})
        if items and (items[0].priority or len(items) > 1):
            lanes = {(i.queue, i.priority) for i in items if i.priority}
            if not lanes <= self._announced_lanes:
                await self._announce_lanes(lanes)
        if len(items) == 1:
            command = self._add_command(items[0])
            try:
                # The common case straight through; the retrying wrapper only on trouble.
                await hot.execute(*command)
            except (*_CONNECTION_ERRORS, RespError, RespArgumentError):
                await self._call(lambda: hot.execute(*command), what=command[0])
            return
        commands = [self._add_command(item) for item in items]
        # One write out, one read back.
        await self._call(lambda: hot.execute_many(commands), what="a batch of XADD")

    async def _announce_queues(self, queues: set[str]) -> None:
        """Add queues to the known-queues set once per broker, so monitors list a queue
        that producers send to before any worker serves it."""
        new = queues - self._announced
        if new:
            await self._run("SADD", self.keys.queues, *sorted(new))
            self._announced |= new

    async def _announce_lanes(self, lanes: set[tuple[str, int]]) -> None:
        """Record a queue's new priority lanes, and tell the workers at once when one is
        new to everyone (they also re-read the lanes every few seconds)."""
        new = 0
        for queue, priority in sorted(lanes - self._announced_lanes):
            new += int(await self._run("SADD", self.keys.lanes(queue), priority))
            self._announced_lanes.add((queue, priority))
        if new:
            from ..control import encode_control

            await self._run("PUBLISH", self.keys.control, encode_control("lanes"))

    def lanes_of(self, queue: str) -> tuple[int, ...]:
        """The priority lanes of ``queue`` a worker reads, first to last."""
        return self._lanes.get(queue, (0,))

    def _lanes_in(self, queues: Sequence[str]) -> list[tuple[str, int]]:
        return [(q, p) for q in queues for p in self.lanes_of(q)]

    async def refresh_lanes(self, queues: Sequence[str]) -> None:
        replies = await self._call(lambda: self._hot.execute_many(
            [("SMEMBERS", self.keys.lanes(q)) for q in queues]), what="SMEMBERS")
        for queue, members in zip(queues, replies, strict=True):
            found = sorted({0} | {int(m) for m in members or () if m.isdigit()})
            if len(found) > 1:
                self._lanes[queue] = tuple(found)
            else:
                self._lanes.pop(queue, None)

    # -- consuming -------------------------------------------------------------------------
    async def ensure_queues(self, queues: Sequence[str]) -> None:
        hot = self._hot
        for queue, priority in self._lanes_in(queues):
            stream = self.keys.stream(queue, priority)
            if stream in self._known_groups:
                continue

            async def create(stream: str = stream) -> None:
                try:
                    await hot.execute("XGROUP", "CREATE", stream, CONSUMER_GROUP, "0",
                                      "MKSTREAM")
                except RespError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

            await self._call(create, what="XGROUP CREATE")
            await self._announce_queues({queue})  # for monitors: known queues
            self._known_groups.add(stream)

    async def _blocking_read(self, *command: Any) -> Any:
        try:
            return await self._fetch.call(*command)
        except _CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(f"cannot reach Redis at {self.display_url}: {exc}") from exc
        except RespError as exc:
            if "UNBLOCKED" in str(exc):
                return None
            if "NOGROUP" in str(exc):
                self._known_groups.clear()
                return None
            if str(exc).startswith(_TRANSIENT_REPLIES):  # READONLY: a failover under way
                raise BrokerConnectionError(
                    f"Redis at {self.display_url} is not ready: {exc}") from exc
            raise self._refused(str(command[0]), exc) from exc

    def _block_ms(self, timeout_s: float) -> int:
        return max(1, int(min(timeout_s, self._max_block_s) * 1000))

    async def fetch(
        self, queues: Sequence[str], consumer: str, count: int, timeout_s: float
    ) -> list[Delivery]:
        await self.ensure_queues(queues)
        if self._fetcher != consumer:
            self._fetcher = consumer
            self._fetch.client_id = None  # (re)announce under this consumer's name
            self._fetch.on_connect = functools.partial(self._announce_fetcher, consumer)
        if len(queues) == 1 and queues[0] not in self._lanes:
            # One stream: XREADGROUP's COUNT is exact, and one blocking call does it all.
            stream = self.keys.stream(queues[0])
            command: list[Any] = ["XREADGROUP", "GROUP", CONSUMER_GROUP, consumer,
                                  "COUNT", count]
            if timeout_s > 0:
                command += ["BLOCK", self._block_ms(timeout_s)]
            reply = await self._blocking_read(*command, "STREAMS", stream, ">")
            out: list[Delivery] = []
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    out.append(Delivery(queues[0], entry_id.decode(), _message(fields)))
            return out
        # Several streams (queues, or priority lanes of one): COUNT would apply to each,
        # handing out count x streams messages. A script takes at most ``count`` over all
        # of them, in the order planned (highest priority first; see _lanes.py).
        lanes, share = self.lanes.plan(queues, self.lanes_of, count)
        got, last_ids = await self._take(lanes, consumer, count, share)
        if got or not last_ids or timeout_s <= 0:
            return got
        # Nothing ready: wait (without taking anything) for the first message added after
        # what the group has delivered, then take again. (A lane listed twice, by a share
        # turn, is waited on once.)
        last = dict(zip((self.keys.stream(q, p) for q, p in lanes), last_ids, strict=True))
        await self._blocking_read("XREAD", "COUNT", 1, "BLOCK", self._block_ms(timeout_s),
                                  "STREAMS", *last.keys(), *last.values())
        lanes, share = self.lanes.plan(queues, self.lanes_of, count)
        got, _ = await self._take(lanes, consumer, count, share)
        return got

    async def _take(
        self, lanes: Sequence[tuple[str, int]], consumer: str, count: int, share: int = 0,
    ) -> tuple[list[Delivery], list[bytes]]:
        """New messages, and when there are none, the last-delivered id of each stream (to
        wait for the next with XREAD BLOCK)."""
        streams = [self.keys.stream(q, p) for q, p in lanes]
        try:
            found, body = await self._eval(_FETCH, streams,
                                           [CONSUMER_GROUP, consumer, count, share])
        except BrokerError as exc:
            if "NOGROUP" in str(exc):
                self._known_groups.clear()
                return [], []
            raise
        if not found:
            return [], list(body)
        out: list[Delivery] = []
        for index, entries in body:
            queue, priority = lanes[int(index) - 1]
            for entry_id, fields in entries:
                out.append(Delivery(queue, entry_id.decode(), _message(fields), 1, priority))
        self.lanes.taken([(d.queue, d.priority) for d in out], self.lanes_of)
        return out, []

    async def interrupt_fetch(self) -> None:
        await self._fetch.unblock(self._hot)

    async def reclaim(
        self, queues: Sequence[str], consumer: str, idle_s: float, count: int
    ) -> list[Delivery]:
        idle_ms = int(idle_s * 1000)
        out: list[Delivery] = []
        for queue, priority in self._lanes_in(queues):
            if len(out) >= count:
                break
            claimed = await self._eval(_RECLAIM, [self.keys.stream(queue, priority)],
                                       [CONSUMER_GROUP, consumer, idle_ms, count - len(out)])
            for entry_id, fields, times in claimed:
                out.append(Delivery(queue, entry_id.decode(), _message(fields),
                                    int(times) + 1, priority))
        return out

    async def keep_claimed(self, consumer: str, deliveries: Sequence[Delivery]) -> list[Delivery]:
        by_lane: dict[tuple[str, int], list[Delivery]] = defaultdict(list)
        for d in deliveries:
            by_lane[d.queue, d.priority].append(d)
        lost: list[Delivery] = []
        for (queue, priority), held in by_lane.items():
            ids = [d.message_id for d in held]
            gone = {i.decode() for i in await self._eval(
                _KEEP, [self.keys.stream(queue, priority)], [CONSUMER_GROUP, consumer, *ids])}
            lost += [d for d in held if d.message_id in gone]
        return lost

    async def settle(self, outcomes: Sequence[Outcome]) -> list[SettleFailure]:
        # One script call: results are stored in the same step as the acks, so a crash can
        # never leave a message acknowledged without its result (or a retry unscheduled).
        keys: list[str] = []
        # Shared keys (streams, reply lists): each listed once.
        k = _key_indexer(keys)

        def unique(key: str) -> int:
            # A key of one outcome only (its result, its guard): no lookup needed.
            keys.append(key)
            return len(keys)

        stream_index: dict[tuple[str, int], int] = {}  # lane -> index of its stream key

        args: list[Any] = [CONSUMER_GROUP, int(SETTLE_GUARD_TTL_S * 1000),
                           int(REPLY_TTL_S * 1000), self.reply_cap, self.events_max_len,
                           max(1, int(self.events_stats_ttl_s))]
        now = repr(time.time())
        keys_ = self.keys
        for o in outcomes:
            d = o.delivery
            # The outcome's header; its operation count is filled in once they are added.
            if d is None:
                args += ("O", 0, "", 0)
            else:
                lane = (d.queue, d.priority)
                stream_k = stream_index.get(lane)
                if stream_k is None:
                    stream_k = stream_index[lane] = k(keys_.stream(d.queue, d.priority))
                args += ("O", stream_k, d.message_id, 0)
            header, n = len(args) - 1, 0
            if o.record is not None and o.task_id is not None:
                args += ("S", unique(keys_.result(o.task_id)), o.record,
                         max(1, int(o.result_ttl_s * 1000)))
                n += 1
            requeue = o.requeue
            # The guard key only for the operations that need one (most outcomes are a
            # plain result and an ack, and one more key per task was measurable).
            guard = 0 if d is None or (requeue is None and o.dead_reason is None) else unique(
                keys_.settle_guard(d.queue, d.message_id))
            if requeue is not None:
                if requeue.due_at is None:
                    args += ("Q", k(keys_.stream(requeue.queue, requeue.priority)),
                             requeue.payload, guard)
                else:
                    args += ("Z", k(keys_.delayed(requeue.queue, requeue.priority)),
                             requeue.payload,
                             repr(requeue.due_at), guard)
                n += 1
            if d is not None and o.dead_reason is not None:
                args += ("L", k(keys_.dead(d.queue)), d.payload, o.dead_reason, now,
                         d.message_id, DEAD_LETTER_MAXLEN, guard, d.priority)
                n += 1
            if o.reply_to is not None and o.record is not None:
                args += ("P", k(o.reply_to), o.record)
                n += 1
            for data, stat, minute in o.events:
                args += ("E", k(keys_.log("events")), k(keys_.stats(minute)), data, stat)
                n += 1
            release = o.release
            if release is not None:
                n += self._release_ops(args, k, release)
            args[header] = n
        failures, _reply_failures = await self._eval(_SETTLE, keys, args)
        return [SettleFailure(int(failures[i]) - 1, failures[i + 1].decode(errors="replace")
                              if isinstance(failures[i + 1], bytes) else str(failures[i + 1]))
                for i in range(0, len(failures), 2)]

    def _release_ops(self, args: list[Any], k: Callable[[str], int], release: Release) -> int:
        keys_, n = self.keys, 0
        if release.unique is not None:
            args += ("U", k(keys_.gate("unique", release.unique)), release.task_id)
            n += 1
        if release.order is not None:
            args += ("K", k(keys_.order_holder(release.order)),
                     k(keys_.order_waiting(release.order)), release.task_id)
            n += 1
        if release.slot is not None:
            args += ("C", k(keys_.slots(release.slot)), k(keys_.slot_waiting(release.slot)),
                     k(keys_.slot_keys), release.task_id, release.slot,
                     max(1, int(release.lease_s * 1000)))
            n += 1
        return n

    # -- flow control ----------------------------------------------------------------------
    async def enqueue_gated(self, item: Enqueue, gate: Gate,
                            build: Callable[[str], bytes]) -> str | None:
        keys_ = self.keys
        if item.queue not in self._announced:
            await self._announce_queues({item.queue})
        if item.priority and (item.queue, item.priority) not in self._announced_lanes:
            await self._announce_lanes({(item.queue, item.priority)})
        if item.due_at is None:
            dest, due = keys_.stream(item.queue, item.priority), ""
        else:
            dest, due = keys_.delayed(item.queue, item.priority), repr(item.due_at)
        if gate.kind == "order":
            keys = [keys_.order_holder(gate.key), dest, keys_.order_waiting(gate.key)]
        else:
            keys = [keys_.gate(gate.kind, gate.key), dest]
        ttl_ms = max(1, int(gate.ttl_s * 1000))
        task_id, payload, joined = gate.task_id, item.payload, "0"
        for _ in range(10):  # a debounce racing another: bounded re-reads
            reply = await self._eval(_GATE, keys, [gate.kind, task_id, payload, due, ttl_ms,
                                                   joined])
            code = int(reply[0])
            if code == 0:
                return None
            if code == 1:
                return str(reply[1].decode())
            if code == 2:  # debounce: join the waiting task under its id
                task_id, joined = reply[1].decode(), "1"
            else:  # it started meanwhile: a new window, a new id
                task_id, joined = gate.task_id, "0"
            payload = build(task_id)
        raise BrokerError(f"debounce {gate.key!r}: too many concurrent calls, try again")

    async def admit_many(self, runs: Sequence[tuple[Delivery, Admission]],
                         lease_s: float) -> list[bool]:
        # Every key once, and what runs of one lane, task and key share (a profile) once:
        # a fetched batch is mostly one profile, and packing 12 arguments per run was a
        # tenth of a rate-limited worker's time (py-spy).
        keys_: Keys = self.keys
        keys: list[str] = []
        k = _key_indexer(keys)
        k(keys_.slot_keys)  # KEYS[1], as the script expects

        profiles: dict[tuple[Any, ...], int] = {}
        profile_args: list[Any] = []
        run_args: list[Any] = []
        for delivery, adm in runs:
            lane = (delivery.queue, delivery.priority, adm.rate_key, adm.rate_interval_s,
                    adm.slot_key, adm.slot_max)
            profile = profiles.get(lane)
            if profile is None:
                profile = profiles[lane] = len(profiles) + 1
                rate, slot = adm.rate_key, adm.slot_key
                profile_args += (
                    k(keys_.stream(delivery.queue, delivery.priority)),
                    k(keys_.delayed(delivery.queue, delivery.priority)),
                    0 if rate is None else k(keys_.rate(rate)),
                    0 if rate is None else k(keys_.rate_grants(rate)),
                    0 if slot is None else k(keys_.slots(slot)),
                    0 if slot is None else k(keys_.slot_waiting(slot)),
                    # In ms with a fraction: int() made any rate above 1,000/s a 0, which
                    # the script reads as "no limit".
                    0 if rate is None else repr(adm.rate_interval_s * 1000),
                    0 if slot is None else adm.slot_max, slot or "")
            run_args += (delivery.message_id, adm.task_id, profile)
        args = [CONSUMER_GROUP, max(1, int(lease_s * 1000)), len(profiles), *profile_args,
                *run_args]
        codes = await self._eval(_ADMIT, keys, args)
        return [int(code) == 0 for code in codes]

    async def renew_slots(self, held: Sequence[tuple[str, str]], lease_s: float) -> None:
        if not held:
            return
        until = repr((time.time() + lease_s) * 1000)
        commands = [("ZADD", self.keys.slots(key), "XX", until, task_id) for key, task_id in held]
        await self._call(lambda: self._hot.execute_many(commands), what="ZADD")

    async def promote_slots(self, lease_s: float) -> int:
        started = 0
        for raw in await self._run("HKEYS", self.keys.slot_keys) or ():
            key = raw.decode()
            started += int(await self._eval(
                _PROMOTE, [self.keys.slots(key), self.keys.slot_waiting(key), self.keys.slot_keys],
                [key, max(1, int(lease_s * 1000))]))
        return started

    async def rate_limits(self) -> dict[str, str]:
        flat = await self._run("HGETALL", self.keys.rate_limits)
        return {k.decode(): v.decode() for k, v in _fields(flat).items()}

    async def set_rate_limit(self, task: str, rate: str | None) -> None:
        if rate is None:
            await self._run("HDEL", self.keys.rate_limits, task)
        else:
            await self._run("HSET", self.keys.rate_limits, task, rate)

    async def move_due(self, queues: Sequence[str], now: float) -> int:
        async def one(queue: str) -> int:
            keys = [key for p in self.lanes_of(queue)
                    for key in (self.keys.delayed(queue, p), self.keys.stream(queue, p))]
            return int(await self._eval(_MOVE_DUE, keys, [repr(now), _MOVE_BATCH]))

        # Each queue on its own: one broken queue must not hold the others' due messages.
        moved = await asyncio.gather(*(one(q) for q in queues), return_exceptions=True)
        errors = [m for m in moved if isinstance(m, BaseException)]
        if errors:
            raise errors[0]
        return sum(int(m) for m in moved if isinstance(m, int))

    async def prune_consumers(self, queues: Sequence[str], consumer: str, idle_s: float) -> int:
        removed = 0
        for q, p in self._lanes_in(queues):
            removed += int(await self._eval(
                _PRUNE, [self.keys.stream(q, p)],
                [CONSUMER_GROUP, int(idle_s * 1000), "except", consumer]))
        return removed

    async def _announce_fetcher(self, consumer: str, client_id: int) -> None:
        hot, key = self._hot, self.keys.fetchers
        await self._call(lambda: hot.execute("HSET", key, consumer, client_id), what="HSET")

    async def take_over_dead(
        self, queues: Sequence[str], consumer: str, idle_s: float, count: int,
        expires_before: float = 0.0,
    ) -> list[Delivery]:
        """Take over the messages, unacknowledged for ``idle_s`` or longer, of dead
        workers: consumers whose fetch connection Redis no longer has (a killed or crashed
        process's sockets close with it) *and* whose registration expires before ``expires_before``
        (epoch s: a worker that renewed it lately expires later).

        Sooner than :meth:`reclaim`'s ``visibility_timeout``, and as safe: a live worker's
        fetch connection is listed (it announces its client id before it reads), and its
        heartbeat renews its registration every few seconds, also while its slots are all
        busy or after Redis restarted (when recorded client ids are stale). A consumer that
        never announced a connection (an older worker) is left to :meth:`reclaim`. Returns []
        where the ACL refuses ``CLIENT LIST`` (then only :meth:`reclaim` recovers them).
        """
        if not self._take_over or count <= 0:
            return []
        try:
            return await self._take_over_dead(queues, consumer, idle_s, count, expires_before)
        except BrokerConnectionError:
            raise
        except BrokerError as exc:  # refused: an ACL without CLIENT LIST, say
            self._take_over = False
            log.info("taking over dead workers' messages early is off (%s): they are "
                     "reclaimed after visibility_timeout", exc)
            return []

    async def _take_over_dead(
        self, queues: Sequence[str], consumer: str, idle_s: float, count: int,
        expires_before: float,
    ) -> list[Delivery]:
        idle_ms = int(idle_s * 1000)
        hot = self._hot
        lanes = self._lanes_in(queues)
        infos = await self._call(lambda: hot.execute_many(
            [("XINFO", "CONSUMERS", self.keys.stream(q, p), CONSUMER_GROUP) for q, p in lanes]),
            what="XINFO CONSUMERS")
        suspects: list[tuple[tuple[str, int], str]] = []
        for lane, consumers in zip(lanes, infos, strict=True):
            for info in consumers:
                fields = _fields(info)
                name = fields[b"name"].decode()
                if name != consumer and int(fields[b"pending"]) and int(
                        fields[b"idle"]) >= idle_ms:
                    suspects.append((lane, name))
        if not suspects:
            return []
        names = sorted({name for _, name in suspects})
        keys = self.keys
        replies = await self._call(lambda: hot.execute_many(
            [("HMGET", keys.fetchers, *names),
             *(("ZSCORE", keys.workers_expiry, name) for name in names)]), what="HMGET")
        ids, expiries = replies[0], replies[1:]
        known = {n: int(i) for n, i, expiry in zip(names, ids, expiries, strict=True)
                 if i is not None and (expiry is None or float(expiry) < expires_before)}
        if not known:
            return []
        listed = await self._call(lambda: hot.execute(
            "CLIENT", "LIST", "ID", *known.values()), what="CLIENT LIST")
        alive = {int(m) for m in re.findall(rb"(?:^|\n)id=(\d+)", listed)}
        out: list[Delivery] = []
        for (queue, priority), name in suspects:
            if name not in known or known[name] in alive or len(out) >= count:
                continue
            claimed = await self._eval(_RECLAIM, [self.keys.stream(queue, priority)],
                                       [CONSUMER_GROUP, consumer, idle_ms, count - len(out),
                                        name])
            for entry_id, fields, times in claimed:
                out.append(Delivery(queue, entry_id.decode(), _message(fields),
                                    int(times) + 1, priority))
        return out

    async def forget_consumer(self, queues: Sequence[str], consumer: str) -> None:
        # Housekeeping on the way out: never hold a stopping worker for long.
        hot, key = self._hot, self.keys.fetchers
        await self._call(lambda: hot.execute("HDEL", key, consumer), what="HDEL",
                         deadline_s=1.0)
        for q, p in self._lanes_in(queues):
            await self._eval(_PRUNE, [self.keys.stream(q, p)],
                             [CONSUMER_GROUP, 0, "only", consumer], deadline_s=1.0)

    # -- results ---------------------------------------------------------------------------
    async def get_result(self, task_id: str) -> bytes | None:
        value: bytes | None = await self._run("GET", self.keys.result(task_id))
        return value

    async def get_results(self, task_ids: Sequence[str]) -> list[bytes | None]:
        if not task_ids:
            return []
        values: list[bytes | None] = await self._run(
            "MGET", *(self.keys.result(task_id) for task_id in task_ids))
        return values

    async def set_result(self, task_id: str, record: bytes, ttl_s: float) -> None:
        await self._run("SET", self.keys.result(task_id), record, "PX",
                        max(1, int(ttl_s * 1000)))

    async def delete_result(self, task_id: str) -> None:
        await self._run("DEL", self.keys.result(task_id))

    async def compare_and_set_result(self, task_id: str, record: bytes,
                                     expected: bytes | None, ttl_s: float) -> bool:
        return bool(await self._eval(_CAS_RESULT, [self.keys.result(task_id)],
                                     [expected or b"", record, max(1, int(ttl_s * 1000))]))

    async def publish_progress(self, task_id: str, record: bytes, ttl_s: float,
                               reply_to: str | None) -> None:
        commands: list[tuple[Any, ...]] = [
            ("SET", self.keys.result(task_id), record, "PX", max(1, int(ttl_s * 1000)))]
        if reply_to is not None:
            commands += [("RPUSH", reply_to, record),
                         ("PEXPIRE", reply_to, int(REPLY_TTL_S * 1000)),
                         ("LTRIM", reply_to, -self.reply_cap, -1)]
        hot = self._hot
        await self._call(lambda: hot.execute_many(commands), what="SET")

    async def wait_replies(self, reply_to: str, timeout_s: float) -> list[bytes]:
        seconds = max(0.001, min(timeout_s, self._max_block_s))
        try:
            if self._blmpop:
                reply = await self._replies.call("BLMPOP", repr(seconds), 1, reply_to, "LEFT",
                                                 "COUNT", 1000)
                return [] if not reply else list(reply[1])
            # Without BLMPOP: wait for one, then take what else is there in one more call.
            first = await self._replies.call("BLPOP", reply_to, repr(seconds))
            if not first:
                return []
            rest = await self._hot.execute("LPOP", reply_to, 999)
            return [first[1], *(rest or ())]
        except _CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(f"cannot reach Redis at {self.display_url}: {exc}") from exc
        except RespError as exc:
            text = str(exc)
            if "UNBLOCKED" in text:
                return []
            if self._blmpop and "unknown command" in text.lower():
                if not self._checked_server:
                    await self._check_server()  # refuses a server older than 6.2, clearly
                log.warning("Redis at %s has no BLMPOP (older than 7.0, or the command is "
                            "disabled): results are waited for with BLPOP", self.display_url)
                self._blmpop = False
                return []
            if text.startswith(_TRANSIENT_REPLIES):
                raise BrokerConnectionError(
                    f"Redis at {self.display_url} is not ready: {exc}") from exc
            raise self._refused("a wait for results", exc) from exc

    async def interrupt_replies(self) -> None:
        await self._replies.unblock(self._hot)

    # -- control ---------------------------------------------------------------------------
    async def revoke(
        self, task_id: str, until: float, control: bytes, *, terminate: bool = False,
        record: bytes | None = None, expected: bytes | None = None, ttl_s: float = 0.0,
    ) -> bool:
        keys = [self.keys.result(task_id), self.keys.revoked, self.keys.terminate]
        args = [task_id, repr(until), "1" if terminate else "0", self.keys.control, control,
                "0" if record is None else "1", expected or b"", record or b"",
                max(1, int(ttl_s * 1000))]
        return bool(await self._eval(_REVOKE, keys, args))

    async def revocations(self, now: float) -> Revocations:
        revoked, terminate = self.keys.revoked, self.keys.terminate
        hot = self._hot
        replies = await self._call(lambda: hot.execute_many([
            ("ZREMRANGEBYSCORE", revoked, "-inf", repr(now)),
            ("ZRANGE", revoked, 0, -1),
            ("ZREMRANGEBYSCORE", terminate, "-inf", repr(now)),
            ("ZRANGE", terminate, 0, -1),
        ]), what="ZRANGE")
        return Revocations(revoked={i.decode() for i in replies[1]},
                           terminate={i.decode() for i in replies[3]})

    async def control_messages(self) -> AsyncIterator[bytes]:
        # A socket of its own, made anew for each subscription: behind Sentinel or on a
        # cluster it connects to the current master (classic pub/sub reaches every node).
        conn = self._subscriber = RespConnection(**self.target.resp_options())
        try:
            async for data in conn.subscribe(self.keys.control):
                yield b"" if data is None else data  # b"": subscribed, see Broker.control_messages
        except (ConnectionError, OSError) as exc:
            if self._closed:
                return
            raise BrokerConnectionError(
                f"lost control channel of Redis at {self.display_url}: {exc}") from exc
        except RespError as exc:
            raise BrokerError(f"control channel of Redis at {self.display_url}: {exc}") from exc
        finally:
            if self._subscriber is conn:
                self._subscriber = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await conn.close()

    async def queue_sizes(self, queues: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        await self.refresh_lanes(queues)
        commands: list[tuple[Any, ...]] = []
        for q in queues:
            commands.append(("XLEN", self.keys.dead(q)))
            for p in self.lanes_of(q):
                commands += [("XLEN", self.keys.stream(q, p)), ("ZCARD", self.keys.delayed(q, p))]
        hot = self._hot
        counts = iter(await self._call(lambda: hot.execute_many(commands), what="XLEN"))
        sizes: dict[str, tuple[int, int, int]] = {}
        for q in queues:
            dead, ready, delayed = int(next(counts)), 0, 0
            for _ in self.lanes_of(q):
                ready += int(next(counts))
                delayed += int(next(counts))
            sizes[q] = (ready, delayed, dead)
        return sizes

    # -- monitoring ------------------------------------------------------------------------
    async def register_worker(self, name: str, info: bytes, ttl_s: float) -> None:
        hot, keys = self._hot, self.keys
        await self._call(lambda: hot.execute_many([
            ("HSET", keys.workers, name, info),
            ("ZADD", keys.workers_expiry, repr(time.time() + ttl_s), name),
        ]), what="HSET")

    async def unregister_worker(self, name: str) -> None:
        hot, keys = self._hot, self.keys
        await self._call(lambda: hot.execute_many([
            ("HDEL", keys.workers, name), ("ZREM", keys.workers_expiry, name)]), what="HDEL")

    async def workers(self) -> dict[str, bytes]:
        hot, keys = self._hot, self.keys
        gone = await self._run("ZRANGEBYSCORE", keys.workers_expiry, "-inf", repr(time.time()))
        if gone:  # stopped without saying so (killed): forget them
            await self._call(lambda: hot.execute_many([
                ("HDEL", keys.workers, *gone), ("ZREM", keys.workers_expiry, *gone)]),
                what="HDEL")
        return {k.decode(): v for k, v in _fields(await self._run("HGETALL", keys.workers))
                .items()}

    async def append_log(self, log: str, entries: Sequence[bytes], max_len: int) -> None:
        if not entries:
            return
        key, hot = self.keys.log(log), self._hot
        await self._call(lambda: hot.execute_many(
            [("XADD", key, "MAXLEN", "~", max_len, "*", "e", e) for e in entries]), what="XADD")

    async def read_log(self, log: str, *, after: str | None = None, count: int = 100,
                       block_s: float = 0.0) -> list[tuple[str, bytes]]:
        key = self.keys.log(log)
        if after is None:
            entries = await self._run("XREVRANGE", key, "+", "-", "COUNT", count)
            return [(i.decode(), _fields(f).get(b"e", b"")) for i, f in reversed(entries)]
        if block_s > 0:
            if self._log_reader is None:
                self._log_reader = _Blocking(self.target, self._max_block_s)
            try:
                reply = await self._log_reader.call(
                    "XREAD", "COUNT", count, "BLOCK", self._block_ms(block_s), "STREAMS", key,
                    after)
            except _CONNECTION_ERRORS as exc:
                raise BrokerConnectionError(
                    f"cannot reach Redis at {self.display_url}: {exc}") from exc
            entries = reply[0][1] if reply else []
        else:
            entries = await self._run("XRANGE", key, f"({after}", "+", "COUNT", count)
        return [(i.decode(), _fields(f).get(b"e", b"")) for i, f in entries]

    async def count_stats(self, counts: dict[tuple[int, str], int], ttl_s: float) -> None:
        commands: list[tuple[Any, ...]] = []
        for (minute, field), n in counts.items():
            commands += [("HINCRBY", self.keys.stats(minute), field, n),
                         ("EXPIRE", self.keys.stats(minute), max(1, int(ttl_s)))]
        if commands:
            hot = self._hot
            await self._call(lambda: hot.execute_many(commands), what="HINCRBY")

    async def stats(self, minutes: Sequence[int]) -> dict[int, dict[str, int]]:
        if not minutes:
            return {}
        hot = self._hot
        replies = await self._call(lambda: hot.execute_many(
            [("HGETALL", self.keys.stats(m)) for m in minutes]), what="HGETALL")
        return {m: {k.decode(): int(v) for k, v in _fields(flat).items()}
                for m, flat in zip(minutes, replies, strict=True) if flat}

    async def known_queues(self) -> list[str]:
        return sorted(q.decode() for q in await self._run("SMEMBERS", self.keys.queues))

    async def queue_details(self, queues: Sequence[str]) -> list[QueueDetails]:
        out = []
        await self.refresh_lanes(queues)
        for queue in queues:
            details = QueueDetails(queue, dead=int(await self._run("XLEN", self.keys.dead(queue))))
            for priority in self.lanes_of(queue):
                await self._add_lane_details(details, queue, priority)
            out.append(details)
        return out

    async def _add_lane_details(self, details: QueueDetails, queue: str, priority: int) -> None:
        stream, hot = self.keys.stream(queue, priority), self._hot
        commands: list[tuple[Any, ...]] = [
            ("XLEN", stream), ("ZCARD", self.keys.delayed(queue, priority))]
        length, delayed = await self._call(
            functools.partial(hot.execute_many, commands), what="XLEN")
        try:
            groups = await self._run("XINFO", "GROUPS", stream)
        except BrokerError:  # no stream yet
            groups = []
        pending, last = 0, "0-0"
        if isinstance(groups, list):
            for group in groups:
                info = _fields(group)
                if info.get(b"name") == CONSUMER_GROUP.encode():
                    pending = int(info.get(b"pending", 0))
                    last = info.get(b"last-delivered-id", b"0-0").decode()
        first = await self._run("XRANGE", stream, f"({last}", "+", "COUNT", 1)
        if first:
            oldest = int(first[0][0].split(b"-")[0]) / 1000
            if details.oldest_waiting_at is None or oldest < details.oldest_waiting_at:
                details.oldest_waiting_at = oldest
        details.waiting += max(0, int(length) - pending)
        details.running += pending
        details.delayed += int(delayed)

    async def purge_queue(self, queue: str) -> int:
        await self.refresh_lanes([queue])
        purged = 0
        for p in self.lanes_of(queue):
            purged += int(await self._eval(
                _PURGE, [self.keys.stream(queue, p), self.keys.delayed(queue, p)],
                [CONSUMER_GROUP]))
        return purged

    async def publish_control(self, message: bytes) -> None:
        await self._run("PUBLISH", self.keys.control, message)

    async def push_control_reply(self, key: str, reply: bytes) -> None:
        hot = self._hot
        await self._call(lambda: hot.execute_many([
            ("RPUSH", key, reply), ("EXPIRE", key, int(CONTROL_REPLY_TTL_S))]), what="RPUSH")

    async def take_control_replies(self, key: str) -> list[bytes]:
        return list(await self._run("LPOP", key, 1000) or ())

    # -- dead letters ----------------------------------------------------------------------
    async def dead_letters(self, queue: str, count: int) -> list[DeadLetter]:
        entries = await self._run("XRANGE", self.keys.dead(queue), "-", "+", "COUNT", count)
        out = []
        for entry_id, flat in entries:
            fields = _fields(flat)
            out.append(DeadLetter(
                queue=queue,
                entry_id=entry_id.decode(),
                payload=fields.get(b"m", b""),
                reason=fields.get(b"reason", b"").decode(errors="replace"),
                failed_at=float(fields.get(b"failed_at", b"0") or 0),
                priority=int(fields.get(b"p", b"0") or 0),
            ))
        return out

    async def requeue_dead(self, queue: str, entry_ids: Sequence[str] | None) -> int:
        # Each back to the lane it died in (a dead letter records its priority).
        keys = [self.keys.dead(queue), self.keys.lanes(queue),
                *(self.keys.stream(queue, p) for p in range(10))]
        await self.ensure_queues([queue])
        if entry_ids is not None:
            # Ids that cannot be stream entry ids name nothing (as on the memory broker);
            # an empty list moves nothing (not "everything", which the script's no-ids means).
            wanted = [i for i in entry_ids if _ENTRY_ID.fullmatch(i)]
            if not wanted:
                return 0
            return int(await self._eval(_REQUEUE, keys, [_REQUEUE_BATCH, *wanted]))
        moved = 0
        while True:  # in bounded calls, so one call never blocks Redis for long
            batch = int(await self._eval(_REQUEUE, keys, [_REQUEUE_BATCH]))
            moved += batch
            if batch < _REQUEUE_BATCH:
                return moved

    async def purge_dead(self, queue: str) -> int:
        key, hot = self.keys.dead(queue), self._hot
        replies = await self._call(lambda: hot.execute_many(
            [("MULTI",), ("XLEN", key), ("DEL", key), ("EXEC",)]), what="DEL")
        return int(replies[-1][0])

    # -- beat ------------------------------------------------------------------------------
    async def acquire_lease(self, owner: str, ttl_s: float) -> bool:
        got = await self._eval(_LEASE, [self.keys.beat_lease], [owner, max(1, int(ttl_s * 1000))])
        return bool(got)

    async def release_lease(self, owner: str) -> None:
        await self._eval(_RELEASE, [self.keys.beat_lease], [owner])

    async def claim_tick(self, name: str, tick: float, ttl_s: float) -> bool:
        got = await self._run("SET", self.keys.beat_tick(name, tick), b"1", "NX", "PX",
                              max(1, int(ttl_s * 1000)))
        return bool(got)

    async def last_runs(self) -> dict[str, float]:
        raw = _fields(await self._run("HGETALL", self.keys.beat_last_run))
        return {k.decode(): float(v) for k, v in raw.items()}

    async def set_last_run(self, name: str, tick: float) -> None:
        await self._run("HSET", self.keys.beat_last_run, name, repr(tick))

    async def replace_schedules(self, schedules: dict[str, str]) -> None:
        """Store what this deployment declares, dropping schedules no longer declared."""
        key, runs, hot = self.keys.beat_schedules, self.keys.beat_last_run, self._hot

        async def run() -> None:
            old = await hot.execute("HKEYS", key)
            gone = [k for k in old if k.decode() not in schedules]
            commands: list[tuple[Any, ...]] = [("MULTI",), ("DEL", key)]
            if schedules:
                commands.append(("HSET", key, *(x for kv in schedules.items() for x in kv)))
            if gone:
                commands.append(("HDEL", runs, *gone))
            commands.append(("EXEC",))
            await hot.execute_many(commands)

        await self._call(run, what="HSET")
