-- A worker claims due jobs of its pool's queue, in score order, up to its room: it skips the
-- jobs it runs already (`running`: no command spent on them) and those another worker holds
-- (their arq in-progress key exists), and sets the key of each free one, its value the
-- worker's id, so the reaper can hand back a dead worker's jobs. A worker whose heartbeat
-- record is missing claims nothing: the reaper would take them back at once.
-- With each job it reads the arq job and counts the try (arq's retry key, kept `retry_ttl_s`
-- from the first try: the job's own key, kept the job's TTL, goes first), so that an attempt
-- starts without another round trip.
-- A job held in this worker's name that it does not run was handed to it (enqueue.lua) and the
-- handoff never read (its subscription dropped): it is taken as claimed, its try counted then.
-- Parking: a worker that `park`s (it hears its handoff channel) and has room left once nothing
-- more is due goes into its pool's `parked` hash (id -> `in_progress_ms`), where the hub's
-- enqueue.lua finds it and hands it the next job; any other claim takes it out.
-- Returns {id, score, arq job or false, tries, ...}.
-- KEYS: queue heartbeat parked
-- ARGV: in_progress_prefix in_progress_ms now_ms room worker_id page job_prefix retry_prefix retry_ttl_s park running...
-- uses: arq
local queue, prefix, hold_ms, now_ms = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local room, worker_id, page = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local job_prefix, retry_prefix, retry_ttl, park = ARGV[7], ARGV[8], ARGV[9], ARGV[10] == '1'
local running = {}
for i = 11, #ARGV do running[ARGV[i]] = true end

if redis.call('EXISTS', KEYS[2]) == 0 then return {} end
local claimed, offset = {}, 0
while room > 0 do
  local due = redis.call('ZRANGEBYSCORE', queue, '-inf', now_ms, 'WITHSCORES', 'LIMIT', offset, page)
  for i = 1, #due, 2 do
    local id = due[i]
    local tries
    if not running[id] then
      if redis.call('SET', prefix .. id, worker_id, 'PX', hold_ms, 'NX') then
        tries = count_try(retry_prefix .. id, retry_ttl)
      elseif redis.call('GET', prefix .. id) == worker_id then  -- a handoff it missed
        tries = tonumber(redis.call('GET', retry_prefix .. id)) or 1
      end
    end
    if tries then
      table.insert(claimed, id)
      table.insert(claimed, due[i + 1])
      table.insert(claimed, redis.call('GET', job_prefix .. id))
      table.insert(claimed, tries)
      room = room - 1
      if room == 0 then break end
    end
  end
  if #due < 2 * page then break end
  offset = offset + page
end
if park and room > 0 then
  redis.call('HSET', KEYS[3], worker_id, hold_ms)
else
  redis.call('HDEL', KEYS[3], worker_id)
end
return claimed
