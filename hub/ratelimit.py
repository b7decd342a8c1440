"""A token bucket per tenant, in Redis, so that every hub replica shares it."""

from __future__ import annotations

from redis.asyncio import Redis

from hub import keys

# KEYS: bucket; ARGV: rate (tokens/s), burst. Returns 0 when a token was taken, else the
# milliseconds until one will be there.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = math.min(burst, (tonumber(b[1]) or burst) + (now - (tonumber(b[2]) or now)) * rate / 1000)
if tokens < 1 then return math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return 0
"""


class RateLimiter:
    def __init__(self, redis: Redis, per_s: float, burst: int) -> None:
        self.per_s = per_s
        self.burst = burst
        self._take = redis.register_script(_TAKE)

    async def wait_ms(self, tenant: str) -> int:
        """0 when the tenant may submit now, else how long until it may."""
        return int(await self._take(keys=[keys.rate(tenant)], args=[self.per_s, self.burst]))
