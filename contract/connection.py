"""Redis clients that ride out a short outage (a restart, a Sentinel failover) by retrying.

Every process builds its clients here, from ``INFERHUB_REDIS_URL``: one Redis
(``redis://host:port/db``, ``rediss://``, ``unix://``), a master watched by Sentinel
(``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``, with
``?sentinel_password=`` when the sentinels ask for one), or a Redis Cluster
(``redis+cluster://[[user]:password@]host:port[,host:port...]/``: any of its nodes, it finds the
others). A Sentinel client asks the sentinels where the master is each time it connects, and
drops a connection to a master that was demoted, so after a failover the next connection reaches
the new master by itself. A cluster client sends each command to the master of its keys' slot
and follows MOVED and ASK (a resharding, a failover); every key of a pool carries its hash tag
(contract/keys.py), so one script's keys are on one node.

A command that meets a dropped connection is retried with backoff for a few seconds before the
error reaches the caller, so a Redis restart or a failover costs latency, not failed requests.
Every state change is a guarded Lua script, so a retried command cannot end a job twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.cluster
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, RedisError, TimeoutError
from redis.sentinel import Sentinel as BlockingSentinel

# OSError too: a refused connect (Redis restarting) is raised as a bare OSError, which redis-py
# retries only when told to
RETRY_ON = [ConnectionError, TimeoutError, BusyLoadingError, OSError]

T = TypeVar("T")

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME, CLUSTER_SCHEME)
SENTINEL_PORT = 26379
CLUSTER_PORT = 6379
SENTINEL_FORM = "redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]"
CLUSTER_FORM = "redis+cluster://[[user]:password@]host:port[,host:port...]/"


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names: the sentinels, the master's service name, the
    database, and the credentials of the master and of the sentinels."""

    nodes: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def sentinel_kwargs(self) -> dict[str, Any]:
        # a sentinel that does not answer must not hold up the search for the master
        kwargs: dict[str, Any] = {"socket_connect_timeout": 1, "socket_timeout": 1}
        if self.sentinel_password is not None:
            kwargs |= {"username": self.sentinel_username, "password": self.sentinel_password}
        return kwargs

    def master_kwargs(self) -> dict[str, Any]:
        return {"db": self.db, "username": self.username, "password": self.password}


def check_url(url: str) -> str:
    """``url`` if it is a Redis URL inferhub can use, else a ValueError saying what to fix."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(
            f"the Redis URL's scheme is {scheme or 'missing'!r}: use redis://host:port/db, "
            f"rediss://, unix://, {SENTINEL_FORM} or {CLUSTER_FORM}"
        )
    sentinel_target(url)
    cluster_target(url)
    return url


@dataclass(frozen=True)
class ClusterTarget:
    """What a ``redis+cluster://`` URL names: some of the cluster's nodes, and credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None


def cluster_target(url: str) -> ClusterTarget | None:
    """The Redis Cluster a ``redis+cluster://`` URL names (None for any other URL)."""
    parts = urlsplit(url)
    if parts.scheme != CLUSTER_SCHEME:
        return None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    if not hosts or parts.path.strip("/") or parts.query:
        # a cluster has database 0 only
        raise ValueError(f"a Redis Cluster URL is {CLUSTER_FORM}: got {_redacted(url)}")
    return ClusterTarget(
        nodes=tuple(_node(h, CLUSTER_PORT, "cluster node") for h in hosts.split(",")),
        username=unquote(username) or None,
        password=unquote(password) if userinfo else None,
    )


def sentinel_target(url: str) -> SentinelTarget | None:
    """The Sentinel deployment a ``redis+sentinel://`` URL names (None for any other URL)."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        return None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    path = [p for p in parts.path.split("/") if p]
    query = parse_qs(parts.query)
    unknown = set(query) - {"sentinel_username", "sentinel_password"}
    if not hosts or not 1 <= len(path) <= 2 or unknown:
        raise ValueError(
            f"a Sentinel URL is {SENTINEL_FORM} (?sentinel_password= when the sentinels "
            f"ask for one): got {_redacted(url)}"
        )
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"the database of a Sentinel URL is a number, got {path[1]!r}")
    return SentinelTarget(
        nodes=tuple(_node(h, SENTINEL_PORT, "sentinel") for h in hosts.split(",")),
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) if userinfo else None,
        sentinel_username=query.get("sentinel_username", [None])[0],
        sentinel_password=query.get("sentinel_password", [None])[0],
    )


def _node(text: str, default_port: int, what: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not colon:
        host, port = text, str(default_port)
    if not host or not port.isdigit():
        raise ValueError(f"a {what} is host:port, got {text!r}")
    return host.strip("[]"), int(port)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2], query="").geturl()


class _MasterConnection(SentinelManagedConnection):
    """A connection to the master that asks the sentinels where it is at every try: redis-py
    would retry the address it was given with the whole backoff (4 s) before asking again, so
    clients would keep knocking at a dead master for seconds after a failover."""

    async def connect_to(self, address: tuple[str, int]) -> None:
        patient, self.retry = self.retry, Retry(NoBackoff(), 0)
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self.retry = patient


class _Lending:
    """A connection pool that lends a connection without polling it first. redis-py's pool
    reads each connection it lends with a zero timeout (``can_read_destructive``: a task
    cancelled after a turn of the event loop, 10-15 µs of CPU on every command), to catch
    one given back with a reply unread. redis-py 5 closes a connection whose command was
    cancelled or failed between its send and its reply (``send_packed_command``,
    ``read_response``), so none comes back so, and its cluster client lends its connections
    unpolled. What the check also caught, a connection the server closed while it sat in the
    pool (a restart, a failover), fails its next command, which the client's retry sends
    again on a new connection after its first backoff: so only a client that retries lends
    unpolled."""

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        # opens a new or dropped connection; nothing on a live one
        await connection.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped

    # redis-py 5.3's, without its decorator that looks for deprecated arguments on every call
    # (a dict of them built and emptied each time: ~1 µs of each command's way); an earlier
    # 5.x has no such decorator, and its own is taken as it is
    get_connection = getattr(
        ConnectionPool.get_connection, "__wrapped__", ConnectionPool.get_connection
    )


class _MasterPool(SentinelConnectionPool):
    """The master's connections; closing the client closes the sentinels' too (redis-py
    leaves them open)."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # the client is closing, not following a new master
            for node in self.sentinel_manager.sentinels:
                await node.aclose()


class _LendingPool(_Lending, ConnectionPool):
    pass


class _LendingMasterPool(_Lending, _MasterPool):
    pass


def _retry() -> Retry:
    # 0.05 + 0.1 + 0.2 + 0.4 + 0.5 x 6: about 3.8 s of patience before an error surfaces
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=10)


def connect(url: str, *, retry: bool = True) -> Redis:
    """A client of ``url``'s Redis (of the master, for a Sentinel URL; of the cluster, for a
    cluster URL: a RedisCluster, which takes the commands inferhub sends as Redis does, but
    not ``pubsub``: see ``pubsub`` below). Without ``retry`` a dropped connection surfaces at
    once (a pub/sub reader must learn of its gap)."""
    options: dict[str, Any] = {"socket_connect_timeout": 2, "health_check_interval": 10}
    if retry:
        options |= {"retry": _retry(), "retry_on_error": RETRY_ON}
    cluster = cluster_target(url)
    if cluster is not None:
        options.pop("health_check_interval")  # a cluster node's connections take no such option
        nodes = [ClusterNode(host, port) for host, port in cluster.nodes]
        client = RedisCluster(
            startup_nodes=nodes, username=cluster.username, password=cluster.password, **options
        )
        return cast(Redis, client)  # the same commands; the types differ only in name
    target = sentinel_target(url)
    if target is None:
        if not retry:
            plain: Redis = Redis.from_url(url, **options)
            return plain
        return Redis.from_pool(_LendingPool.from_url(url, **options))
    sentinel = Sentinel(target.nodes, sentinel_kwargs=target.sentinel_kwargs())  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    master: Redis = sentinel.master_for(
        target.service,
        connection_pool_class=_LendingMasterPool if retry else _MasterPool,
        connection_class=_MasterConnection,
        **target.master_kwargs(),
        **options,
    )
    return master


def packs(client: Redis) -> bool:
    """Whether ``execute_packed`` can run the client's commands: a client of one Redis or of
    a Sentinel's master, on its pool (a cluster's picks a node per command)."""
    return isinstance(client, Redis) and not client.single_connection_client


async def execute_packed(client: Redis, command: bytes) -> Any:
    """The reply to a command packed already (RESP), run as ``Redis.execute_command`` runs
    one: on a connection of the client's pool, retried on the errors the client retries (the
    connection dropped first), an error reply raised. Without its packing of every argument
    on every call (for a hot script, ``contract/scripts.py``: 13 of the 25 µs that queueing
    an online batch took before Redis was asked). A client that ``packs`` only."""
    return await on_pooled_connection(client, lambda c: _send_and_read(c, command))


async def on_pooled_connection(
    client: Redis, exchange: Callable[[AbstractConnection], Awaitable[T]]
) -> T:
    """What ``exchange`` returns, run on a connection of the client's pool and retried on the
    errors the client retries (the connection dropped first): ``execute_packed``'s way, and
    the worker's round trips' (``workers/commands.py``). A client that ``packs`` only."""
    pool = client.connection_pool
    connection = await pool.get_connection()
    try:
        result: T = await connection.retry.call_with_retry(
            lambda: exchange(connection),
            lambda error: _dropped(connection, error),
        )
        return result
    finally:
        await pool.release(connection)


async def _send_and_read(connection: AbstractConnection, command: bytes) -> Any:
    await connection.send_packed_command(command)
    return await connection.read_response()


async def _dropped(connection: AbstractConnection, error: RedisError) -> None:
    """After a failed try, as redis-py's client does: the connection dropped (the retry opens
    a new one), the error raised unless the client retries it."""
    await connection.disconnect()
    retried = connection.retry_on_error
    if retried is None or not isinstance(error, tuple(retried)):
        raise error


def connect_sync(url: str, **options: Any) -> redis.Redis:
    """A blocking client of ``url``'s Redis (of the master, for a Sentinel URL; of the
    cluster, for a cluster URL), for the few places that are not async (a container's health
    check, the tests)."""
    cluster = cluster_target(url)
    if cluster is not None:
        nodes = [redis.cluster.ClusterNode(host, port) for host, port in cluster.nodes]  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        client = redis.cluster.RedisCluster(
            startup_nodes=nodes, username=cluster.username, password=cluster.password, **options
        )
        return cast(redis.Redis, client)
    target = sentinel_target(url)
    if target is None:
        plain: redis.Redis = redis.Redis.from_url(url, **options)
        return plain
    sentinel = BlockingSentinel(target.nodes, sentinel_kwargs=target.sentinel_kwargs())  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    master: redis.Redis = sentinel.master_for(target.service, **target.master_kwargs(), **options)  # type: ignore[no-untyped-call]
    return master


def database(client: Redis | redis.Redis) -> int:
    """The index of the database the client works in (``redis://host:port/N``; a cluster's
    is 0)."""
    if isinstance(client, RedisCluster | redis.cluster.RedisCluster):
        return 0
    kwargs: dict[str, object] = client.connection_pool.connection_kwargs
    return int(str(kwargs.get("db") or 0))
