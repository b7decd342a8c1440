-- Release the jobs of dead workers: a queued job held by a worker whose heartbeat record has
-- expired loses its in-progress key, and the pool is woken so a live worker takes it. A value
-- of '1' is arq's own claim (a worker of an earlier release): then the record names its
-- worker once it started. The reaping worker (`worker_id`) also releases its own holds on jobs
-- it does not run (`running`) and claimed over `grace_ms` ago (its claims last `hold_ms`): a
-- Redis failover that lost the end of such a job's attempt would otherwise keep the job from
-- everyone until the hold expires. Returns the ids released.
-- KEYS: queue wake
-- ARGV: in_progress_prefix job_prefix worker_prefix scan worker_id hold_ms grace_ms running...
local progress, job, worker, me = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local hold_ms, grace_ms = tonumber(ARGV[6]), tonumber(ARGV[7])
local running = {}
for i = 8, #ARGV do running[ARGV[i]] = true end
local released = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1)) do
  local holder = redis.call('GET', progress .. id)
  if holder == '1' then
    local record = redis.call('HMGET', job .. id, 'status', 'worker')
    holder = record[1] == 'started' and record[2]
  end
  local stale
  if holder == me then
    stale = not running[id] and hold_ms - redis.call('PTTL', progress .. id) > grace_ms
  else
    stale = holder and redis.call('EXISTS', worker .. holder) == 0
  end
  if stale then
    redis.call('DEL', progress .. id)
    table.insert(released, id)
  end
end
-- sharded from Redis 7, as contract/channels.py subscribes (the channel is of the queue's slot)
local PUBLISH = (redis.REDIS_VERSION_NUM or 0) >= 0x070000 and 'SPUBLISH' or 'PUBLISH'
if #released > 0 then redis.call(PUBLISH, KEYS[2], '') end
return released
