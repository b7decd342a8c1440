"""Prompt recovery of the jobs of a dead worker.

arq keeps a job in its queue until it ends and guards it with ``arq:in-progress:<id>``, which
expires only after the job's timeout plus 10 s: a worker killed after claiming jobs would hold
them that long, whether it had started them or not. The claim (``workers/wakeup.py``) stores the
claiming worker's id in that key. Every worker of a pool also watches the others: a job held by
a worker whose heartbeat has expired gets its in-progress key deleted, the pool is woken, and
the next poll of any worker runs it (a started job as its next attempt). A live worker's
heartbeat never expires while it runs, so its jobs are never taken from it.
"""

from __future__ import annotations

import asyncio
import logging

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from redis.exceptions import RedisError

from hub import keys

log = logging.getLogger(__name__)

# KEYS: queue, wake channel; ARGV: in-progress prefix, job prefix, worker prefix, scan limit.
# Returns the ids of the jobs released. arq's own claim writes '1' (a worker of an earlier
# release, during a rolling upgrade): then the job record names its worker once it started.
_REAP = """
local released = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1)) do
  local holder = redis.call('GET', ARGV[1] .. id)
  if holder == '1' then
    local job = redis.call('HMGET', ARGV[2] .. id, 'status', 'worker')
    holder = job[1] == 'started' and job[2]
  end
  if holder and redis.call('EXISTS', ARGV[3] .. holder) == 0 then
    redis.call('DEL', ARGV[1] .. id)
    table.insert(released, id)
  end
end
if #released > 0 then redis.call('PUBLISH', KEYS[2], '') end
return released
"""


async def reap_forever(redis: Redis, pool: str, every_s: float, scan: int = 1000) -> None:
    reap = redis.register_script(_REAP)
    job_prefix = keys.job("")
    worker_prefix = keys.worker("")
    while True:
        await asyncio.sleep(every_s)
        try:
            released = await reap(
                keys=[keys.queue(pool), keys.wake(pool)],
                args=[in_progress_key_prefix, job_prefix, worker_prefix, scan],
            )
        except (RedisError, OSError) as exc:
            log.warning("could not look for orphaned jobs: %s", exc)
            continue
        for job_id in released:
            log.warning("job %s: its worker is gone; it runs again", job_id.decode())
