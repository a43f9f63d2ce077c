"""Every Redis key name aioqueue uses, in one place.

Per-queue keys share the hash tag ``{QUEUE}`` so that a multi-key script over one queue
touches a single Redis Cluster slot.
"""

from __future__ import annotations

from dataclasses import dataclass

CONSUMER_GROUP = "aioqueue"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (default ``aioqueue``)."""

    prefix: str = "aioqueue"

    def stream(self, queue: str) -> str:
        """The stream holding ready messages of ``queue``."""
        return f"{self.prefix}:{{{queue}}}:stream"

    def delayed(self, queue: str) -> str:
        """Sorted set of messages due later (countdown, eta, retry back-off), score = due time."""
        return f"{self.prefix}:{{{queue}}}:delayed"

    def dead(self, queue: str) -> str:
        """The dead-letter stream of ``queue``."""
        return f"{self.prefix}:{{{queue}}}:dead"

    def result(self, task_id: str) -> str:
        """The result record of one task."""
        return f"{self.prefix}:result:{task_id}"

    def reply(self, waiter_id: str) -> str:
        """A producer process's reply list: workers push finished records here."""
        return f"{self.prefix}:reply:{waiter_id}"

    @property
    def revoked(self) -> str:
        """Sorted set of revoked task ids, score = when the revocation expires."""
        return f"{self.prefix}:revoked"

    @property
    def control(self) -> str:
        """Pub/sub channel for remote control (revoke, ping, shutdown)."""
        return f"{self.prefix}:control"

    @property
    def workers(self) -> str:
        """Sorted set of live workers, score = last heartbeat time."""
        return f"{self.prefix}:workers"

    def worker_info(self, worker_id: str) -> str:
        """Hash describing one live worker (queues, concurrency, host, pid)."""
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def events(self) -> str:
        """Capped stream of task events (opt-in)."""
        return f"{self.prefix}:events"

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
