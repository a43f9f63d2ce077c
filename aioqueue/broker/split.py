"""A result backend apart from the broker: queues on one Redis, results on another.

Celery users configure ``broker_url = "redis://host/2"`` and ``result_backend =
"redis://host/1"`` (another database, or another server). :class:`SplitBroker` keeps the
:class:`~aioqueue.broker.Broker` contract with two brokers behind it: results, reply lists
and progress on the backend; queues, flow control, control, events and beat on the broker.

The one thing that changes is settling. With one Redis, a result and the acknowledgement
of its message are one script call (atomic). Apart, they cannot be: the result is stored
first, on the backend, and the message acknowledged after, on the broker. A crash in
between leaves the message unacknowledged, so it is redelivered and the task runs again
(which at-least-once allows); it can never leave a message acknowledged without its
result. An outcome whose result the backend refused is not acknowledged at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import Broker, Outcome, SettleFailure

__all__ = ("SplitBroker",)


class SplitBroker:
    """Queue operations go to ``queues``, result operations to ``results``."""

    def __init__(self, queues: Broker, results: Broker) -> None:
        self.queues = queues
        self.results = results
        self.display_url = queues.display_url
        self.results_display_url = results.display_url

    def __getattr__(self, name: str) -> Any:
        # Everything not about results is the broker's (queues, flow control, monitoring,
        # control, dead letters, beat): delegated as is.
        return getattr(self.queues, name)

    @property
    def reply_cap(self) -> int:
        """The reply lists' cap: they live on the backend."""
        cap: int = getattr(self.results, "reply_cap")  # noqa: B009 (not in the protocol)
        return cap

    @reply_cap.setter
    def reply_cap(self, value: int) -> None:
        self.results.reply_cap = value  # type: ignore[attr-defined]

    @property
    def events_max_len(self) -> int:
        return self.queues.events_max_len

    @events_max_len.setter
    def events_max_len(self, value: int) -> None:
        self.queues.events_max_len = value

    @property
    def events_stats_ttl_s(self) -> float:
        return self.queues.events_stats_ttl_s

    @events_stats_ttl_s.setter
    def events_stats_ttl_s(self, value: float) -> None:
        self.queues.events_stats_ttl_s = value

    # -- both --------------------------------------------------------------------------------
    async def connect(self) -> None:
        await self.queues.connect()
        await self.results.connect()

    async def close(self) -> None:
        try:
            await self.queues.close()
        finally:
            await self.results.close()

    def abandon(self) -> None:
        self.queues.abandon()
        self.results.abandon()

    # -- results -----------------------------------------------------------------------------
    async def get_result(self, task_id: str) -> bytes | None:
        return await self.results.get_result(task_id)

    async def get_results(self, task_ids: Sequence[str]) -> list[bytes | None]:
        return await self.results.get_results(task_ids)

    async def set_result(self, task_id: str, record: bytes, ttl_s: float) -> None:
        await self.results.set_result(task_id, record, ttl_s)

    async def delete_result(self, task_id: str) -> None:
        await self.results.delete_result(task_id)

    async def publish_progress(self, task_id: str, record: bytes, ttl_s: float,
                               reply_to: str | None) -> None:
        await self.results.publish_progress(task_id, record, ttl_s, reply_to)

    async def wait_replies(self, reply_to: str, timeout_s: float) -> list[bytes]:
        return await self.results.wait_replies(reply_to, timeout_s)

    async def interrupt_replies(self) -> None:
        await self.results.interrupt_replies()

    async def compare_and_set_result(self, task_id: str, record: bytes,
                                     expected: bytes | None, ttl_s: float) -> bool:
        return await self.results.compare_and_set_result(task_id, record, expected, ttl_s)

    # -- the two together --------------------------------------------------------------------
    async def settle(self, outcomes: Sequence[Outcome]) -> list[SettleFailure]:
        # 1. Results (and the producers' wake-ups) on the backend.
        with_record = [i for i, o in enumerate(outcomes) if o.record is not None]
        stored = [Outcome(task_id=outcomes[i].task_id, record=outcomes[i].record,
                          result_ttl_s=outcomes[i].result_ttl_s,
                          reply_to=outcomes[i].reply_to) for i in with_record]
        failures: list[SettleFailure] = []
        refused: set[int] = set()
        if stored:
            for failure in await self.results.settle(stored):
                index = with_record[failure.index]
                refused.add(index)
                failures.append(SettleFailure(index, failure.error))
        # 2. Then the acknowledgements (and retries, hand-backs, dead letters, events,
        # flow control) on the broker, for the outcomes whose result is stored.
        rest = [i for i in range(len(outcomes)) if i not in refused]
        acked = [Outcome(delivery=o.delivery, requeue=o.requeue, dead_reason=o.dead_reason,
                         events=o.events, release=o.release)
                 for o in (outcomes[i] for i in rest)]
        if acked:
            failures += [SettleFailure(rest[f.index], f.error)
                         for f in await self.queues.settle(acked)]
        return sorted(failures, key=lambda f: f.index)

    async def revoke(
        self, task_id: str, until: float, control: bytes, *, terminate: bool = False,
        record: bytes | None = None, expected: bytes | None = None, ttl_s: float = 0.0,
    ) -> bool:
        if record is not None and not await self.results.compare_and_set_result(
                task_id, record, expected, ttl_s):
            return False
        return await self.queues.revoke(task_id, until, control, terminate=terminate)
