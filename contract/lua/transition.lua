-- Steps of a job on a worker, in order, in one call (a quick job's `started` and its end; a
-- chunk's `progress` and `output`): each appends its event and moves to its status, if the
-- job is in one of the step's `allowed` statuses at that point. The guard (a numeric record
-- field and the value it moves to: `attempt` for `started`, `done` for `progress`) makes a
-- step happen once: a retried step finds the value already there and succeeds without a
-- second event; an older one is refused. Leaving `queued` takes the job off its owner's queued
-- set. A step with outputs stores them (packed) under `outputs`, with the job's TTL (one step
-- of a call at most has outputs). A new status the job's webhook wants queues its delivery
-- (`webhooks`, append.lua). The record and its event stream keep the expiry create.lua gave
-- them (the job's TTL from its creation). The record is read once and written once.
-- Each step is 7 arguments and its fields: event allowed status guard_field guard_value
-- outputs_blob n, then n arguments (field, value, ...) it sets in the record.
-- Returns, per step, {appended (0/1), status before, event id, cancel requested (0/1)}.
-- uses: append
-- KEYS: record events log cancel owner_queued outputs webhooks
-- ARGV: channel ttl job_maxlen log_maxlen job_id webhook_wake steps...
local K, A = KEYS, ARGV
local record, ttl, job_id = K[1], A[2], A[5]

local steps, read = {}, {'status', 'webhook_on'}
local i = 7
while i <= #A do
  local n = tonumber(A[i + 6])
  local step = {event = A[i], allowed = A[i + 1], status = A[i + 2], guard = A[i + 3]}
  step.value, step.outputs, step.first, step.last = tonumber(A[i + 4]), A[i + 5], i + 7, i + 6 + n
  if step.guard ~= '' then table.insert(read, step.guard) end
  table.insert(steps, step)
  i = i + 7 + n
end

local found = redis.call('HMGET', record, unpack(read))
local status, webhook_on = found[1], found[2]
local results = {}
if not status then
  for _ = 1, #steps do table.insert(results, {0, '', '', 0}) end
  return results
end
local guards = {}  -- the guard fields' values, as the steps move them
for j = 3, #read do guards[read[j]] = tonumber(found[j] or -1) end
local cancel = redis.call('EXISTS', K[4])
local fields = {}

for _, step in ipairs(steps) do
  local recorded = step.guard ~= '' and guards[step.guard]
  if not string.find(' ' .. step.allowed .. ' ', ' ' .. status .. ' ', 1, true)
      or (recorded and recorded > step.value) then  -- not now, or overtaken by a later one
    table.insert(results, {0, status, '', cancel})
  elseif recorded and recorded == step.value then  -- a retry: already done
    table.insert(results, {1, status, '', cancel})
  else
    local before = status
    if step.guard ~= '' then guards[step.guard] = step.value end
    if step.status ~= '' then
      if status == 'queued' and step.status ~= 'queued' then redis.call('ZREM', K[5], job_id) end
      status = step.status
      table.insert(fields, 'status')
      table.insert(fields, status)
    end
    if step.outputs ~= '' then redis.call('SET', K[6], step.outputs, 'EX', ttl) end
    for j = step.first, step.last do table.insert(fields, A[j]) end
    local id = append(K[3], K[2], A[1], step.event, false, A[3], A[4])
    if step.status ~= '' then push_webhook(K[7], A[6], job_id, status, id, webhook_on) end
    table.insert(results, {1, before, id, cancel})
  end
end
if #fields > 0 then redis.call('HSET', record, unpack(fields)) end
return results
