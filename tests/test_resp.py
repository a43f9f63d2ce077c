"""The hot-path Redis connection: replies always reach the caller that asked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import pytest

from aioqueue.broker._resp import RespConnection, RespError
from aioqueue.testing import RedisServer


@pytest.fixture
async def conn(redis_server: RedisServer, redis_url: str) -> AsyncIterator[RespConnection]:
    connection = RespConnection(host="127.0.0.1", port=redis_server.port)
    yield connection
    await connection.close()


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
    with pytest.raises(RespError, match="WRONGTYPE"):
        await conn.execute_many([("ECHO", "1"), ("LPUSH", "str", "x"), ("ECHO", "3")])
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
    import hashlib

    script = "return ARGV[1] .. '!'"
    sha = hashlib.sha1(script.encode()).hexdigest()
    await conn.execute("SCRIPT", "FLUSH")
    assert await conn.evalsha(script, sha, [], ["hi"]) == b"hi!"
    assert await conn.execute("SCRIPT", "EXISTS", sha) == [1]
