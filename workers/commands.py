"""The worker's round trips of several commands (the online reply, a job's end, the heartbeat):
queued as on redis-py's pipeline, sent leaner.

redis-py's asyncio pipeline packs each command in Python (~3 µs a command and ~0.5 an argument,
13 µs for the reply's four) and reads each reply through three layers of calls and its
response callbacks, which these round trips do not need: they look at errors only. Here hiredis
packs the commands (in C) and their replies are read straight off one connection of the
client's pool, under the client's retry as a pipeline is (a dropped connection: closed, and
every command sent again: ``contract.connection.on_pooled_connection``); 56-62 → 34-44 µs of
CPU for the online reply, its job's end and park, in process. A cluster client sends them
through its own pipeline, which routes each command to the master of its slot.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import DataAccessCommands
from redis.exceptions import ResponseError

from contract.connection import on_pooled_connection, packs


class Commands(DataAccessCommands):
    """Commands queued for one round trip (``round_trip``), through redis-py's command methods
    (``set``, ``zadd``, ``hset`` ...) or ``execute_command``."""

    connection_pool: Any = None  # the command methods' protocol names it; they never use it

    def __init__(self) -> None:
        self.queued: list[tuple[Any, ...]] = []

    def __len__(self) -> int:
        return len(self.queued)

    def execute_command(self, *args: Any, **options: Any) -> None:
        # options: redis-py's response callbacks' and client cache's, unused here
        self.queued.append(args)


async def round_trip(redis: Redis, commands: Commands) -> list[Any]:
    """Send ``commands`` in one write and read every reply, in order: a command's error
    (ResponseError) as its reply, not raised; a connection error, once the client's retries
    are spent, raised."""
    if not packs(redis):  # a cluster's: its pipeline sends each command to its slot's master
        async with redis.pipeline(transaction=False) as pipe:
            for args in commands.queued:
                pipe.execute_command(*args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
            return results
    packed = [hiredis.pack_command(args) for args in commands.queued]
    return await on_pooled_connection(redis, lambda connection: _exchange(connection, packed))


async def _exchange(connection: AbstractConnection, packed: list[bytes]) -> list[Any]:
    # no health check (a PING first on a connection idle past its interval): a dropped one
    # fails the write or the read, and the round trip is sent again on a new one
    await connection.send_packed_command(packed, check_health=False)
    results: list[Any] = []
    for _ in packed:
        try:
            results.append(await connection.read_response())
        except ResponseError as error:
            results.append(error)
    return results
