"""Priority lanes: which streams a fetch reads, in which order (shared by both brokers).

Each priority of a queue is a lane of its own (a stream and a delayed set), so taking the
highest priority first is a matter of reading the lanes in order -- strict, and at no cost
to a queue that never used a priority (it has one lane, read as before).

Strict order alone could starve a low priority forever under a steady flow of higher ones.
So one message in every ``share_every + 1`` that a worker takes from a queue with several
lanes is taken from its lower lanes instead, in turn: each lower lane that has messages
waiting gets at least one of every ``(share_every + 1) x lower lanes`` messages the worker
takes (a bounded share; ``share_every = 0`` means strict order, no share).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ("PRIORITIES", "LanePlanner", "check_priority")

#: Valid priorities, 0 first (as Celery on Redis and BullMQ).
PRIORITIES = range(10)

Lane = tuple[str, int]


def check_priority(priority: object, what: str = "priority") -> int:
    """``priority`` as an int in 0..9, or a ``ValueError`` naming the range."""
    if isinstance(priority, bool) or not isinstance(priority, int) or priority not in PRIORITIES:
        raise ValueError(f"{what} must be a whole number from 0 (runs first) to 9, "
                         f"not {priority!r}")
    return priority


class LanePlanner:
    """Plans each fetch: the lanes to read, in order, and how many messages to take."""

    def __init__(self, share_every: int = 10) -> None:
        self.share_every = share_every
        self._since_share = 0
        self._turn = 0

    def plan(self, queues: Sequence[str], lanes_of: Callable[[str], Sequence[int]],
             count: int) -> tuple[list[Lane], int]:
        """The lanes to read in order, and how many of the first ones are a share turn's:
        those together give at most one message, then the normal order follows (a lane
        may appear in both parts)."""
        order = [(q, p) for q in queues for p in lanes_of(q)]
        if not self.share_every or self._since_share < self.share_every:
            return order, 0
        lower = [(q, p) for q in queues for p in lanes_of(q)[1:]]
        if not lower:
            return order, 0
        # A share turn: first one message from the next lower lane in turn that has one,
        # then the rest of the fetch in the normal order -- in the same call.
        turn = self._turn % len(lower)
        self._turn += 1
        self._since_share = 0
        return lower[turn:] + lower[:turn] + order, len(lower)

    def taken(self, lanes: Sequence[Lane], lanes_of: Callable[[str], Sequence[int]]) -> None:
        """Count messages just taken from queues with several lanes (towards a share)."""
        if self.share_every:
            self._since_share += sum(1 for q, _ in lanes if len(lanes_of(q)) > 1)
