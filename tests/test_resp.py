"""The hot-path Redis connection: replies always reach the caller that asked.

Everything here runs against a real redis-server. Faults are made for real: a small TCP
proxy (written below) that holds back or cuts the server's bytes, a server that never
answers, a server with a password, and a SIGSTOPped server. Tests that depend on the event
loop's transports run on both the stdlib loop and uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
import uvloop

from aioqueue.broker._resp import (
    RespArgumentError,
    RespConnection,
    RespError,
    RespTimeoutError,
    pack,
)
from aioqueue.testing import RedisServer

LOOPS = ["asyncio", "uvloop"]


def run_on(loop: str, main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main`` on a fresh stdlib or uvloop event loop."""
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())  # type: ignore[arg-type]


@contextlib.contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """Collect what the loop would log (e.g. "Future exception was never retrieved")."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
        gc.collect()  # unretrieved futures complain when they are collected
    finally:
        loop.set_exception_handler(previous)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Proxy:
    """A TCP proxy in front of Redis that can hold back, or cut, what the server sends.

    ``release`` (an event) gates server-to-client bytes; ``cut_after()`` is asked once per
    connection for a byte budget of server-to-client data, after which the connection is
    closed (FIN or RST, at random) part-way through whatever reply is in flight.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.release = asyncio.Event()
        self.release.set()
        self.cut_after: Callable[[], int | None] = lambda: None
        #: Client-to-server bytes per second, or None for as fast as they come.
        self.upload_rate: float | None = None
        #: Small receive buffers for new client connections (no loopback autotuning).
        self.small_buffers = False
        self.clients: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.accepted = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _link(self, client_in: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.clients.add(client)
        if self.small_buffers:
            sock = client.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        upstream: asyncio.StreamWriter | None = None
        budget = self.cut_after()
        try:
            server_in, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            to_server = asyncio.create_task(self._pump_up(client_in, upstream))
            to_client = asyncio.create_task(self._pump_down(server_in, client, budget))
            self.tasks |= {to_server, to_client}
            await asyncio.wait({to_server, to_client}, return_when=asyncio.FIRST_COMPLETED)
            for task in (to_server, to_client):
                task.cancel()
            await asyncio.gather(to_server, to_client, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(client)
            client.transport.abort()
            if upstream is not None:
                upstream.transport.abort()

    async def _pump_up(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
            if self.upload_rate is not None:
                await asyncio.sleep(len(data) / self.upload_rate)

    async def _pump_down(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, budget: int | None
    ) -> None:
        while data := await source.read(65536):
            await self.release.wait()
            if budget is not None and len(data) >= budget:
                sink.write(data[:budget])
                if random.random() < 0.5:
                    sink.close()  # FIN after the partial reply
                else:
                    sink.transport.abort()  # RST
                return
            if budget is not None:
                budget -= len(data)
            sink.write(data)
            await sink.drain()

    def drop_all(self) -> None:
        for client in list(self.clients):
            client.transport.abort()

    async def stop(self) -> None:
        self.server.close()
        self.drop_all()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


class SilentServer:
    """Accepts connections and reads them, never answers; ``drop_all`` hangs up on them."""

    def __init__(self, reply: Callable[[bytes], bytes] = lambda _data: b"") -> None:
        self.reply = reply
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while data := await reader.read(65536):
                writer.write(self.reply(data))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.writers.discard(writer)
            writer.transport.abort()

    def send_all(self, data: bytes) -> None:
        for writer in self.writers:
            writer.write(data)

    async def stop(self) -> None:
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()


@pytest.fixture
async def conn(redis_server: RedisServer, redis_url: str) -> AsyncIterator[RespConnection]:
    connection = RespConnection(host="127.0.0.1", port=redis_server.port)
    yield connection
    await connection.close()


@pytest.fixture
def private_server() -> Iterator[RedisServer]:
    """A server of this test's own, for faults that must not touch the session server."""
    with RedisServer() as server:
        yield server


# -- ordering ------------------------------------------------------------------------------
async def test_concurrent_callers_during_connect_get_their_own_replies(
    conn: RespConnection,
) -> None:
    # All of these start before the socket exists: they share one connect and one write.
    replies = await asyncio.gather(*(conn.execute("ECHO", str(i)) for i in range(300)))
    assert replies == [str(i).encode() for i in range(300)]


async def test_an_error_reply_does_not_shift_later_replies(conn: RespConnection) -> None:
    await conn.execute("SET", "k", "v")
    results = await asyncio.gather(
        conn.execute("ECHO", "a"),
        conn.execute("LPUSH", "k", "x"),  # WRONGTYPE
        conn.execute("ECHO", "b"),
        return_exceptions=True,
    )
    assert results[0] == b"a" and results[2] == b"b"
    assert isinstance(results[1], RespError) and "WRONGTYPE" in str(results[1])


async def test_execute_many_keeps_order_and_raises_the_first_error(
    conn: RespConnection,
) -> None:
    assert await conn.execute_many([("ECHO", "1"), ("ECHO", "2")]) == [b"1", b"2"]
    await conn.execute("SET", "str", "v")
    with loop_errors() as errors, pytest.raises(RespError, match="WRONGTYPE"):
        await conn.execute_many(
            [("ECHO", "1"), ("LPUSH", "str", "x"), ("LPUSH", "str", "y"), ("ECHO", "3")]
        )
    assert errors == []  # the second error reply was retrieved too, not left to be logged
    assert await conn.execute("ECHO", "after") == b"after"


async def test_reconnects_after_the_server_drops_it(conn: RespConnection,
                                                     redis_server: RedisServer) -> None:
    my_id = await conn.client_id()
    assert redis_server.command("CLIENT", "KILL", "ID", str(my_id)) == b":1"
    with anyio.fail_after(5):
        while True:
            try:
                assert await conn.execute("ECHO", "back") == b"back"
                break
            except ConnectionError:
                continue  # the command in flight when the socket died fails; the next reconnects
    assert await conn.client_id() != my_id


async def test_evalsha_loads_a_script_once(conn: RespConnection) -> None:
    script = "return ARGV[1] .. '!'"
    sha = hashlib.sha1(script.encode()).hexdigest()
    await conn.execute("SCRIPT", "FLUSH")
    assert await conn.evalsha(script, sha, [], ["hi"]) == b"hi!"
    assert await conn.execute("SCRIPT", "EXISTS", sha) == [1]


# -- B1: arguments that cannot be packed ---------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "type_name"),
    [("\udc80", "str"), (None, "NoneType"), (True, "bool"), (bytearray(b"x"), "bytearray"),
     ([1], "list")],
)
async def test_an_unpackable_argument_is_refused_at_the_call(
    conn: RespConnection, bad: object, type_name: str
) -> None:
    await conn.execute("SET", "a", "1")
    with pytest.raises(RespArgumentError) as caught:
        await conn.execute("GET", "a", bad)
    message = str(caught.value)
    assert "'GET'" in message and "argument 2" in message and type_name in message
    assert isinstance(caught.value, ValueError)
    # Nothing was queued for it: the next callers get their own replies.
    assert await conn.execute("GET", "a") == b"1"
    assert await conn.execute("ECHO", "mine") == b"mine"


async def test_large_arguments_are_framed_exactly_as_hiredis_frames_them(
    conn: RespConnection,
) -> None:
    # Large bytes arguments skip hiredis's packer (slow for megabytes): same bytes on the
    # wire, whatever the other arguments are, and Redis reads them back intact.
    import hiredis

    big = os.urandom(1 << 20)
    for args in [("SET", "big", big), ("EVALSHA", "f" * 40, 2, "k1", "k2", big, 1.5, "é",
                                          b"small", memoryview(b"view"), -7)]:
        assert pack(args) == hiredis.pack_command(args), args[0]
    assert await conn.execute("SET", "big", big) == b"OK"
    assert await conn.execute("GET", "big") == big
    # A batch that large goes out as parts (not joined), in order with what surrounds it.
    replies = await asyncio.gather(
        conn.execute("ECHO", "before"),
        conn.execute_many([("SET", "big1", big), ("ECHO", "inside"), ("SET", "big2", big)]),
        conn.execute("ECHO", "after"))
    assert replies == [b"before", [b"OK", b"inside", b"OK"], b"after"]
    assert await conn.execute("MGET", "big1", "big2") == [big, big]
    with pytest.raises(RespArgumentError, match="argument 3 is a object"):
        await conn.execute("SET", "big", big, object())
    assert await conn.execute("ECHO", "still in step") == b"still in step"


async def test_an_empty_command_is_refused(conn: RespConnection) -> None:
    # Redis answers "*0\r\n" with nothing at all, which would shift every later reply.
    with pytest.raises(RespArgumentError, match="empty"):
        await conn.execute()
    with pytest.raises(RespArgumentError, match="empty"):
        await conn.execute_many([("ECHO", "x"), ()])
    assert await conn.execute("ECHO", "still in step") == b"still in step"


async def test_execute_many_with_an_unpackable_command_sends_none_of_them(
    conn: RespConnection,
) -> None:
    with pytest.raises(RespArgumentError, match=r"command 1 of 3: cannot send 'SET'"):
        await conn.execute_many([("SET", "x", "1"), ("SET", "y", None), ("SET", "z", "3")])
    assert await conn.execute("MGET", "x", "y", "z") == [None, None, None]


async def test_the_error_does_not_show_an_unencodable_secret(conn: RespConnection) -> None:
    with pytest.raises(RespArgumentError) as caught:
        await conn.execute("AUTH", "user", "pass\udc80word")
    assert "pass" not in str(caught.value) and "argument 2" in str(caught.value)
    with pytest.raises(RespArgumentError):
        RespConnection(password="\udc80")  # the handshake is checked up front


async def test_fuzz_unpackable_calls_interleaved_with_good_ones(conn: RespConnection) -> None:
    rng = random.Random(1)
    bad_values: list[object] = ["\ud800", None, False, bytearray(b"b"), [b"l"], {"d": 1}]
    with anyio.fail_after(5):
        for round_ in range(30):
            calls: list[tuple[bool, Awaitable[Any]]] = []
            for i in range(60):
                token = f"{round_}-{i}".encode()
                kind = rng.random()
                if kind < 0.3:
                    args: list[Any] = ["ECHO", token]
                    args.insert(rng.randrange(1, 3), rng.choice(bad_values))
                    calls.append((False, conn.execute(*args)))
                elif kind < 0.4:
                    commands: list[tuple[Any, ...]] = [("ECHO", token),
                                                       ("ECHO", rng.choice(bad_values))]
                    calls.append((False, conn.execute_many(commands)))
                elif kind < 0.5:
                    calls.append((True, conn.execute_many([("ECHO", token), ("ECHO", b"2")])))
                else:
                    calls.append((True, conn.execute("ECHO", token)))
            results = await asyncio.gather(*(c for _, c in calls), return_exceptions=True)
            for i, ((good, _), result) in enumerate(zip(calls, results, strict=True)):
                token = f"{round_}-{i}".encode()
                if not good:
                    assert isinstance(result, RespArgumentError), result
                elif isinstance(result, list):
                    assert result == [token, b"2"]
                else:
                    assert result == token


# -- random concurrency with cancellations -------------------------------------------------
async def _fuzz_round(conn: RespConnection, rng: random.Random, round_: int,
                      values: dict[str, bytes]) -> tuple[int, int]:
    """One burst of random commands, some cancelled; every finished one is checked."""
    expected: list[Any] = []
    tasks: list[asyncio.Task[Any]] = []
    for i in range(60):
        token = f"{round_}:{i}:".encode() + rng.randbytes(rng.choice((0, 10, 1000)))
        if rng.random() < 0.03:
            token += rng.randbytes(100_000)
        kind = rng.random()
        want: Any
        if kind < 0.55:
            coro, want = conn.execute("ECHO", token), token
        elif kind < 0.65:
            coro, want = conn.execute("LPUSH", "string-key", token), RespError
        elif kind < 0.8:
            keys = rng.sample(sorted(values), 3)
            coro, want = conn.execute("MGET", *keys, "missing"), [*map(values.get, keys), None]
        elif kind < 0.9:
            coro, want = conn.execute_many([("ECHO", token), ("ECHO", b"x")]), [token, b"x"]
        else:
            coro = conn.execute_many([("ECHO", token), ("LPUSH", "string-key", "x")])
            want = RespError
        tasks.append(asyncio.ensure_future(coro))
        expected.append(want)
    for _ in range(rng.randrange(3)):
        await asyncio.sleep(0)
    for task in rng.sample(tasks, rng.randrange(15)):
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    done = cancelled = 0
    for task, want, result in zip(tasks, expected, results, strict=True):
        if task.cancelled():
            cancelled += 1
        elif want is RespError:
            assert isinstance(result, RespError) and "WRONGTYPE" in str(result)
            done += 1
        else:
            assert result == want
            done += 1
    return done, cancelled


@pytest.mark.parametrize("loop", LOOPS)
def test_fuzz_concurrent_commands_with_cancellations(
    loop: str, redis_server: RedisServer, redis_url: str
) -> None:
    async def main() -> None:
        rng = random.Random(loop)
        conn = RespConnection(host="127.0.0.1", port=redis_server.port)
        values = {f"key{i}": rng.randbytes(rng.randrange(50)) for i in range(20)}
        try:
            with loop_errors() as errors, anyio.fail_after(10):
                await conn.execute("SET", "string-key", "v")
                await conn.execute("MSET", *(x for kv in values.items() for x in kv))
                done = cancelled = 0
                for round_ in range(200):
                    d, c = await _fuzz_round(conn, rng, round_, values)
                    done, cancelled = done + d, cancelled + c
                assert done > 8000 and cancelled > 500
                assert await conn.execute("ECHO", "last") == b"last"
        finally:
            await conn.close()
        assert errors == []

    run_on(loop, main)


# -- the connection dies part-way through replies ------------------------------------------
@pytest.mark.parametrize("loop", LOOPS)
def test_fuzz_disconnects_mid_reply(loop: str, redis_server: RedisServer,
                                    redis_url: str) -> None:
    async def main() -> None:
        rng = random.Random(loop)
        proxy = Proxy(redis_server.port)
        port = await proxy.start()
        proxy.cut_after = lambda: rng.randrange(30_000)
        conn = RespConnection(host="127.0.0.1", port=port, read_timeout_s=5)
        outcomes = {"ok": 0, "lost": 0}

        async def caller(n: int) -> None:
            for i in range(100):
                token = f"{n}:{i}:".encode() + rng.randbytes(rng.choice((10, 3000, 40_000)))
                try:
                    if i % 5 == 4:
                        got = await conn.execute_many([("ECHO", token), ("ECHO", b"!")])
                        assert got == [token, b"!"]
                    else:
                        assert await conn.execute("ECHO", token) == token
                    outcomes["ok"] += 1
                except ConnectionError:
                    outcomes["lost"] += 1

        try:
            with loop_errors() as errors, anyio.fail_after(15):
                await asyncio.gather(*(caller(n) for n in range(20)))
                assert outcomes["lost"] > 50 and outcomes["ok"] > 50, outcomes
                assert proxy.accepted > 10
                # Once the network behaves, so does the connection.
                proxy.cut_after = lambda: None
                tokens = [str(i).encode() * 100 for i in range(200)]
                for attempt in range(3):
                    try:
                        got = await asyncio.gather(*(conn.execute("ECHO", t) for t in tokens))
                        break
                    except ConnectionError:
                        # The socket current when the cuts stopped may still be cut once.
                        assert attempt < 2
                assert got == tokens
        finally:
            await conn.close()
            await proxy.stop()
        assert errors == []

    run_on(loop, main)


async def test_a_reply_nobody_asked_for_closes_the_connection() -> None:
    fake = SilentServer(reply=lambda data: b"+PONG\r\n" * data.count(b"PING"))
    port = await fake.start()
    conn = RespConnection(host="127.0.0.1", port=port)
    try:
        with anyio.fail_after(5):
            assert await conn.execute("PING") == b"PONG"
            assert conn.connected
            fake.send_all(b"+SURPRISE\r\n")
            while conn.connected:
                await asyncio.sleep(0.01)
            assert await conn.execute("PING") == b"PONG"  # on a new socket
    finally:
        await conn.close()
        await fake.stop()


async def test_garbage_from_the_server_fails_the_waiters_and_closes() -> None:
    fake = SilentServer(reply=lambda _data: b"this is not RESP\r\n")
    port = await fake.start()
    conn = RespConnection(host="127.0.0.1", port=port)
    try:
        with anyio.fail_after(5), pytest.raises(ConnectionError, match="unparseable"):
            await conn.execute("PING")
        assert not conn.connected
    finally:
        await conn.close()
        await fake.stop()


# -- B5: read timeout ----------------------------------------------------------------------
async def test_a_stopped_server_times_out_every_waiter(private_server: RedisServer) -> None:
    assert private_server.process is not None
    pid = private_server.process.pid
    conn = RespConnection(host="127.0.0.1", port=private_server.port, read_timeout_s=0.5)
    try:
        old_id = await conn.client_id()
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with anyio.fail_after(5):
                results = await asyncio.gather(
                    *(conn.execute("ECHO", str(i)) for i in range(10)), return_exceptions=True
                )
            elapsed = time.monotonic() - started
            assert all(isinstance(r, RespTimeoutError) for r in results), results
            assert isinstance(results[0], ConnectionError)
            assert 0.45 <= elapsed <= 2.0, elapsed
            assert not conn.connected  # closed, never reused
        finally:
            os.kill(pid, signal.SIGCONT)
        with anyio.fail_after(5):
            assert await conn.execute("ECHO", "again") == b"again"
            assert await conn.client_id() != old_id
    finally:
        await conn.close()


async def test_the_read_timeout_counts_silence_not_idleness_or_busy_time(
    redis_server: RedisServer, redis_url: str
) -> None:
    conn = RespConnection(host="127.0.0.1", port=redis_server.port, read_timeout_s=0.5)
    try:
        with anyio.fail_after(10):
            assert await conn.execute("ECHO", "a") == b"a"
            await asyncio.sleep(0.7)  # idle for longer than the timeout: not a stall
            assert await conn.execute("ECHO", "b") == b"b"
            # Steady traffic for well over the timeout: replies keep coming, no stall.
            started = time.monotonic()
            while time.monotonic() - started < 1.2:
                await asyncio.gather(*(conn.execute("ECHO", "c") for _ in range(50)))
            # A blocking command outlasting the timeout is a stall to this connection...
            with pytest.raises(RespTimeoutError):
                await conn.execute("BLPOP", "nothing", "1")
    finally:
        await conn.close()
    # ...so blocking connections allow for their longest block on top of the timeout.
    blocking = RespConnection(host="127.0.0.1", port=redis_server.port, read_timeout_s=0.5 + 1)
    try:
        with anyio.fail_after(5):
            assert await blocking.execute("BLPOP", "nothing", "1") is None
    finally:
        await blocking.close()


async def test_a_slow_upload_of_a_big_command_is_progress_not_a_stall(
    redis_server: RedisServer, redis_url: str
) -> None:
    proxy = Proxy(redis_server.port)
    proxy.small_buffers = True
    port = await proxy.start()
    conn = RespConnection(host="127.0.0.1", port=port, read_timeout_s=0.3)
    try:
        assert await conn.execute("PING") == b"PONG"
        # Small kernel buffers on both ends (on loopback they grow to tens of MB, which a
        # real network path does not hold), so the backlog stays where the watchdog sees it.
        assert conn._protocol is not None and conn._protocol.transport is not None
        sock = conn._protocol.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        # 4 MB at 3 MB/s: Redis has the whole command only after about 1.3 s.
        proxy.upload_rate = 3e6
        big = random.randbytes(4_000_000)
        started = time.monotonic()
        with anyio.fail_after(20):
            assert await conn.execute("SET", "big", big) == b"OK"
        assert time.monotonic() - started > 0.6  # the upload really did outlast the timeout
        # An upload that stops moving is a stall like any other, though.
        proxy.upload_rate = 1.0  # one more chunk, then the proxy stops reading for good
        started = time.monotonic()
        with anyio.fail_after(10), pytest.raises(RespTimeoutError):
            await conn.execute("SET", "big", big)
        assert time.monotonic() - started < 2.0
    finally:
        await conn.close()
        await proxy.stop()


async def test_a_timed_out_socket_is_closed_on_the_server_too(
    redis_server: RedisServer, redis_url: str
) -> None:
    conn = RespConnection(host="127.0.0.1", port=redis_server.port, read_timeout_s=0.2)
    admin = RespConnection(host="127.0.0.1", port=redis_server.port)
    try:
        old_id = await conn.client_id()
        with anyio.fail_after(5):
            with pytest.raises(RespTimeoutError):
                await conn.execute("BLPOP", "nothing", "2")
            while f"id={old_id} ".encode() in await admin.execute("CLIENT", "LIST"):
                await asyncio.sleep(0.02)
    finally:
        await conn.close()
        await admin.close()


async def test_tcp_sockets_get_keepalive_and_user_timeout(conn: RespConnection) -> None:
    await conn.execute("PING")
    assert conn._protocol is not None and conn._protocol.transport is not None
    sock = conn._protocol.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 15
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000


# -- B6: a connect abandoned by its caller -------------------------------------------------
@pytest.mark.parametrize("loop", LOOPS)
def test_a_connect_whose_caller_gave_up_is_not_trusted_after_its_socket_dies(
    loop: str, redis_server: RedisServer, redis_url: str
) -> None:
    async def main() -> None:
        proxy = Proxy(redis_server.port)
        port = await proxy.start()
        proxy.release.clear()  # the handshake's reply is held back: the connect stalls
        conn = RespConnection(host="127.0.0.1", port=port, db=1, connect_timeout_s=10)
        try:
            with anyio.move_on_after(0.3) as scope:
                await conn.execute("PING")
            assert scope.cancelled_caught  # the first caller gave up mid-handshake
            proxy.release.set()  # the handshake completes with nobody waiting for it
            with anyio.fail_after(5):
                while not conn.connected:
                    await asyncio.sleep(0.01)
                proxy.drop_all()  # and then its socket dies while idle
                while conn.connected:
                    await asyncio.sleep(0.01)
                assert await conn.execute("PING") == b"PONG"  # a new socket
                assert proxy.accepted == 2
        finally:
            await conn.close()
            await proxy.stop()

    run_on(loop, main)


async def test_close_during_a_connect_leaves_no_socket_behind() -> None:
    silent = SilentServer()
    port = await silent.start()
    conn = RespConnection(host="127.0.0.1", port=port, password="p", connect_timeout_s=10)
    try:
        caller = asyncio.ensure_future(conn.execute("PING"))
        with anyio.fail_after(5):
            while not silent.writers:
                await asyncio.sleep(0.01)
            await conn.close()
            with pytest.raises(ConnectionError):
                await caller
            while silent.writers:  # the server sees the socket go
                await asyncio.sleep(0.01)
    finally:
        await conn.close()
        await silent.stop()


# -- B7: failed handshakes close their sockets ---------------------------------------------
class PasswordServer(RedisServer):
    """A redis-server with ``requirepass secret``; its readiness check logs in first."""

    def __init__(self) -> None:
        super().__init__(extra_args=("--requirepass", "secret"))

    def command(self, *parts: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as link:
            link.sendall(pack(("AUTH", "secret")) + pack(parts))
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = link.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.split(b"\r\n")[1]


@pytest.fixture(scope="module")
def password_server() -> Iterator[PasswordServer]:
    server = PasswordServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


async def _client_count(admin: RespConnection) -> int:
    return len((await admin.execute("CLIENT", "LIST")).splitlines())


async def test_a_refused_password_closes_its_socket(password_server: PasswordServer) -> None:
    admin = RespConnection(host="127.0.0.1", port=password_server.port, password="secret")
    wrong = RespConnection(host="127.0.0.1", port=password_server.port, password="wrong")
    try:
        clients_before = await _client_count(admin)
        fds_before = open_fds()
        for _ in range(50):
            with pytest.raises(RespError, match="WRONGPASS") as caught:
                await wrong.execute("PING")
        assert "AUTH" in "".join(caught.value.__notes__)
        await asyncio.sleep(0)  # the last abort's close runs on the next loop iteration
        assert open_fds() <= fds_before + 2
        with anyio.fail_after(5):
            while await _client_count(admin) > clients_before:
                await asyncio.sleep(0.02)  # the server notices the last ones shortly
        assert not wrong.connected
        good = RespConnection(host="127.0.0.1", port=password_server.port, password="secret",
                              client_name="after-rotation")
        assert await good.execute("CLIENT", "GETNAME") == b"after-rotation"
        await good.close()
    finally:
        await wrong.close()
        await admin.close()


async def test_a_refused_select_closes_its_socket(
    conn: RespConnection, redis_server: RedisServer
) -> None:
    clients_before = await _client_count(conn)
    bad_db = RespConnection(host="127.0.0.1", port=redis_server.port, db=99)
    try:
        for _ in range(20):
            with pytest.raises(RespError, match="DB index is out of range"):
                await bad_db.execute("PING")
        with anyio.fail_after(5):
            while await _client_count(conn) > clients_before:
                await asyncio.sleep(0.02)
    finally:
        await bad_db.close()


async def test_a_timed_out_handshake_closes_its_socket(password_server: PasswordServer) -> None:
    proxy = Proxy(password_server.port)
    port = await proxy.start()
    proxy.release.clear()  # AUTH goes through; its reply never comes back
    conn = RespConnection(host="127.0.0.1", port=port, password="secret", connect_timeout_s=0.2)
    try:
        fds_before = open_fds()
        for _ in range(10):
            started = time.monotonic()
            with anyio.fail_after(5), pytest.raises(RespTimeoutError, match="connecting"):
                await conn.execute("PING")
            assert time.monotonic() - started < 1.5
        with anyio.fail_after(5):
            while proxy.clients:  # the proxy sees every client socket closed
                await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        assert open_fds() <= fds_before + 2
        proxy.release.set()
        with anyio.fail_after(5):
            assert await conn.execute("PING") == b"PONG"
    finally:
        await conn.close()
        await proxy.stop()


# -- handshake options ---------------------------------------------------------------------
async def test_client_name_is_set_on_every_connect(
    redis_server: RedisServer, redis_url: str
) -> None:
    conn = RespConnection(host="127.0.0.1", port=redis_server.port, db=2,
                          client_name="aioqueue-test")
    try:
        assert await conn.execute("CLIENT", "GETNAME") == b"aioqueue-test"
        first_id = await conn.client_id()
        assert redis_server.command("CLIENT", "KILL", "ID", str(first_id)) == b":1"
        with anyio.fail_after(5):
            while True:
                try:
                    assert await conn.execute("CLIENT", "GETNAME") == b"aioqueue-test"
                    break
                except ConnectionError:
                    continue
        await conn.execute("SET", "in-db-2", "1")
        assert redis_server.command("EXISTS", "in-db-2") == b":0"  # db 0 has no such key
    finally:
        await conn.close()
