-- A worker gives back jobs held in its name that it has no room to run (workers/loop.py): a
-- handoff that crossed a claim on its way (arq.lua's `hand_off` took the worker from the
-- parked set as its claim, in flight, filled its room). Each job still held by `worker_id`
-- loses its hold and the try its handoff or claim counted (it did not run), and the pool is
-- woken, so that a worker with room takes it (this one, once a job ends). Returns the ids
-- given back.
-- KEYS: wake
-- ARGV: in_progress_prefix retry_prefix worker_id ids...
-- uses: arq
local given = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('GET', ARGV[1] .. id) == ARGV[3] then
    redis.call('DEL', ARGV[1] .. id)
    uncount_try(ARGV[2] .. id)
    table.insert(given, id)
  end
end
if #given > 0 then redis.call(PUBLISH, KEYS[1], '') end
return given
