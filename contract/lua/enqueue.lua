-- Queue an arq job (an online batch) and hand it at once to an idle worker of its pool, if one
-- is parked (claim.lua), so that the worker starts it without a claim round trip.
-- The job and its queue entry are written as for any claim, so that at least once holds: a
-- worker that dies holding the job has it handed back by the reaper (reap.lua). The first
-- parked worker whose lease is live (`lease_prefix` .. id) and whose handoff channel
-- (`handoff_prefix` .. id, in the pool's slot) someone hears is taken off the set and holds the
-- job as claim.lua would make it: the in-progress key its id (for its hold, the value parked),
-- the try counted; the channel carries 'id tries arq-job'. A parked worker with no lease, or
-- unheard (its subscription dropped: a handoff it never read would wait for its hold to
-- expire), is taken off the set and passed over. With none, the pool is woken, as before.
-- Returns the id of the worker the job was handed to, or false.
-- KEYS: job queue parked wake
-- ARGV: payload ttl_ms id score in_progress_prefix retry_prefix retry_ttl_s lease_prefix handoff_prefix
-- uses: arq
local payload, id = ARGV[1], ARGV[3]
local retry_key = ARGV[6] .. id
-- sharded from Redis 7, as contract/channels.py subscribes (every channel here is of the pool's slot)
local PUBLISH = (redis.REDIS_VERSION_NUM or 0) >= 0x070000 and 'SPUBLISH' or 'PUBLISH'

redis.call('SET', KEYS[1], payload, 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], id)
local parked = redis.call('HGETALL', KEYS[3])
for i = 1, #parked, 2 do
  local worker, hold_ms = parked[i], parked[i + 1]
  redis.call('HDEL', KEYS[3], worker)
  if redis.call('EXISTS', ARGV[8] .. worker) == 1 then
    local tries = count_try(retry_key, ARGV[7])
    if redis.call(PUBLISH, ARGV[9] .. worker, id .. ' ' .. tries .. ' ' .. payload) > 0 then
      redis.call('SET', ARGV[5] .. id, worker, 'PX', hold_ms)
      return worker
    end
    if tries == 1 then redis.call('DEL', retry_key) else redis.call('DECR', retry_key) end
  end
end
redis.call(PUBLISH, KEYS[4], '')
return false
