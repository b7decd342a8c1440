-- Release the jobs of dead workers: a queued job held by a worker whose heartbeat record has
-- expired loses its in-progress key, and the pool is woken so a live worker takes it. A value
-- of '1' is arq's own claim (a worker of an earlier release): then the record names its
-- worker once it started. Returns the ids released.
-- KEYS: queue wake
-- ARGV: in_progress_prefix job_prefix worker_prefix scan
local progress, job, worker = ARGV[1], ARGV[2], ARGV[3]
local released = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1)) do
  local holder = redis.call('GET', progress .. id)
  if holder == '1' then
    local record = redis.call('HMGET', job .. id, 'status', 'worker')
    holder = record[1] == 'started' and record[2]
  end
  if holder and redis.call('EXISTS', worker .. holder) == 0 then
    redis.call('DEL', progress .. id)
    table.insert(released, id)
  end
end
if #released > 0 then redis.call('PUBLISH', KEYS[2], '') end
return released
