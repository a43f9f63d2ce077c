"""Redis Cluster: an app lives in one hash slot, on the master that owns it.

aioqueue's scripts touch many keys in one call (a queue's stream, results, reply lists,
events, flow-control keys), and Redis Cluster runs a multi-key command only when all its
keys are in one slot. So every key of an app is put in one slot by its prefix: with
``key_prefix="{aioqueue}"`` every key starts ``{aioqueue}:`` (``{aioqueue}:{default}:stream``:
Redis hashes only the *first* ``{...}`` of a key), and all share the slot of ``aioqueue``.
An app then talks to one master -- the one that owns its slot -- and nothing else changes:
the same scripts, the same keys. Apps with different tags spread over the masters.

The URL (read by :func:`~aioqueue.broker._url.parse_redis_url`)::

    redis+cluster://[user:password@]host1:port,host2:port,.../[0][?options]
    rediss+cluster://...   (TLS, with the ssl_* options of rediss://)

* the hosts are **start-up nodes**, any nodes of the cluster (port 6379 when left out),
  asked in the order written; unreachable ones are skipped;
* the login is the nodes' (the same on every node, as Redis Cluster needs anyway);
* the database is 0 or absent: a cluster has no other.

The prefix rule (:func:`cluster_key_prefix`): the default ``aioqueue`` becomes
``{aioqueue}``; a prefix with no hash tag is refused.

How it is used: each of aioqueue's own connections (``_resp.RespConnection``) calls
:meth:`Cluster.master_address` at every (re)connect -- ``CLUSTER SLOTS`` asked of the
start-up nodes in turn (then of the nodes the last answer named), and the master of the
app's slot taken from the answer -- then checks with ``ROLE`` that the node is a master.
``-MOVED``, ``-ASK``, ``-CLUSTERDOWN``, ``-TRYAGAIN``, ``-READONLY`` (and ``-LOADING``,
``-MASTERDOWN``) close the socket once the replies already received are handed out; the
broker retries them as "not now" (up to ``broker_connection_timeout``), so the next command
asks the cluster again: a failover or a slot moved is followed by the usual reconnect. A
connection in use also asks again once a second (one question a second per broker: the
answer is shared), as behind Sentinel. ``-CROSSSLOT`` is a bug, never retried. Pub/sub
(remote control) is redis-py's plain client on the same master: classic cluster pub/sub is
broadcast to every node, so subscribing on any node hears every publish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ConfigurationError
from ._resp import RespConnection, RespError

__all__ = (
    "DEFAULT_CLUSTER_PORT", "Cluster", "SlotOwnerNotFoundError", "cluster_key_prefix",
    "hash_tag", "key_slot",
)

DEFAULT_CLUSTER_PORT = 6379
SLOTS = 16384
#: The key prefix an app gets when it sets none (``Settings.key_prefix``'s default).
DEFAULT_PREFIX = "aioqueue"
#: Error replies after which a cluster connection closes and asks where its slot is again.
RECONNECT_ON_CLUSTER = (
    "MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "LOADING", "MASTERDOWN",
)


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16 = _crc16_table()


def _crc16(data: bytes) -> int:
    """CRC16/XMODEM (polynomial 0x1021, initial 0), the checksum of Redis Cluster's slots."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes when it is not the whole key: between the
    first ``{`` and the first ``}`` after it, if that is not empty; else ``None``."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1:end]


def key_slot(key: str) -> int:
    """The slot (0..16383) of ``key``, as ``CLUSTER KEYSLOT`` computes it."""
    tag = hash_tag(key)
    return _crc16((key if tag is None else tag).encode()) % SLOTS


def cluster_key_prefix(prefix: str) -> str:
    """The key prefix to use on Redis Cluster: ``prefix`` if it has a hash tag, ``{aioqueue}``
    for the default ``aioqueue``; any other prefix raises ``ConfigurationError``."""
    if hash_tag(prefix) is not None:
        return prefix
    if prefix == DEFAULT_PREFIX:
        return f"{{{DEFAULT_PREFIX}}}"
    example = prefix.replace("{", "").replace("}", "") or "myapp"
    raise ConfigurationError(
        f"key_prefix {prefix!r} needs a hash tag on Redis Cluster, e.g. "
        f"key_prefix='{{{example}}}': every key of an app must be in one slot"
    )


class SlotOwnerNotFoundError(ConnectionError):
    """No cluster node answered with a master for the app's slot (each one's reason listed).

    A ``ConnectionError``: during a failover this is "not yet", and the broker's retries
    (up to ``broker_connection_timeout``) treat it as such.
    """


class _LastAnswer:
    """The cluster's last answer, shared by the connections of one broker."""

    __slots__ = ("address", "at", "nodes")

    def __init__(self) -> None:
        self.address: tuple[str, int] | None = None
        self.at = 0.0
        #: Every node the last answer named (asked after the start-up nodes).
        self.nodes: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Cluster:
    """The start-up nodes of a Redis Cluster, how to log in, and the app's slot.

    ``slot`` is ``None`` as parsed from a URL; the broker sets it from its key prefix
    (:meth:`for_prefix`) before any connection asks where to go.
    """

    addresses: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: Any = field(default=None, compare=False)
    connect_timeout_s: float = 5.0
    read_timeout_s: float | None = 5.0
    slot: int | None = None
    prefix: str | None = None
    _last: _LastAnswer = field(default_factory=_LastAnswer, compare=False, repr=False)

    def for_prefix(self, prefix: str) -> Cluster:
        """This cluster for the keys under ``prefix`` (which must have a hash tag)."""
        prefix = cluster_key_prefix(prefix)
        return replace(self, slot=key_slot(prefix), prefix=prefix, _last=_LastAnswer())

    def describe(self) -> str:
        """``slot 1234 ('{aioqueue}') via nodes h1:7000,h2:7001`` (for messages)."""
        hosts = ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            for host, port in self.addresses
        )
        return f"slot {self.slot} ({self.prefix!r}) via nodes {hosts}"

    def resp_options(self) -> dict[str, Any]:
        """What :class:`~aioqueue.broker._resp.RespConnection` needs to follow the slot."""
        return {"locate": self.master_address, "require_master": True,
                "reconnect_on": RECONNECT_ON_CLUSTER}

    async def master_address(self, max_age_s: float = 0.0) -> tuple[str, int]:
        """``(host, port)`` of the master that owns the slot, from the first node, in order,
        that knows it.

        ``max_age_s``: an answer got that recently (by any connection of this broker) is
        reused; 0 (a connect) always asks. Each node gets its own connection, closed after
        the one question, bounded by the connect and read timeouts. Raises
        :class:`SlotOwnerNotFoundError` listing what each node said.
        """
        last = self._last
        if last.address is not None and time.monotonic() - last.at < max_age_s:
            return last.address
        address, nodes = await self._ask_in_turn()
        last.address, last.at, last.nodes = address, time.monotonic(), nodes
        return address

    async def _ask_in_turn(self) -> tuple[tuple[str, int], tuple[tuple[str, int], ...]]:
        if self.slot is None:
            raise RuntimeError("Cluster.slot is not set: use for_prefix() first")
        reasons: list[str] = []
        learned = [a for a in self._last.nodes if a not in self.addresses]
        for host, port in (*self.addresses, *learned):
            try:
                reply = await self._ask(host, port)
            except (OSError, RespError) as exc:  # ConnectionError is an OSError
                reasons.append(f"{host}:{port}: {type(exc).__name__}: {exc}")
                continue
            try:
                owner, nodes = _owner(reply, self.slot, host)
            except (TypeError, ValueError, IndexError, AttributeError, UnicodeDecodeError):
                reasons.append(f"{host}:{port}: unreadable answer {reply!r:.60}")
                continue
            if owner is not None:
                return owner, nodes
            reasons.append(f"{host}:{port}: no master serves slot {self.slot}")
        raise SlotOwnerNotFoundError(
            f"no Redis Cluster node named the master of {self.describe()} "
            f"({'; '.join(reasons)})"
        )

    async def _ask(self, host: str, port: int) -> Any:
        conn = RespConnection(
            host=host, port=port, ssl=self.ssl, username=self.username,
            password=self.password, connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
        )
        try:
            return await conn.execute("CLUSTER", "SLOTS")
        finally:
            await conn.close()


def _owner(
    reply: Any, slot: int, asked: str
) -> tuple[tuple[str, int] | None, tuple[tuple[str, int], ...]]:
    """From a ``CLUSTER SLOTS`` reply: the master of ``slot`` (or None) and every node named.

    Each range is ``[start, end, [host, port, id, ...] (the master), [replica]...]``; a host
    that is empty or ``?`` (an endpoint the node does not know) means the node asked.
    """
    owner: tuple[str, int] | None = None
    nodes: list[tuple[str, int]] = []
    for entry in reply:
        start, end = int(entry[0]), int(entry[1])
        for position, node in enumerate(entry[2:]):
            host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
            address = (asked if host in ("", "?") else host, int(node[1]))
            if address not in nodes:
                nodes.append(address)
            if position == 0 and start <= slot <= end:
                owner = address
    return owner, tuple(nodes)
