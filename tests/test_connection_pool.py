"""contract/connection.py's clients lend a pooled connection without polling it for unread data
(redis-py's ``can_read_destructive``): what that check was for, across a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from redis import Redis

from contract.connection import connect

# a script that holds the server for 0.3 s, then answers
SLOW = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 300000
return 'slow'
"""


async def test_a_cancelled_command_leaves_no_reply_for_the_next_one(redis_url: str) -> None:
    """The slow script's reply comes after its caller gave up: the next command, on the
    same client (one connection, lent again), reads its own reply, not that one."""
    client = connect(redis_url)
    try:
        await client.set("lent", "mine")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.eval(SLOW, 0)
        assert await client.get("lent") == b"mine"
        assert await client.eval(SLOW, 0) == b"slow"  # and the server took no offence
    finally:
        await client.aclose()


async def test_a_connection_the_server_closed_in_the_pool_is_replaced(
    redis_url: str, redis: Redis
) -> None:
    client = connect(redis_url)
    try:
        await client.set("lent", "again")
        pooled = await client.client_id()
        assert redis.client_kill_filter(_id=pooled) == 1
        assert await client.get("lent") == b"again"
        assert await client.client_id() != pooled
    finally:
        await client.aclose()
