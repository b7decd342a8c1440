-- Mark `model` unloaded (`load` 0) or loaded again (`load` 1), count a new generation, and
-- nudge the workers, at once (the keys and the channel share one hash tag). Sharded pub/sub
-- from Redis 7, as contract/channels.py subscribes. Returns the new generation.
-- KEYS: generation unloaded nudge
-- ARGV: model load
local PUBLISH = (redis.REDIS_VERSION_NUM or 0) >= 0x070000 and 'SPUBLISH' or 'PUBLISH'
if ARGV[2] == '1' then
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], 'unloaded')
end
local generation = redis.call('INCR', KEYS[1])
redis.call(PUBLISH, KEYS[3], ARGV[1])
return generation
