"""Redis clients that ride out a short outage (a restart, a failover) by retrying.

A command that meets a dropped connection is retried with backoff for a few seconds before the
error reaches the caller, so a Redis restart costs latency, not failed requests. Every state
change is a guarded Lua script, so a retried command cannot end a job twice.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

# OSError too: a refused connect (Redis restarting) is raised as a bare OSError, which redis-py
# retries only when told to
RETRY_ON = [ConnectionError, TimeoutError, BusyLoadingError, OSError]


def _retry() -> Retry:
    # 0.05 + 0.1 + 0.2 + 0.4 + 0.5 x 6: about 3.8 s of patience before an error surfaces
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=10)


def connect(url: str) -> Redis:
    client: Redis = Redis.from_url(
        url,
        socket_connect_timeout=2,
        health_check_interval=10,
        retry=_retry(),
        retry_on_error=RETRY_ON,
    )
    return client


def database(redis: Redis) -> int:
    """The index of the database the client works in (``redis://host:port/N``)."""
    kwargs: dict[str, object] = redis.connection_pool.connection_kwargs
    return int(str(kwargs.get("db") or 0))
