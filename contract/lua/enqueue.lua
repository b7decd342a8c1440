-- Queue an arq job (an online batch) and hand it at once to an idle worker of its pool, if one
-- is parked (arq.lua's `hand_off`); with none, wake the pool.
-- Returns the id of the worker the job was handed to, or false.
-- KEYS: job queue parked wake
-- ARGV: payload ttl_ms id score in_progress_prefix retry_prefix retry_ttl_s lease_prefix handoff_prefix
-- uses: arq
local payload, id = ARGV[1], ARGV[3]

redis.call('SET', KEYS[1], payload, 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], id)
local worker = hand_off(KEYS[3], id, payload, ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
if worker then return worker end
redis.call(PUBLISH, KEYS[4], '')
return false
