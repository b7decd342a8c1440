-- Shared by the scripts that take an arq job for a worker (prepended to each that says
-- "uses: arq"): claim.lua, enqueue.lua, create.lua, create_many.lua, give_back.lua.

-- Sharded from Redis 7, as contract/channels.py subscribes (every channel here is of the
-- pool's slot).
local PUBLISH = (redis.REDIS_VERSION_NUM or 0) >= 0x070000 and 'SPUBLISH' or 'PUBLISH'

-- Count a try of a job: arq's retry key, kept `ttl` s from the first try (a first try makes the
-- count with its expiry, in one command). Returns the try's number.
local function count_try(key, ttl)
  if redis.call('SET', key, 1, 'EX', ttl, 'NX') then return 1 end
  return redis.call('INCR', key)
end

-- Take back a try counted for a job that did not run: the count goes with its first try.
local function uncount_try(key)
  if redis.call('DECR', key) <= 0 then redis.call('DEL', key) end
end

-- Hand a job just queued to an idle worker of its pool, if one is parked (claim.lua), so that
-- the worker starts it without a claim round trip. The job keeps its queue entry, as for any
-- claim, so that at least once holds: a worker that dies holding it has it handed back by the
-- reaper (reap.lua). The first parked worker whose lease is live (`lease_prefix` .. id) and
-- whose handoff channel (`handoff_prefix` .. id, in the pool's slot) someone hears is taken
-- off the set and holds the job as claim.lua would make it: the in-progress key its id (for
-- its hold, the value parked), the try counted; the channel carries 'id tries arq-job'. A
-- parked worker with no lease, or unheard (its subscription dropped: a handoff it never read
-- would wait for its hold to expire), is taken off the set and passed over.
-- Returns the id of the worker the job was handed to, or false: then wake the pool.
local function hand_off(parked_key, id, payload, in_progress_prefix, retry_prefix, retry_ttl,
                        lease_prefix, handoff_prefix)
  local retry_key = retry_prefix .. id
  local parked = redis.call('HGETALL', parked_key)
  for i = 1, #parked, 2 do
    local worker, hold_ms = parked[i], parked[i + 1]
    redis.call('HDEL', parked_key, worker)
    if redis.call('EXISTS', lease_prefix .. worker) == 1 then
      local tries = count_try(retry_key, retry_ttl)
      if redis.call(PUBLISH, handoff_prefix .. worker, id .. ' ' .. tries .. ' ' .. payload) > 0 then
        redis.call('SET', in_progress_prefix .. id, worker, 'PX', hold_ms)
        return worker
      end
      uncount_try(retry_key)
    end
  end
  return false
end
