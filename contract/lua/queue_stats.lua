-- A pool's queue at a glance: arq keeps a job in its queue until it ends, and a job with an
-- in-progress key is running. An entry `jobs-<n>-<id>` is n jobs created together, the first
-- of them `id` (one arq job: contract/lua/create_many.lua). Looks at the first `scan` entries
-- only.
-- Returns {jobs, running, oldest waiting job's created_at or ''}.
-- KEYS: queue
-- ARGV: in_progress_prefix job_prefix scan
local total = redis.call('ZCARD', KEYS[1])
local running, oldest = 0, nil
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)) do
  local n, first = string.match(id, '^jobs%-(%d+)%-(.+)$')
  local jobs = tonumber(n) or 1
  total = total + jobs - 1
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then
    running = running + jobs
  else
    local created = redis.call('HGET', ARGV[2] .. (first or id), 'created_at')
    if created and (oldest == nil or tonumber(created) < tonumber(oldest)) then
      oldest = created
    end
  end
end
return {total, running, oldest or ''}
