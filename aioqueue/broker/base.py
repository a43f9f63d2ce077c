"""The broker contract: what the worker, the producer and beat need from storage.

Two implementations keep the same semantics: ``redis.py`` (the only module that imports
``redis``) and ``memory.py`` (in-process, for single-process use and users' unit tests).

The worker never issues single-purpose writes on the hot path. Everything that ends a
delivery -- store the result, wake the waiting producer, acknowledge, reschedule for a retry,
hand back, dead-letter -- is an :class:`Outcome`, and the worker passes many outcomes at once
to :meth:`Broker.settle`, which applies them in one atomic step. That is what makes
"acknowledged only after the result is stored" hold, and what makes it fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..flow import Admission, Gate
    from ._lanes import LanePlanner

__all__ = ("Broker", "DeadLetter", "Delivery", "Enqueue", "Outcome", "Release", "Revocations",
           "SettleFailure")


#: Most replies a producer's reply list keeps (oldest dropped first), on both brokers. Only a
#: producer that sends without ever awaiting reaches it; one that awaits drains its list as
#: fast as workers push. It must stay far above what a busy producer can fall behind by: at
#: 10,000 a process that sent 20,000 tasks in one ``delay_many`` lost replies to the trim and
#: waited a second for its fallback re-reads (half the benchmark's throughput, bimodal).
REPLY_CAP = 200_000

@dataclass(slots=True)
class Enqueue:
    """One message to add: to the stream now, or to the delayed set when ``due_at`` is set.

    ``priority`` (0..9, 0 first) picks the queue's lane: each priority has its own stream
    and delayed set, so a delayed or retried message comes back at its own priority.
    """

    queue: str
    payload: bytes
    due_at: float | None = None
    priority: int = 0
    #: Added behind this producer-side gate (``Broker.enqueue_gated``), if any.
    gate: Gate | None = None


@dataclass(slots=True)
class Delivery:
    """A message handed to this worker and not yet acknowledged."""

    queue: str
    #: The broker's id for this delivery (the stream entry id for Redis).
    message_id: str
    payload: bytes
    #: How many times this message has been delivered, this time included.
    deliveries: int = 1
    #: The priority lane it came from (0..9, 0 first).
    priority: int = 0


@dataclass(slots=True)
class Outcome:
    """Everything to do, atomically, when one delivery ends (or to record a state).

    Each part is optional: ``delivery`` is acknowledged and deleted; ``record`` is stored under
    ``task_id`` for ``result_ttl_s`` and, when ``reply_to`` is set, pushed to that reply list;
    ``requeue`` is added back (to the stream, or to the delayed set at ``requeue_due_at``);
    ``dead_reason`` moves the delivery's payload to the dead-letter stream.
    """

    delivery: Delivery | None = None
    task_id: str | None = None
    record: bytes | None = None
    result_ttl_s: float = 86400.0
    reply_to: str | None = None
    requeue: Enqueue | None = None
    dead_reason: str | None = None
    #: Events to record with it (``aioqueue.events``): (encoded event, per-minute counter
    #: field, minute). Recorded even when the rest of the outcome is refused.
    events: tuple[tuple[bytes, str, int], ...] = ()
    #: Flow control the run held, freed in the same step (see ``aioqueue.flow``).
    release: Release | None = None


@dataclass(slots=True)
class Release:
    """What a run held that its outcome frees: a unique lock and an order key's turn (when
    the task ended for good), a concurrency slot (whenever the run ended)."""

    task_id: str
    unique: str | None = None
    order: str | None = None
    slot: str | None = None
    #: The lease of a parked run started in the freed slot (the visibility timeout).
    lease_s: float = 30.0


@dataclass(slots=True)
class QueueDetails:
    """One queue as an operator sees it."""

    name: str
    #: Sent and not yet taken by a worker.
    waiting: int = 0
    #: Taken by a worker and not yet settled.
    running: int = 0
    #: Due later (countdown, eta, retry back-off).
    delayed: int = 0
    dead: int = 0
    #: When the oldest waiting message was sent (epoch seconds), if any waits.
    oldest_waiting_at: float | None = None


@dataclass(slots=True)
class DeadLetter:
    """One entry of a dead-letter stream."""

    queue: str
    entry_id: str
    payload: bytes
    reason: str
    failed_at: float
    #: The priority lane it died in (a requeue puts it back there).
    priority: int = 0


@dataclass(slots=True)
class SettleFailure:
    """An outcome of a settle batch that could not be applied (the rest were)."""

    #: Its position in the batch.
    index: int
    #: What the broker said, e.g. ``OOM command not allowed ...`` or ``WRONGTYPE ...``.
    error: str

    @property
    def transient(self) -> bool:
        """True when trying again later may work (the server is out of memory, loading)."""
        return self.error.startswith(("OOM", "LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN"))


@dataclass(slots=True)
class Revocations:
    """Task ids revoked and not yet expired; ``terminate`` ones are cancelled where they run."""

    revoked: set[str]
    terminate: set[str]


class Broker(Protocol):
    """Storage for messages, results, control and schedules."""

    #: The events stream's cap and the per-minute counters' lifetime (set by the app).
    events_max_len: int
    events_stats_ttl_s: float

    #: The URL with any password replaced by ``***``, for logs and banners.
    display_url: str

    async def connect(self) -> None:
        """Check the broker is reachable; raises ``BrokerConnectionError`` naming the URL."""
        ...

    async def close(self) -> None:
        """Release connections. The broker can be connected again afterwards."""
        ...

    # -- producing -------------------------------------------------------------------------
    async def enqueue(self, items: Sequence[Enqueue]) -> None:
        """Add messages, in one round trip."""
        ...

    # -- consuming -------------------------------------------------------------------------
    async def ensure_queues(self, queues: Sequence[str]) -> None:
        """Create whatever a queue needs before it can be consumed (idempotent)."""
        ...

    async def fetch(
        self, queues: Sequence[str], consumer: str, count: int, timeout_s: float
    ) -> list[Delivery]:
        """Up to ``count`` new messages, waiting up to ``timeout_s`` for the first one."""
        ...

    async def interrupt_fetch(self) -> None:
        """Make a blocked :meth:`fetch` return at once (with nothing), safely."""
        ...

    async def reclaim(
        self, queues: Sequence[str], consumer: str, idle_s: float, count: int
    ) -> list[Delivery]:
        """Take over up to ``count`` messages left unacknowledged for ``idle_s`` or longer."""
        ...

    async def take_over_dead(
        self, queues: Sequence[str], consumer: str, idle_s: float, count: int,
        expires_before: float = 0.0,
    ) -> list[Delivery]:
        """Take over up to ``count`` messages, unacknowledged for ``idle_s`` or longer, of
        workers known to be dead (their connection is gone, and their registration expires
        before ``expires_before``: not renewed lately): sooner than :meth:`reclaim`. A broker that
        cannot tell a dead worker returns []."""
        ...

    async def keep_claimed(self, consumer: str, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Tell the broker these running messages are alive (resets their idle time).

        Only messages ``consumer`` still owns are kept; returns the others (taken over by
        another worker meanwhile, or already settled). Never claims them back.
        """
        ...

    async def settle(self, outcomes: Sequence[Outcome]) -> list[SettleFailure]:
        """Apply outcomes in one round trip; returns those that could not be applied.

        Each outcome is applied whole or its delivery is left unacknowledged; one failing
        outcome never stops the others. Replaying a batch (after a lost reply) does not
        hand back, reschedule or dead-letter a message twice.
        """
        ...

    # -- flow control (see aioqueue.flow) --------------------------------------------------
    lanes: LanePlanner

    def lanes_of(self, queue: str) -> tuple[int, ...]:
        """The priority lanes of ``queue`` a worker reads, first to last."""
        ...

    async def refresh_lanes(self, queues: Sequence[str]) -> None:
        """Re-read which priorities messages of these queues were sent at."""
        ...

    async def enqueue_gated(self, item: Enqueue, gate: Gate,
                            build: Callable[[str], bytes]) -> str | None:
        """Add ``item`` behind a producer-side gate, atomically. Returns the id of the task
        the call joins instead (unique, cooldown, debounce), or None. ``build(task_id)``
        re-encodes the message under another id (a debounce joining a waiting task)."""
        ...

    async def admit_many(self, runs: Sequence[tuple[Delivery, Admission]],
                         lease_s: float) -> list[bool]:
        """Take a rate reservation and a concurrency slot for each run, in one step; True
        to run it now. False: it was acknowledged and parked in Redis, in the same step."""
        ...

    async def renew_slots(self, held: Sequence[tuple[str, str]], lease_s: float) -> None:
        """Extend the leases of (concurrency key, task id) slots held by running tasks."""
        ...

    async def promote_slots(self, lease_s: float) -> int:
        """Free lapsed slots (killed workers) and start the runs parked for them."""
        ...

    async def rate_limits(self) -> dict[str, str]:
        """Rate limits set at run time: task name -> rate (``"5/s"``)."""
        ...

    async def set_rate_limit(self, task: str, rate: str | None) -> None:
        """Set (or with None, remove) a task's rate limit at run time, for every worker."""
        ...

    async def move_due(self, queues: Sequence[str], now: float) -> int:
        """Move delayed messages whose time has come to their streams; returns how many."""
        ...

    async def forget_consumer(self, queues: Sequence[str], consumer: str) -> None:
        """Remove a stopped consumer that holds no messages."""
        ...

    async def prune_consumers(self, queues: Sequence[str], consumer: str, idle_s: float) -> int:
        """Remove other consumers idle for ``idle_s`` that hold no messages (dead workers)."""
        ...

    # -- results ---------------------------------------------------------------------------
    async def get_result(self, task_id: str) -> bytes | None:
        """The stored result record, or None."""
        ...

    async def get_results(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """The stored records of many tasks (None where missing), in one round trip."""
        ...

    async def set_result(self, task_id: str, record: bytes, ttl_s: float) -> None:
        """Store a result record."""
        ...

    async def delete_result(self, task_id: str) -> None:
        """Delete a stored result record."""
        ...

    async def compare_and_set_result(self, task_id: str, record: bytes,
                                     expected: bytes | None, ttl_s: float) -> bool:
        """Store ``record`` only if the stored record is still ``expected`` (None: none)."""
        ...

    def abandon(self) -> None:
        """Close what is open without an event loop: the loop it was opened on is closed."""
        ...

    async def publish_progress(self, task_id: str, record: bytes, ttl_s: float,
                               reply_to: str | None) -> None:
        """Store a running task's progress record and push it to its producer's reply list
        (``update_state``); the reply list is capped and expires as :meth:`settle`'s."""
        ...

    async def wait_replies(self, reply_to: str, timeout_s: float) -> list[bytes]:
        """Pop the records pushed to a reply list, waiting up to ``timeout_s`` for one."""
        ...

    async def interrupt_replies(self) -> None:
        """Make a blocked :meth:`wait_replies` return at once."""
        ...

    # -- monitoring ------------------------------------------------------------------------
    async def register_worker(self, name: str, info: bytes, ttl_s: float) -> None:
        """Record a live worker (``info`` is its encoded self-description) for ``ttl_s``."""
        ...

    async def unregister_worker(self, name: str) -> None:
        """Forget a worker that stopped."""
        ...

    async def workers(self) -> dict[str, bytes]:
        """The live workers' infos (expired ones are dropped)."""
        ...

    async def append_log(self, log: str, entries: Sequence[bytes], max_len: int) -> None:
        """Append to a capped log stream (``events``, ``audit``)."""
        ...

    async def read_log(self, log: str, *, after: str | None = None, count: int = 100,
                       block_s: float = 0.0) -> list[tuple[str, bytes]]:
        """(id, entry) pairs: the newest ``count`` (oldest first) when ``after`` is None, else
        those after that id, waiting up to ``block_s`` for one."""
        ...

    async def count_stats(self, counts: dict[tuple[int, str], int], ttl_s: float) -> None:
        """Add to the per-minute counters: (minute, field) -> increment."""
        ...

    async def stats(self, minutes: Sequence[int]) -> dict[int, dict[str, int]]:
        """The per-minute counters of these minutes (absent ones are left out)."""
        ...

    async def known_queues(self) -> list[str]:
        """Every queue a worker or producer declared (``ensure_queues``)."""
        ...

    async def queue_details(self, queues: Sequence[str]) -> list[QueueDetails]:
        """Depth, running, delayed, dead and the oldest waiting message of each queue."""
        ...

    async def purge_queue(self, queue: str) -> int:
        """Delete the waiting and delayed messages of a queue (not the running ones)."""
        ...

    async def publish_control(self, message: bytes) -> None:
        """Broadcast a control message to every worker."""
        ...

    async def push_control_reply(self, key: str, reply: bytes) -> None:
        """A worker's answer to a control request (kept a minute)."""
        ...

    async def take_control_replies(self, key: str) -> list[bytes]:
        """The answers arrived so far (taken: each is returned once)."""
        ...

    # -- control ---------------------------------------------------------------------------
    async def revoke(
        self, task_id: str, until: float, control: bytes, *, terminate: bool = False,
        record: bytes | None = None, expected: bytes | None = None, ttl_s: float = 0.0,
    ) -> bool:
        """Remember ``task_id`` as revoked (and to ``terminate``) until ``until``, and
        broadcast ``control``.

        With ``record``, also store it as the task's result for ``ttl_s``, but only if the
        stored record is still ``expected`` (None: nothing stored); otherwise do nothing
        and return False, so the caller can read again (compare and set).
        """
        ...

    async def revocations(self, now: float) -> Revocations:
        """Task ids revoked, and to terminate, not yet expired."""
        ...

    def control_messages(self) -> AsyncIterator[bytes]:
        """Broadcast control messages, as they arrive (ends when the broker closes).

        Yields one empty message first, once subscribed: broadcasts sent before it were
        missed, so the caller re-reads durable state (revocations) then.
        """
        ...

    async def queue_sizes(self, queues: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        """Per queue: (ready, delayed, dead) message counts."""
        ...

    # -- dead letters ----------------------------------------------------------------------
    async def dead_letters(self, queue: str, count: int) -> list[DeadLetter]:
        """The oldest ``count`` dead letters of ``queue``."""
        ...

    async def requeue_dead(self, queue: str, entry_ids: Sequence[str] | None) -> int:
        """Move dead letters (all when ``entry_ids`` is None) back to the queue."""
        ...

    async def purge_dead(self, queue: str) -> int:
        """Delete every dead letter of ``queue``; returns how many."""
        ...

    # -- beat ------------------------------------------------------------------------------
    async def acquire_lease(self, owner: str, ttl_s: float) -> bool:
        """Take or renew the beat leader lease; True when ``owner`` holds it afterwards."""
        ...

    async def release_lease(self, owner: str) -> None:
        """Give the lease up if ``owner`` holds it."""
        ...

    async def claim_tick(self, name: str, tick: float, ttl_s: float) -> bool:
        """Claim one tick of one schedule; True for exactly one caller per tick."""
        ...

    async def last_runs(self) -> dict[str, float]:
        """Schedule name -> the last tick fired (epoch seconds)."""
        ...

    async def set_last_run(self, name: str, tick: float) -> None:
        """Record the last tick fired for a schedule."""
        ...

    async def replace_schedules(self, schedules: dict[str, str]) -> None:
        """Store the declared schedules (name -> description), dropping undeclared ones."""
        ...
