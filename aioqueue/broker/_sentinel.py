"""Redis Sentinel: ask the sentinels where the master is, at every connect.

The URL (read by :func:`~aioqueue.broker._url.parse_redis_url`)::

    sentinel://[user:password@]host1[:26379],host2[:26379],.../MASTER_NAME[/DB][?options]

* the hosts are the **sentinels** (port 26379 when left out), asked in the order written;
* ``MASTER_NAME`` is the name in the sentinels' ``sentinel monitor NAME ...`` line (or the
  ``?master_name=`` option, the name of Celery's ``broker_transport_options`` entry);
* ``user:password@`` (or ``?username=``/``?password=``) log in to the **master**, as the
  password of a Celery/kombu ``sentinel://`` URL does;
* ``?sentinel_password=`` (and ``?sentinel_username=``) log in to the **sentinels**; without
  them the sentinels are asked without ``AUTH`` (redis-py's and kombu's default too: their
  ``sentinel_kwargs``);
* ``DB``, ``?db=``, ``?socket_timeout=``, ``?socket_connect_timeout=``, ``?client_name=`` as
  for ``redis://``; the two timeouts bound the talks with the sentinels too.

For example ``sentinel://:s3cret@10.0.0.1,10.0.0.2,10.0.0.3/mymaster/0?sentinel_password=x``.
Celery's own spelling, ``sentinel://h1:26379;sentinel://h2:26379`` with ``master_name`` in
``broker_transport_options``, is refused with this one in the message.
:func:`~aioqueue.broker._url.redact_url` masks both passwords. TLS is not supported yet
(``ssl_*`` options are refused).

How it is used: each of aioqueue's own connections (``_resp.RespConnection``) calls
:meth:`Sentinels.master_address` at every (re)connect, then checks with ``ROLE`` that the
node it reached is a master, and drops its socket at a ``-READONLY``/``-LOADING`` reply or
when the socket fails, so the next command asks the sentinels again. A connection in use
also asks again once a second (one question a second per broker: the answer is shared) and
leaves its node when the sentinels name another one that says it is the master. The
pub/sub client is redis-py's ``Sentinel(...).master_for(...)``, built in ``broker/redis.py``
from :meth:`Sentinels.redis_py_sentinel_kwargs` (this module may not import redis).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ._resp import RespConnection, RespError

__all__ = ("DEFAULT_SENTINEL_PORT", "MasterNotFoundError", "Sentinels")

DEFAULT_SENTINEL_PORT = 26379


class MasterNotFoundError(ConnectionError):
    """No sentinel answered with an address for the master (each one's reason is listed).

    A ``ConnectionError``: during a failover this is "not yet", and the broker's retries
    (up to ``broker_connection_timeout``) treat it as such.
    """


class _LastAnswer:
    """The sentinels' last answer, shared by the connections of one broker."""

    __slots__ = ("address", "at")

    def __init__(self) -> None:
        self.address: tuple[str, int] | None = None
        self.at = 0.0


@dataclass(frozen=True)
class Sentinels:
    """The sentinels of one monitored master, and how to log in to them."""

    addresses: tuple[tuple[str, int], ...]
    master_name: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 5.0
    read_timeout_s: float | None = 5.0
    _last: _LastAnswer = field(default_factory=_LastAnswer, compare=False, repr=False)

    def describe(self) -> str:
        """``master 'NAME' via sentinels h1:26379,h2:26379`` (for messages)."""
        hosts = ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            for host, port in self.addresses
        )
        return f"master {self.master_name!r} via sentinels {hosts}"

    async def master_address(self, max_age_s: float = 0.0) -> tuple[str, int]:
        """The master's ``(host, port)`` from the first sentinel, in order, that knows it.

        ``max_age_s``: an answer got that recently (by any connection of this broker) is
        reused; 0 (a connect) always asks. Each sentinel gets its own connection, closed
        after the one question, bounded by the connect and read timeouts. Raises
        :class:`MasterNotFoundError` listing what each sentinel said.
        """
        last = self._last
        if last.address is not None and time.monotonic() - last.at < max_age_s:
            return last.address
        address = await self._ask_in_turn()
        last.address, last.at = address, time.monotonic()
        return address

    async def _ask_in_turn(self) -> tuple[str, int]:
        reasons: list[str] = []
        for host, port in self.addresses:
            try:
                reply = await self._ask(host, port)
            except (OSError, RespError) as exc:  # ConnectionError is an OSError
                reasons.append(f"{host}:{port}: {type(exc).__name__}: {exc}")
                continue
            if isinstance(reply, list) and len(reply) == 2:
                master_host, master_port = reply
                try:
                    return master_host.decode(), int(master_port)
                except (AttributeError, UnicodeDecodeError, ValueError):
                    pass
                reasons.append(f"{host}:{port}: unreadable answer {reply!r:.60}")
            else:
                reasons.append(f"{host}:{port}: knows no master of that name")
        raise MasterNotFoundError(
            f"no sentinel gave the address of {self.describe()} ({'; '.join(reasons)})"
        )

    async def _ask(self, host: str, port: int) -> Any:
        conn = RespConnection(
            host=host, port=port, username=self.username if self.password else None,
            password=self.password, connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
        )
        try:
            return await conn.execute("SENTINEL", "get-master-addr-by-name", self.master_name)
        finally:
            await conn.close()

    def redis_py_sentinel_kwargs(self) -> dict[str, Any]:
        """``sentinel_kwargs`` for ``redis.asyncio.sentinel.Sentinel``: the same login and
        timeouts for redis-py's questions to the sentinels."""
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout_s,
            "socket_timeout": self.read_timeout_s,
        }
        if self.password is not None:
            kwargs["password"] = self.password
            if self.username is not None:
                kwargs["username"] = self.username
        return kwargs
