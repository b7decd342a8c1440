"""The worker's round trips (``workers/commands.py``) against the session's redis-server: every
reply in order, a command's error as its reply, and a connection the server dropped sent again
under the client's retry, as redis-py's pipeline does.
"""

from __future__ import annotations

import asyncio

import pytest
from redis import Redis
from redis.exceptions import ResponseError
from stack import RedisServer

from contract.connection import connect
from workers.commands import Commands, round_trip


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    return redis_server.database()


def test_every_reply_comes_back_in_order_and_an_error_is_a_reply(url: str) -> None:
    async def check() -> None:
        redis = connect(url)
        try:
            commands = Commands()
            commands.set("text", "a", px=60_000)
            commands.hset("text", "field", "1")  # a string, not a hash: WRONGTYPE
            commands.execute_command("ZADD", "queue", 5, "job")
            commands.zrem("queue", "nothing")
            results = await round_trip(redis, commands)
            assert results[0] == b"OK"  # the bare reply: no redis-py callback
            assert isinstance(results[1], ResponseError) and "WRONGTYPE" in str(results[1])
            assert results[2:] == [1, 0]
            assert await redis.zscore("queue", "job") == 5  # the commands after the error ran
        finally:
            await redis.aclose()

    asyncio.run(check())


def test_a_connection_the_server_dropped_is_sent_again(url: str) -> None:
    async def check() -> None:
        redis = connect(url)
        try:
            first = Commands()
            first.execute_command("PING")
            assert await round_trip(redis, first) == [b"PONG"]
            # the pooled connection dies while idle (a restart, a failover)
            with Redis.from_url(url) as admin:
                assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
            again = Commands()
            again.execute_command("INCR", "counter")
            assert await round_trip(redis, again) == [1]
            assert await redis.get("counter") == b"1"
        finally:
            await redis.aclose()

    asyncio.run(check())
