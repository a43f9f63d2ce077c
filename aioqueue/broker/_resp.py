"""A lean, auto-pipelining Redis connection for the hot path (enqueue, fetch, settle).

Why not redis-py for these commands: measured on this machine, redis-py's asyncio client
spends most of a command's time in Python (connection-pool checkout, a timeout object per
read, argument filtering, retry wrappers): a plain ``await client.xadd(...)`` loop peaks at
about 9,000 commands/s. The same loop on this connection reaches several times that, and
concurrent callers share one socket: every command issued during one event-loop iteration
goes out in a single write (automatic pipelining), and replies are matched to callers in
order. Replies are parsed by hiredis, the C parser redis-py itself uses.

It speaks just enough RESP2 for what the broker needs: AUTH, SELECT, CLIENT SETNAME, plain
commands, EVALSHA and one subscription per connection (:meth:`RespConnection.subscribe`,
the workers' control channel: redis-py's import alone was a third of a worker's start-up,
and it was only here for pub/sub). Redis Cluster is met
one slot at a time (``locate`` + ``reconnect_on``, see ``_cluster.py``). Blocking
commands get a connection of their own, so they never stall the shared one.

Behind Redis Sentinel (``locate`` + ``require_master``, see ``_sentinel.py``) every connect
first asks where the master is and then checks with ``ROLE`` that the node reached is one;
a ``-READONLY`` reply (a replica, or a demoted master) always closes the socket once the
replies already received are handed out, and behind Sentinel so do ``-LOADING`` and
``-MASTERDOWN``: the next command reconnects, through the sentinels. While in use, a
Sentinel connection also asks again every ``RECHECK_MASTER_S``: when the sentinels name
another node and that node answers ``ROLE`` as a master, the socket is closed, so an old
master that wakes up after a failover (and believes itself master until the sentinels
demote it, ~10 s later) stops taking writes within about a second of the switch.

Invariant: a reply future is registered only together with the bytes of its command, on the
socket those bytes go to. Anything that could break the pairing (an argument hiredis cannot
pack, a reply nobody asked for, a stalled server) fails loudly instead, and a socket that
may be out of step is closed, never reused. What the commands raise::

    RespError               an error reply (-ERR, -WRONGTYPE ...); the connection is fine
    RespArgumentError       (a ValueError) an argument cannot be sent; nothing was sent
    ConnectionError         the socket failed or was closed; the command may or may not
    │                       have run on the server
    └── RespTimeoutError    no byte from the server for ``read_timeout_s`` while a reply was
                            owed, or connect + handshake took over ``connect_timeout_s``
    OSError                 connecting failed (DNS, TLS certificate checks, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import hiredis

__all__ = ("RespArgumentError", "RespConnection", "RespError", "RespTimeoutError", "pack")

#: Kernel-level liveness for TCP sockets (Linux names; skipped where missing). The read
#: watchdog runs only while a reply is owed; these also notice a peer that vanished while the
#: socket was idle (keepalive: 15 s idle, then 3 probes 5 s apart) or while our bytes go
#: unacknowledged (TCP_USER_TIMEOUT, ms), instead of the kernel's 2 h and ~15 min defaults.
_TCP_OPTIONS = {"TCP_KEEPIDLE": 15, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3, "TCP_USER_TIMEOUT": 30000}
_UNPACKABLE = (TypeError, ValueError, UnicodeEncodeError)


#: Redis 6+'s answer to AUTH when it has no password configured: harmless.
_NO_PASSWORD_SET = "called without any password configured"


class RespError(Exception):
    """The server answered with an error reply (``-ERR ...``); the connection is fine."""


class RespArgumentError(ValueError):
    """A command cannot be encoded (hiredis takes only str, bytes, int, float, memoryview).

    Raised before anything is sent or queued, so the connection stays in step. The message
    names the command and the argument's position (0 is the command name) and type, never
    its value, which may be a secret.
    """


class RespTimeoutError(ConnectionError):
    """Redis sent nothing for too long while a reply was owed; the socket was closed.

    A ``ConnectionError`` rather than the builtin ``TimeoutError`` on purpose: the socket is
    gone and the command may have run, exactly as after a dropped connection, so callers
    that retry on connection errors do the right thing; and ``TimeoutError`` stays reserved
    for the caller's own deadlines (``asyncio.timeout``, ``anyio.fail_after``).
    """


def _discard(futures: Iterable[asyncio.Future[Any]]) -> None:
    # Nobody will read these any more: cancel the unfinished, retrieve the errors of the
    # rest, so none is logged as "exception was never retrieved".
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


def _argument_error(args: tuple[Any, ...], cause: Exception) -> RespArgumentError:
    name = args[0] if isinstance(args[0], str | bytes) else "?"
    name = name.decode(errors="replace") if isinstance(name, bytes) else name
    what = str(cause)
    for position, arg in enumerate(args):  # slow, but only on the way to an error
        try:
            hiredis.pack_command((arg,))
        except UnicodeEncodeError as exc:  # the text would show part of the value
            what = f"argument {position} is a str with no UTF-8 form (at index {exc.start})"
            break
        except _UNPACKABLE as exc:
            what = f"argument {position} is a {type(arg).__name__} ({exc})"
            break
    return RespArgumentError(f"cannot send {name[:40]!r}: {what}")


#: From this total size on, a batch of commands is written as parts, not joined first.
_LARGE_WRITE = 1 << 20
#: From this size on, a bytes argument is framed here rather than by hiredis, whose packer
#: moves ~0.6 GB/s: 1.7 ms of a 1 MB task's enqueue, five times what Redis takes to store it.
_LARGE = 32 * 1024


def _pack_large(args: tuple[Any, ...]) -> bytes:
    """RESP framing around large bytes arguments: one join, so one copy of each."""
    parts: list[bytes] = [b"*%d\r\n" % len(args)]
    for arg in args:
        if arg.__class__ is not bytes:
            arg = hiredis.pack_command((arg,))
            parts.append(arg[arg.index(b"\n") + 1:])  # the argument's own "$len ... \r\n"
            continue
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)


def pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP2 wire format (hiredis's C packer); raises ``RespArgumentError``."""
    if not args:
        # "*0\r\n" gets no reply from Redis: its future would take the next command's reply.
        raise RespArgumentError("cannot send an empty command")
    for arg in args:
        if arg.__class__ is bytes and len(arg) >= _LARGE:
            try:
                return _pack_large(args)
            except _UNPACKABLE as exc:
                raise _argument_error(args, exc) from None
    try:
        packed: bytes = hiredis.pack_command(args)
    except _UNPACKABLE as exc:
        raise _argument_error(args, exc) from None
    return packed


#: Error replies after which a socket is closed (the next command reconnects): the node is
#: a replica (or was demoted to one), so the master is elsewhere now.
_RECONNECT_ON = ("READONLY",)
#: Behind Sentinel also these: a node loading its data or cut off from its master is one the
#: sentinels may have replaced; asking them again costs one round trip per connection.
_RECONNECT_ON_SENTINEL = ("READONLY", "LOADING", "MASTERDOWN")
#: Behind Sentinel, how often a connection in use asks whether its node is still the master.
RECHECK_MASTER_S = 1.0


class _Protocol(asyncio.Protocol):
    """Matches replies to waiting futures, in order; fails them all when the socket goes."""

    def __init__(
        self, read_timeout_s: float | None, reconnect_on: tuple[str, ...] = _RECONNECT_ON
    ) -> None:
        self.loop = asyncio.get_running_loop()
        #: Error replies that retire this socket (see ``_RECONNECT_ON``).
        self.reconnect_on = reconnect_on
        #: ``(host, port)`` this socket reached, for callers that must not mix servers.
        self.address: tuple[str, int] | None = None
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        #: Commands not yet written; flushed once per loop iteration.
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.closed = self.loop.create_future()
        self.read_timeout_s = read_timeout_s
        #: Loop time of the last byte received, or of the first command sent on an idle socket.
        self.last_progress = 0.0
        #: Bytes the transport still held at the last watchdog check.
        self.unsent = 0
        self.watchdog: asyncio.TimerHandle | None = None
        #: Subscribed (see ``RespConnection.subscribe``): every reply is a pushed message,
        #: kept here in order, and ``pushed`` is set when some arrived or the socket went.
        self.pushes: deque[Any] | None = None
        self.pushed: asyncio.Event | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in _TCP_OPTIONS.items():
                if hasattr(socket, name):
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)

    def data_received(self, data: bytes) -> None:
        if self.lost is not None:
            return  # already failed and aborted: these bytes belong to nobody
        self.last_progress = self.loop.time()
        self.reader.feed(data)
        waiting = self.waiting
        retire: str | None = None
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(ConnectionError(f"unparseable data from Redis: {exc}"))
                return
            if reply is False:
                if retire is not None:
                    # This node is no (usable) master: the replies already here were handed
                    # out; close before any new command can pick this socket.
                    self.abort(ConnectionResetError(
                        f"Redis answered {retire[:60]!r}: reconnecting to the master"))
                return
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith(
                self.reconnect_on
            ):
                retire = str(reply)
            if not waiting and self.pushes is not None:
                self.pushes.append(reply)
                assert self.pushed is not None
                self.pushed.set()
                continue
            if not waiting:
                # Never happens with a well-behaved server; if it does, which reply belongs
                # to whom is unknowable, so stop rather than hand out wrong replies.
                self.abort(ConnectionError("Redis sent a reply nobody asked for"))
                return
            future = waiting.popleft()
            if future.done():
                continue  # the caller gave up (cancelled); the reply still had to be read
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RespError(str(reply)))
            else:
                future.set_result(reply)

    def send(self, data: bytes, futures: Iterable[asyncio.Future[Any]]) -> None:
        """Queue a command's bytes together with its reply futures."""
        waiting = self.waiting
        if not waiting:
            self.start_waiting()
            waiting.extend(futures)
            # Nothing in flight: a lone caller (a plain ``await delay()`` loop) goes out at
            # once rather than one loop iteration later.
            self.write(data)
            return
        waiting.extend(futures)
        self.out.append(data)
        if not self.flush_scheduled:
            # Everything sent during this loop iteration leaves in one write.
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def send_parts(self, parts: list[bytes], futures: Iterable[asyncio.Future[Any]]) -> None:
        """``send`` for a batch of large commands: handed to the transport as they are
        (``writelines``, a vectored write on uvloop), where joining them first would copy
        every byte once more (50 MB of 1 MB commands: 46 ms joined, 13 ms as parts)."""
        if not self.waiting:
            self.start_waiting()
        self.waiting.extend(futures)
        self.flush()  # what was queued before goes first
        if self.lost is None:
            assert self.transport is not None
            try:
                self.transport.writelines(parts)
            except RuntimeError as exc:  # uvloop: the handle closed before connection_lost
                self.abort(ConnectionResetError(f"connection closed: {exc}"))

    def flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if not out or self.lost is not None:
            return
        data = b"".join(out) if len(out) > 1 else out[0]
        out.clear()
        self.write(data)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            self.transport.write(data)
        except RuntimeError as exc:  # uvloop: the handle closed before connection_lost ran
            self.abort(ConnectionResetError(f"connection closed: {exc}"))

    # -- the read watchdog -------------------------------------------------------------------
    # No timer per command: one timer per connection, armed only while replies are owed,
    # re-armed at most once per ``read_timeout_s``. The hot path only stores a clock reading.
    def start_waiting(self) -> None:
        """The socket had nothing in flight and a command is going out: start the clock."""
        self.last_progress = now = self.loop.time()
        if self.watchdog is None and self.read_timeout_s is not None:
            self.watchdog = self.loop.call_at(now + self.read_timeout_s, self._check_progress)

    def _check_progress(self) -> None:
        self.watchdog = None
        timeout = self.read_timeout_s
        if not self.waiting or self.lost is not None or timeout is None:
            return  # idle again: the next command re-arms
        now = self.loop.time()
        # A command bigger than the socket buffers may still be leaving, and Redis cannot
        # answer before it has it all: a backlog seen for the first time, or smaller than at
        # the last check, counts as progress. One that does not shrink is a stall.
        unsent = self.transport.get_write_buffer_size() if self.transport is not None else 0
        if unsent and (not self.unsent or unsent < self.unsent):
            self.last_progress = now
        self.unsent = unsent
        deadline = self.last_progress + timeout
        if now >= deadline:
            self.abort(RespTimeoutError(f"no reply from Redis in {timeout:g} s"))
        else:
            self.watchdog = self.loop.call_at(deadline, self._check_progress)

    # -- the end -----------------------------------------------------------------------------
    def _fail_waiting(self) -> None:
        lost = self.lost
        timed_out = isinstance(lost, RespTimeoutError)
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                error = RespTimeoutError if timed_out else ConnectionError
                future.set_exception(error(str(lost)))
        self.out.clear()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if self.pushed is not None:
            self.pushed.set()  # wake the subscriber: it finds ``lost`` set

    def abort(self, exc: Exception, *, graceful: bool = False) -> None:
        """Fail every waiter with ``exc`` and close the socket (``graceful``: after the
        transport's buffer drains; otherwise at once). A closed socket is never reused."""
        if self.lost is None:
            self.lost = exc
        self._fail_waiting()
        if self.transport is not None:
            self.transport.close() if graceful else self.transport.abort()

    def eof_received(self) -> None:
        # Mark it lost now: between here and connection_lost no caller may pick this socket.
        if self.lost is None:
            self.lost = ConnectionResetError("connection closed by the server")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = exc or ConnectionResetError("connection closed by the server")
        self._fail_waiting()
        if not self.closed.done():
            self.closed.set_result(None)


class RespConnection:
    """One socket to Redis, shared by every caller on the loop; reconnects on demand.

    :param connect_timeout_s: bound on connecting plus the handshake (AUTH, SELECT,
        CLIENT SETNAME); past it the call raises ``RespTimeoutError`` and the socket closes.
    :param read_timeout_s: while any reply is owed, the longest Redis may send nothing at
        all; past it every waiting command fails with ``RespTimeoutError`` and the socket
        is closed. ``None`` disables it. A connection for blocking commands (``BLOCK``,
        ``BLMPOP``) must allow their longest block on top. The default is only a backstop.
    :param client_name: sent as ``CLIENT SETNAME`` in the handshake (shows in CLIENT LIST).
    :param locate: called at every connect for the ``(host, port)`` to reach, instead of
        ``host``/``port`` (Sentinel: the current master); what it raises fails the connect.
        Its argument is how old a cached answer may be: 0 at a connect, and
        ``RECHECK_MASTER_S`` for the periodic check of a connection in use.
    :param require_master: end the handshake with ``ROLE`` and refuse (``ConnectionError``)
        a node that is not a master; ``-LOADING``/``-MASTERDOWN`` replies then close the
        socket too, like ``-READONLY`` always does.
    :param reconnect_on: the error replies (by their first word) that close the socket,
        instead of those ``require_master`` picks (Redis Cluster adds ``MOVED``, ``ASK``,
        ``CLUSTERDOWN``, ``TRYAGAIN``: see ``_cluster.py``).
    """

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 6379,
        path: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float | None = 30.0,
        client_name: str | None = None,
        locate: Callable[[float], Awaitable[tuple[str, int]]] | None = None,
        require_master: bool = False,
        reconnect_on: tuple[str, ...] | None = None,
    ) -> None:
        if read_timeout_s is not None and not read_timeout_s > 0:
            raise ValueError(f"read_timeout_s must be > 0 or None, not {read_timeout_s!r}")
        self._target = (host, port, path, ssl)
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        handshake: list[tuple[Any, ...]] = []
        if password is not None:
            handshake.append(
                ("AUTH", password) if username is None else ("AUTH", username, password)
            )
        if db:
            handshake.append(("SELECT", db))
        if client_name is not None:
            handshake.append(("CLIENT", "SETNAME", client_name))
        if require_master:
            handshake.append(("ROLE",))  # last: checked in _shake_hands
        self._locate = locate
        self._recheck_at = 0.0
        self._recheck: asyncio.Task[None] | None = None
        if reconnect_on is None:
            reconnect_on = _RECONNECT_ON_SENTINEL if require_master else _RECONNECT_ON
        self._reconnect_on = reconnect_on
        # Packed once here, so a bad setting fails at construction rather than at each connect.
        self._handshake = [(command[0], pack(command)) for command in handshake]
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    @property
    def connected(self) -> bool:
        """True while the socket is open."""
        p = self._protocol
        return p is not None and p.lost is None

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` of the open TCP socket (``None`` when closed, or on a unix one)."""
        p = self._protocol
        return p.address if p is not None and p.lost is None else None

    async def _open(self, address: tuple[str, int] | None = None) -> _Protocol:
        loop = asyncio.get_running_loop()
        host, port, path, ssl = self._target
        if address is not None:
            host, port = address
        elif self._locate is not None:
            # Bounded on its own (each sentinel asked has the connect timeout), so a
            # black-holed first sentinel leaves the next ones their chance.
            host, port = await self._locate(0.0)
        factory = functools.partial(_Protocol, self._read_timeout_s, self._reconnect_on)
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if path is not None:
                    _, protocol = await loop.create_unix_connection(factory, path)
                else:
                    _, protocol = await loop.create_connection(factory, host, port, ssl=ssl)
                    protocol.address = (host, port)
                if self._handshake:
                    await self._shake_hands(protocol)
        except BaseException as exc:
            # Whatever went wrong (AUTH refused, a timeout, a cancel), this socket is ours
            # to close: Redis keeps a connection open after a failed AUTH.
            if protocol is not None:
                protocol.abort(ConnectionError("connecting to Redis failed"))
            if isinstance(exc, TimeoutError):
                raise RespTimeoutError(
                    f"connecting to Redis took over {self._connect_timeout_s:g} s"
                ) from exc
            raise
        return protocol

    async def _shake_hands(self, protocol: _Protocol) -> None:
        futures = [protocol.loop.create_future() for _ in self._handshake]
        protocol.waiting.extend(futures)
        protocol.write(b"".join(data for _, data in self._handshake))
        try:
            await asyncio.wait(futures)
        except BaseException:
            _discard(futures)
            raise
        errors = [future.exception() for future in futures]  # retrieves every one
        for (name, _), exc in zip(self._handshake, errors, strict=True):
            if exc is not None and name == "AUTH" and _NO_PASSWORD_SET in str(exc):
                # A password given to a server that has none: it accepts us anyway (as
                # redis-py's connections do, and as Redis before 6 did silently).
                continue
            if exc is not None:
                # Keep the server's text first: callers match on it ("LOADING", "WRONGPASS").
                exc.add_note(f"while connecting to Redis ({name})")
                raise exc
        if self._handshake[-1][0] == "ROLE":
            role = futures[-1].result()
            if not (isinstance(role, list) and role and role[0] == b"master"):
                # A replica (a demoted master, or the sentinels have not noticed the
                # failover yet): never used read-only. A connection error, so callers retry.
                what = role[0] if isinstance(role, list) and role else role
                what = what.decode(errors="replace") if isinstance(what, bytes) else what
                where = "" if protocol.address is None else " at {}:{}".format(*protocol.address)
                raise ConnectionError(f"the Redis node{where} is {what!r}, not the master")

    def _connected(self, task: asyncio.Task[_Protocol]) -> None:
        # Runs when a connect attempt ends, whether or not anyone still waits for it: so a
        # connect whose callers were all cancelled still lands in ``_protocol`` (where its
        # liveness is checked) and its error is retrieved, not logged as never retrieved.
        current = self._connecting is task
        if current:
            self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return
        if current:
            self._protocol = task.result()
        else:
            # close() ran while this connect was finishing.
            task.result().abort(ConnectionError("connection closed by the client"))

    async def _ready(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        # One connect attempt at a time; concurrent callers wait for the same one, and a
        # caller cancelled meanwhile does not cancel it for the others.
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.get_running_loop().create_task(self._open())
            connecting.add_done_callback(self._connected)
        try:
            protocol = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if connecting.cancelled() and task is not None and not task.cancelling():
                # close() stopped the connect; this caller was not cancelled itself.
                raise ConnectionError("connection closed while connecting") from None
            raise
        if protocol.lost is not None:
            raise ConnectionError(f"connection to Redis lost: {protocol.lost}")
        return protocol

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply.

        Raises ``RespError`` (error reply), ``RespArgumentError`` (nothing sent),
        ``ConnectionError``/``RespTimeoutError`` or ``OSError`` (see the module docstring).
        """
        data = pack(args)  # before anything is queued: a refused argument changes nothing
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._ready()
        if self._locate is not None:
            self._maybe_recheck(protocol)
        future: asyncio.Future[Any] = protocol.loop.create_future()
        protocol.send(data, (future,))
        return await future

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send many commands in one write and return their replies, in order.

        Cheaper than gathering ``execute`` calls: one future per command and no task each.
        The first error reply is raised after every reply has arrived. A command that
        cannot be packed raises ``RespArgumentError`` and none of them is sent.
        """
        if not commands:
            return []
        packed: list[bytes] = []
        for index, command in enumerate(commands):
            try:
                packed.append(pack(command if type(command) is tuple else tuple(command)))
            except RespArgumentError as exc:
                raise RespArgumentError(f"command {index} of {len(commands)}: {exc}") from None
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._ready()
        if self._locate is not None:
            self._maybe_recheck(protocol)
        loop = protocol.loop
        futures = [loop.create_future() for _ in commands]
        if len(packed) > 1 and sum(map(len, packed)) >= _LARGE_WRITE:
            protocol.send_parts(packed, futures)
        else:
            protocol.send(b"".join(packed), futures)
        try:
            # Replies arrive in order: when the last one is in, so are all the others.
            with contextlib.suppress(RespError):
                await futures[-1]
        except BaseException:
            _discard(futures)  # replies of cancelled futures are read and skipped
            raise
        for error in [future.exception() for future in futures]:  # retrieves every one
            if error is not None:
                raise error
        return [future.result() for future in futures]

    # -- Sentinel: is this socket's node still the master? ----------------------------------
    def _maybe_recheck(self, protocol: _Protocol) -> None:
        now = protocol.loop.time()
        if now >= self._recheck_at and self._recheck is None and protocol.address is not None:
            self._recheck_at = now + RECHECK_MASTER_S
            self._recheck = protocol.loop.create_task(self._recheck_master(protocol))
            self._recheck.add_done_callback(self._rechecked)

    async def _recheck_master(self, protocol: _Protocol) -> None:
        assert self._locate is not None
        try:
            address = await self._locate(RECHECK_MASTER_S)
            if address == protocol.address or protocol.lost is not None:
                return
            # The sentinels name another node: believe them only if it says it is a master
            # (the handshake's ROLE check), so one stale sentinel cannot make us drop a
            # good socket every second.
            probe = await self._open(address)
        except (OSError, RespError):
            return  # cannot tell: keep the socket; a real loss is seen when it comes
        probe.abort(ConnectionError("only a probe"), graceful=True)
        protocol.abort(ConnectionResetError(
            f"the sentinels name {address[0]}:{address[1]} as the master now: reconnecting"))

    def _rechecked(self, task: asyncio.Task[None]) -> None:
        if self._recheck is task:
            self._recheck = None
        if not task.cancelled():
            task.exception()  # _recheck_master catches what it expects; never left unread

    async def evalsha(self, script: str, sha: str, keys: list[Any], args: list[Any]) -> Any:
        """Run a Lua script by hash, loading it once on ``NOSCRIPT``."""
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.execute("SCRIPT", "LOAD", script)
        return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    async def subscribe(self, channel: str) -> AsyncIterator[bytes | None]:
        """Subscribe this connection to ``channel``: yields ``None`` once subscribed, then
        every message's data. The socket is the subscription's alone from then on (no
        other command may use this connection). Raises ``RespError`` if the server refuses
        (an ACL without the channel) and ``ConnectionError`` when the socket goes,
        :meth:`close` included; a later call subscribes on a new socket.

        An idle subscription owes no reply, so no read timeout applies; TCP keepalive
        notices a peer that vanished.
        """
        protocol = await self._ready()
        pushes: deque[Any] = deque()
        pushed = asyncio.Event()
        protocol.pushes, protocol.pushed = pushes, pushed
        protocol.write(pack(("SUBSCRIBE", channel)))
        while True:
            while pushes:
                reply = pushes.popleft()
                if isinstance(reply, hiredis.ReplyError):
                    raise RespError(str(reply))
                if not isinstance(reply, list) or len(reply) < 3:
                    continue
                kind = reply[0]
                if kind == b"message":
                    yield reply[2]
                elif kind == b"subscribe":
                    yield None
            if protocol.lost is not None:
                raise ConnectionError(f"subscription to {channel!r} lost: {protocol.lost}")
            pushed.clear()
            await pushed.wait()

    async def client_id(self) -> int:
        """This connection's id (for ``CLIENT UNBLOCK`` from another connection)."""
        return int(await self.execute("CLIENT", "ID"))

    def abandon(self) -> None:
        """Close the socket of a connection whose event loop is closed, without that loop.

        Django runs each async view of a WSGI server on a loop of its own and closes it
        after the request; nothing can be awaited there any more. Left alone, the socket
        would stay open until garbage collection (and warn then).
        """
        connecting, self._connecting = self._connecting, None
        self._recheck = None  # a task of the closed loop, like ``connecting``
        protocol, self._protocol = self._protocol, None
        transports = [] if protocol is None or protocol.transport is None else [
            protocol.transport]
        for transport in transports:
            sock = getattr(transport, "_sock", None)  # asyncio's selector transports
            if sock is not None:
                sock.close()
                transport._sock = None  # type: ignore[attr-defined]  # no warning at GC
            else:
                with contextlib.suppress(Exception):  # others (uvloop) close their own
                    transport.abort()
        del connecting  # its task belongs to the closed loop: nothing to wait for

    async def close(self) -> None:
        """Close the socket; pending commands fail with ``ConnectionError``.

        Not final: a later command opens a new socket.
        """
        connecting, self._connecting = self._connecting, None
        recheck, self._recheck = self._recheck, None
        for task in (connecting, recheck):
            if task is not None:
                task.cancel()
                await asyncio.wait((task,))  # its socket is closed once it has ended
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.abort(ConnectionError("connection closed by the client"), graceful=True)
            await asyncio.shield(protocol.closed)
