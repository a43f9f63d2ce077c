"""Every Redis key name aioqueue uses, in one place.

Per-queue keys share the hash tag ``{QUEUE}``. Results and reply lists are not tagged, and
the settle script spans them and the queue's keys: on Redis Cluster an app therefore lives
in one slot, the tag of its key prefix (``{aioqueue}``; see ``broker/_cluster.py``), which
Redis hashes before the queue's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

CONSUMER_GROUP = "aioqueue"


#: (prefix, key) pairs :meth:`Keys.is_reply` already found valid.
_valid_reply_keys: set[tuple[str, str]] = set()


@lru_cache(maxsize=16)
def _reply_key_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(re.escape(f"{prefix}:reply:") + "[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (default ``aioqueue``)."""

    prefix: str = "aioqueue"

    def stream(self, queue: str, priority: int = 0) -> str:
        """The stream holding ready messages of ``queue`` at ``priority`` (one per lane: 0,
        the default, keeps the plain name)."""
        if priority:
            return f"{self.prefix}:{{{queue}}}:stream:p{priority}"
        return f"{self.prefix}:{{{queue}}}:stream"

    def delayed(self, queue: str, priority: int = 0) -> str:
        """Sorted set of messages due later (countdown, eta, retry back-off), score = due
        time; one per priority lane, so a message comes back at its own priority."""
        if priority:
            return f"{self.prefix}:{{{queue}}}:delayed:p{priority}"
        return f"{self.prefix}:{{{queue}}}:delayed"

    def lanes(self, queue: str) -> str:
        """Set of the priorities (besides 0) messages of ``queue`` were ever sent at: the
        lanes a worker reads."""
        return f"{self.prefix}:{{{queue}}}:lanes"

    def dead(self, queue: str) -> str:
        """The dead-letter stream of ``queue``."""
        return f"{self.prefix}:{{{queue}}}:dead"

    def settle_guard(self, queue: str, message_id: str) -> str:
        """Marks a delivery's hand-back, retry or dead letter as applied, so a settle batch
        replayed after a lost reply does not add the message twice."""
        return f"{self.prefix}:{{{queue}}}:settled:{message_id}"

    def result(self, task_id: str) -> str:
        """The result record of one task."""
        return f"{self.prefix}:result:{task_id}"

    def reply(self, waiter_id: str) -> str:
        """A producer process's reply list: workers push finished records here."""
        return f"{self.prefix}:reply:{waiter_id}"

    def is_reply(self, key: str) -> bool:
        """True for a key :meth:`reply` can make (with a 32-digit hex waiter id).

        A message's ``reply_to`` is input from whoever could write to the queue: a worker
        pushes only to keys of this shape, never to any key a message names.
        """
        # This runs once per settled task with a waiting producer, nearly always for a key
        # already seen: remember the few valid ones.
        if (self.prefix, key) in _valid_reply_keys:
            return True
        if _reply_key_pattern(self.prefix).fullmatch(key) is None:
            return False
        if len(_valid_reply_keys) >= 1024:
            _valid_reply_keys.clear()
        _valid_reply_keys.add((self.prefix, key))
        return True

    # -- flow control (see aioqueue.flow) --------------------------------------------------
    def rate(self, task: str) -> str:
        """A rate limit's state: the time its next run may start (ms), shared by workers."""
        return f"{self.prefix}:rate:{{{task}}}"

    def rate_grants(self, task: str) -> str:
        """Sorted set of parked runs holding their reserved rate slot (they run without
        asking again), score = when the grant lapses (ms)."""
        return f"{self.prefix}:rate:{{{task}}}:grants"

    @property
    def rate_limits(self) -> str:
        """Hash: task name -> rate limit set at run time (``aioqueue control rate-limit``)."""
        return f"{self.prefix}:rate_limits"

    def slots(self, key: str) -> str:
        """Sorted set of the runs holding a concurrency slot, score = lease expiry (ms)."""
        return f"{self.prefix}:slots:{{{key}}}"

    def slot_waiting(self, key: str) -> str:
        """List of the runs parked until a slot of ``key`` frees (id, stream, payload)."""
        return f"{self.prefix}:slots:{{{key}}}:waiting"

    @property
    def slot_keys(self) -> str:
        """Hash: concurrency key -> its limit, for every key with runs parked (the sweep
        that frees the slots of killed workers reads it)."""
        return f"{self.prefix}:slots"

    def gate(self, kind: str, key: str) -> str:
        """A producer-side gate's lock: ``unique``, ``cooldown`` or ``debounce``."""
        return f"{self.prefix}:{kind}:{{{key}}}"

    def order_holder(self, key: str) -> str:
        """The task id of the one task of an order key in flight (sent, running, retrying)."""
        return f"{self.prefix}:order:{{{key}}}"

    def order_waiting(self, key: str) -> str:
        """List of the tasks of an order key waiting their turn, oldest first."""
        return f"{self.prefix}:order:{{{key}}}:waiting"

    @property
    def revoked(self) -> str:
        """Sorted set of revoked task ids, score = when the revocation expires."""
        return f"{self.prefix}:revoked"

    @property
    def terminate(self) -> str:
        """Sorted set of task ids to cancel where they run, score = when that expires."""
        return f"{self.prefix}:terminate"

    @property
    def control(self) -> str:
        """Pub/sub channel for remote control (revoke, ping, shutdown)."""
        return f"{self.prefix}:control"

    @property
    def beat_lease(self) -> str:
        """The beat leader lease (a string key with an owner and a TTL)."""
        return f"{self.prefix}:beat:lease"

    @property
    def beat_last_run(self) -> str:
        """Hash: schedule name -> last fired tick (epoch seconds)."""
        return f"{self.prefix}:beat:last_run"

    @property
    def beat_schedules(self) -> str:
        """Hash: schedule name -> the declared schedule, as stored by the last deployment."""
        return f"{self.prefix}:beat:schedules"

    def beat_tick(self, name: str, tick: float) -> str:
        """A claim marker for one tick of one schedule (SET NX), so it fires once."""
        return f"{self.prefix}:beat:tick:{name}:{tick:.3f}"

    # -- monitoring ------------------------------------------------------------------------
    @property
    def workers(self) -> str:
        """Hash: worker name -> its encoded self-description (queues, load, ...)."""
        return f"{self.prefix}:workers"

    @property
    def fetchers(self) -> str:
        """Hash: consumer (worker) name -> Redis client id of its fetch connection, written
        before that connection reads anything: a consumer whose id Redis no longer lists
        is a dead process (see ``RedisBroker.take_over_dead``)."""
        return f"{self.prefix}:fetchers"

    @property
    def workers_expiry(self) -> str:
        """Sorted set: worker name, score = when it counts as gone without a heartbeat."""
        return f"{self.prefix}:workers:expiry"

    @property
    def queues(self) -> str:
        """Set of every queue a worker or producer declared."""
        return f"{self.prefix}:queues"

    def log(self, name: str) -> str:
        """A capped stream: ``events`` (task and worker events) or ``audit`` (actions)."""
        return f"{self.prefix}:{name}"

    def stats(self, minute: int) -> str:
        """Hash of one minute's event counters: ``name|STATE`` -> count."""
        return f"{self.prefix}:stats:{minute}"

    def control_reply(self, request_id: str) -> str:
        """List where workers push their answers to one control request (32 hex digits)."""
        return f"{self.prefix}:control:reply:{request_id}"

    def is_control_reply(self, key: str) -> bool:
        """True for a key :meth:`control_reply` makes: a worker answers only there."""
        start = f"{self.prefix}:control:reply:"
        suffix = key[len(start):]
        return (key.startswith(start) and len(suffix) == 32
                and all(c in "0123456789abcdef" for c in suffix))
