"""Redis clients that ride out a short outage (a restart, a Sentinel failover) by retrying.

Every process builds its clients here, from ``INFERHUB_REDIS_URL``: one Redis
(``redis://host:port/db``, ``rediss://``, ``unix://``) or a master watched by Sentinel
(``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``, with
``?sentinel_password=`` when the sentinels ask for one). A Sentinel client asks the sentinels
where the master is each time it connects, and drops a connection to a master that was demoted,
so after a failover the next connection reaches the new master by itself.

A command that meets a dropped connection is retried with backoff for a few seconds before the
error reaches the caller, so a Redis restart or a failover costs latency, not failed requests.
Every state change is a guarded Lua script, so a retried command cannot end a job twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from redis.sentinel import Sentinel as BlockingSentinel

# OSError too: a refused connect (Redis restarting) is raised as a bare OSError, which redis-py
# retries only when told to
RETRY_ON = [ConnectionError, TimeoutError, BusyLoadingError, OSError]

SENTINEL_SCHEME = "redis+sentinel"
SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME)
SENTINEL_PORT = 26379
SENTINEL_FORM = "redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]"


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
            f"rediss://, unix:// or {SENTINEL_FORM}"
        )
    sentinel_target(url)
    return url


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
        nodes=tuple(_node(h) for h in hosts.split(",")),
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) if userinfo else None,
        sentinel_username=query.get("sentinel_username", [None])[0],
        sentinel_password=query.get("sentinel_password", [None])[0],
    )


def _node(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not colon:
        host, port = text, str(SENTINEL_PORT)
    if not host or not port.isdigit():
        raise ValueError(f"a sentinel is host:port, got {text!r}")
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


class _MasterPool(SentinelConnectionPool):
    """The master's connections; closing the client closes the sentinels' too (redis-py
    leaves them open)."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # the client is closing, not following a new master
            for node in self.sentinel_manager.sentinels:
                await node.aclose()


def _retry() -> Retry:
    # 0.05 + 0.1 + 0.2 + 0.4 + 0.5 x 6: about 3.8 s of patience before an error surfaces
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=10)


def connect(url: str, *, retry: bool = True) -> Redis:
    """A client of ``url``'s Redis (of the master, for a Sentinel URL). Without ``retry`` a
    dropped connection surfaces at once (a pub/sub reader must learn of its gap)."""
    options: dict[str, Any] = {"socket_connect_timeout": 2, "health_check_interval": 10}
    if retry:
        options |= {"retry": _retry(), "retry_on_error": RETRY_ON}
    target = sentinel_target(url)
    if target is None:
        client: Redis = Redis.from_url(url, **options)
        return client
    sentinel = Sentinel(target.nodes, sentinel_kwargs=target.sentinel_kwargs())  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    master: Redis = sentinel.master_for(
        target.service,
        connection_pool_class=_MasterPool,
        connection_class=_MasterConnection,
        **target.master_kwargs(),
        **options,
    )
    return master


def connect_sync(url: str, **options: Any) -> redis.Redis:
    """A blocking client of ``url``'s Redis (of the master, for a Sentinel URL), for the few
    places that are not async (a container's health check)."""
    target = sentinel_target(url)
    if target is None:
        client: redis.Redis = redis.Redis.from_url(url, **options)
        return client
    sentinel = BlockingSentinel(target.nodes, sentinel_kwargs=target.sentinel_kwargs())  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    master: redis.Redis = sentinel.master_for(target.service, **target.master_kwargs(), **options)  # type: ignore[no-untyped-call]
    return master


def database(client: Redis | redis.Redis) -> int:
    """The index of the database the client works in (``redis://host:port/N``)."""
    kwargs: dict[str, object] = client.connection_pool.connection_kwargs
    return int(str(kwargs.get("db") or 0))
