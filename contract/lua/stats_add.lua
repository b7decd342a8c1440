-- Add one worker's counts to a model version's statistics (contract/stats.py), in one command:
-- each field grows by its delta, and last_inference keeps the latest of the times it is given.
-- Returns the number of fields added to.
-- KEYS: stats
-- ARGV: last_inference deltas...
local stats = KEYS[1]

local function add_fields(key, first)
  for i = first, #ARGV, 2 do
    redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
  end
  return (#ARGV - first + 1) / 2
end

local last = tonumber(ARGV[1])
if last > (tonumber(redis.call('HGET', stats, 'last_inference')) or 0) then
  redis.call('HSET', stats, 'last_inference', last)
end
return add_fields(stats, 2)
