-- Steps of several jobs in one call (the jobs a worker ends at once): each job's steps as
-- transition.lua applies them (append.lua's `apply_steps`), its record read once and written
-- once; the jobs that leave `queued` leave their owners' queued sets in one command per owner,
-- and the events go out in one publication (append.lua's `publish_all`).
-- Returns, per job, what transition.lua returns.
-- uses: append
-- KEYS: log webhooks jobs...
-- ARGV: channel ttl job_maxlen log_maxlen webhook_wake jobs...
-- The keys of each job (`jobs...`): record events cancel owner_queued outputs; its 3 arguments:
-- job_id steps outputs, as transition.lua takes them.
local K, A = KEYS, ARGV
local call = {log = K[1], channel = A[1], ttl = A[2], job_maxlen = A[3], log_maxlen = A[4],
              webhooks = K[2], webhook_wake = A[5]}
local results, leaving = {}, {}
call.published = {}
local cancels = {}
for k = 5, #K, 5 do table.insert(cancels, K[k]) end
-- a cancel is rare: one command tells whether any job has one asked
call.no_cancel = redis.call('EXISTS', unpack(cancels)) == 0
local key = 3
for i = 6, #A, 3 do
  local job = {id = A[i], record = K[key], events = K[key + 1], cancel = K[key + 2],
               owner_queued = K[key + 3], outputs = K[key + 4], stored = A[i + 2]}
  table.insert(results, apply_steps(call, job, read_steps(A[i + 1]), leaving))
  key = key + 5
end
leave_queued(leaving)
publish_all(call.channel, call.published)
return results
