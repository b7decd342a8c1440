"""A token bucket per tenant, in Redis, so that every hub replica shares it."""

from __future__ import annotations

from redis.asyncio import Redis

from contract import keys, scripts

TAKE_TOKEN = scripts.load("take_token")


class RateLimiter:
    def __init__(self, redis: Redis, per_s: float, burst: int) -> None:
        self.redis = redis
        self.per_s = per_s
        self.burst = burst

    async def wait_ms(self, tenant: str) -> int:
        """0 when the tenant may submit now, else how long until it may."""
        bucket = {"bucket": keys.rate(tenant)}
        args = {"rate": self.per_s, "burst": self.burst}
        return int(await TAKE_TOKEN(self.redis, keys=bucket, args=args))
