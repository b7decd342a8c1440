-- Shared by the job scripts (prepended to each that says "uses: append").

-- Sharded pub/sub from Redis 7 (a channel of the script's slot: keys.py tags them), plain
-- before it, as contract/channels.py subscribes (REDIS_VERSION_NUM exists from 7.0).
local PUBLISH = (redis.REDIS_VERSION_NUM or 0) >= 0x070000 and 'SPUBLISH' or 'PUBLISH'

-- Add an event to its pool's log and, under the same id, to the job's stream; publish it.
-- With a `ttl`, the job's stream expires that long from now; with false it keeps the expiry
-- it has (the job's steps: the stream was given the job's TTL when `queued` created it).
local function append(log, stream, channel, event, ttl, job_maxlen, log_maxlen)
  local id = redis.call('XADD', log, 'MAXLEN', '~', log_maxlen, '*', 'e', event)
  redis.call('XADD', stream, 'MAXLEN', '~', job_maxlen, id, 'e', event)
  if ttl then redis.call('EXPIRE', stream, ttl) end
  redis.call(PUBLISH, channel, id .. ' ' .. event)
  return id
end

-- Set the record's fields from ARGV[first], ARGV[first + 1], ... (field, value pairs), in one
-- command (a record has tens of fields, far below Lua's bound on unpacked values).
local function set_fields(record, first)
  if #ARGV >= first then redis.call('HSET', record, unpack(ARGV, first, #ARGV)) end
end


-- A job that names a webhook keeps in its record the statuses it wants pushed (`webhook_on`,
-- space-separated, read by the caller with the status: no command more for other jobs): moving
-- to one queues a delivery of the event just appended (`id`), due at once, in the same script
-- as the event, so that no delivery is lost however long every hub is away. A publication on
-- `wake` (keys.webhooks_wake) wakes the hubs' senders.
local function push_webhook(due, wake, job_id, status, id, wanted)
  if not wanted or not string.find(' ' .. wanted .. ' ', ' ' .. status .. ' ', 1, true) then
    return
  end
  redis.call('ZADD', due, string.match(id, '^%d+'), job_id .. ' ' .. id .. ' 1')
  redis.call(PUBLISH, wake, '')
end
