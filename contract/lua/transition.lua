-- One step of a job on a worker: append its event and move to its status, if the job is in
-- one of the `allowed` statuses. The guard (a numeric record field and the value it moves
-- to: `attempt` for `started`, `done` for `progress`) makes a step happen once: a retried
-- step finds the value already there and succeeds without a second event; an older one is
-- refused. Leaving `queued` takes the job off its owner's queued set. A step that ends the job
-- with outputs stores them (packed, `outputs_blob`) under `outputs`, with the job's TTL. A new
-- status the job's webhook wants queues its delivery (`webhooks`, append.lua). The record and
-- its event stream keep the expiry create.lua gave them (the job's TTL from its creation).
-- Returns {appended (0/1), status before, event id, cancel requested (0/1)}.
-- uses: append
-- KEYS: record events log cancel owner_queued outputs webhooks
-- ARGV: channel event ttl job_maxlen log_maxlen allowed status guard_field guard_value job_id outputs_blob webhook_wake fields...
local K, A = KEYS, ARGV
local record, allowed, new_status, guard_field = K[1], A[6], A[7], A[8]

-- one read for the status, the webhook's wishes and the guard (a field named '' is absent)
local found = redis.call('HMGET', record, 'status', 'webhook_on', guard_field)
local status, webhook_on = found[1], found[2]
if not status then return {0, '', '', 0} end
local cancel = redis.call('EXISTS', K[4])
if not string.find(' ' .. allowed .. ' ', ' ' .. status .. ' ', 1, true) then
  return {0, status, '', cancel}
end
if guard_field ~= '' then
  local recorded = tonumber(found[3] or -1)
  local wanted = tonumber(A[9])
  if recorded > wanted then return {0, status, '', cancel} end  -- overtaken by a later one
  if recorded == wanted then return {1, status, '', cancel} end  -- a retry: already done
end
if new_status ~= '' then
  if status == 'queued' and new_status ~= 'queued' then redis.call('ZREM', K[5], A[10]) end
  -- the status goes with the step's fields, in one command
  table.insert(ARGV, 'status')
  table.insert(ARGV, new_status)
end
if A[11] ~= '' then redis.call('SET', K[6], A[11], 'EX', A[3]) end
set_fields(record, 13)
local id = append(K[3], K[2], A[1], A[2], false, A[4], A[5])
if new_status ~= '' then push_webhook(K[7], A[12], A[10], new_status, id, webhook_on) end
return {1, status, id, cancel}
