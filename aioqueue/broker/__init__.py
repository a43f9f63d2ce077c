"""Brokers: the storage behind queues and results. :func:`create_broker` picks one by URL."""

from __future__ import annotations

from ..errors import ConfigurationError
from ._url import redact_url
from .base import (
    Broker,
    DeadLetter,
    Delivery,
    Enqueue,
    Outcome,
    QueueDetails,
    Revocations,
    SettleFailure,
)

__all__ = (
    "Broker", "DeadLetter", "Delivery", "Enqueue", "Outcome", "QueueDetails", "Revocations",
    "SettleFailure", "create_broker", "redact_url",
)


def create_broker(url: str, *, prefix: str, connect_timeout_s: float) -> Broker:
    """A broker for ``url``: ``redis://``, ``rediss://``, ``unix://``, ``sentinel://``,
    ``redis+cluster://`` (``rediss+cluster://``) or ``memory://``.

    On Redis Cluster ``prefix`` must have a hash tag (``{myapp}``); the default ``aioqueue``
    becomes ``{aioqueue}`` (see ``broker/_cluster.py``).
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(url)
    if scheme in {"redis", "rediss", "unix", "sentinel", "redis+cluster", "rediss+cluster"}:
        from .redis import RedisBroker

        return RedisBroker(url, prefix=prefix, connect_timeout_s=connect_timeout_s)
    raise ConfigurationError(
        f"unsupported broker URL {redact_url(url)!r}: use redis://, rediss://, unix://, "
        "sentinel://, redis+cluster:// (rediss+cluster://) or memory://"
    )
