"""contract/channels.py's Subscriber handing messages to a callback from its reading task, on
one Redis and on a Redis Cluster (channels of several slots and masters)."""

from __future__ import annotations

import asyncio

import pytest
from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError

from contract import keys
from contract.channels import Subscriber, publish
from contract.connection import connect

TOPOLOGIES = ("single", "cluster")

POOLS = ("b", "f", "c")
"""Pools b and f share the cluster's first master, c is on the second."""


async def test_a_callback_takes_the_messages_read_before_it_then_the_later_ones(
    redis_url: str,
) -> None:
    client = connect(redis_url)
    names = [keys.wake(pool, 0) for pool in POOLS]
    heard: list[tuple[bytes, bytes]] = []
    every = asyncio.Event()

    def deliver(channel: bytes, data: bytes) -> None:
        heard.append((channel, data))
        if len(heard) == 2 * len(names):
            every.set()

    try:
        async with Subscriber(client) as subscriber:
            await subscriber.subscribe(*names)
            for name in names:
                await publish(client, name, "before")
            async with asyncio.timeout(10):
                # read by the reader, not yet taken: nothing signals it but the queue
                while subscriber._messages.qsize() < len(names):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            subscriber.deliver_to(deliver)
            assert len(heard) == len(names)
            for name in names:
                await publish(client, name, "after")
            async with asyncio.timeout(10):
                await every.wait()
        assert sorted(heard) == sorted(
            (name.encode(), when) for name in names for when in (b"before", b"after")
        )
        for name in names:  # each channel's messages in the order they were published
            assert [d for c, d in heard if c == name.encode()] == [b"before", b"after"]
    finally:
        await client.aclose()


async def test_an_error_of_the_callback_ends_the_subscription_and_reaches_the_caller(
    redis_url: str,
) -> None:
    client = connect(redis_url)
    name = keys.wake("b", 0)

    def deliver(channel: bytes, data: bytes) -> None:
        raise LookupError(data.decode())

    try:
        async with Subscriber(client) as subscriber:
            await subscriber.subscribe(name)
            subscriber.deliver_to(deliver)
            await publish(client, name, "refused")
            with pytest.raises(LookupError, match="refused"):
                async with asyncio.timeout(10):
                    await subscriber.until_lost()
    finally:
        await client.aclose()


async def test_a_dropped_connection_reaches_the_caller_of_until_lost(
    redis_url: str, redis: Redis
) -> None:
    """The caller learns of the gap, and subscribes again (what the hub and the worker do)."""
    client = connect(redis_url)
    name = keys.wake("c", 0)
    every = {"target_nodes": RedisCluster.ALL_NODES} if isinstance(redis, RedisCluster) else {}
    try:
        async with Subscriber(client) as subscriber:
            await subscriber.subscribe(name)
            subscriber.deliver_to(lambda channel, data: None)
            redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub", **every)
            with pytest.raises(ConnectionError):
                async with asyncio.timeout(10):
                    await subscriber.until_lost()
    finally:
        await client.aclose()
