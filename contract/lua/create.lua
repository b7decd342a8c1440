-- Create a job: its record, its `queued` event, the arq job and its queue entry, the listing
-- indexes, and the pool's wake-up, all at once; or nothing. The owner's books (stored bytes,
-- queued jobs, the upkeep of its indexes) are append.lua's `owner_books`.
-- Returns {1, event id} (created; {1, ''} for a retried create), {0, idempotency value} (the
-- key was used: a repeat), {2, ''} (the pool's queue is full), {3, ''} (the owner's share of
-- it is), or {4, total} (the owner's stored bytes would pass the bound). A webhook that wants
-- `queued` is queued (append.lua). The arq job goes at once to a parked worker of the pool,
-- as an online batch does (arq.lua's `hand_off`), else the pool is woken. create_many.lua
-- creates several jobs in one call. An empty
-- `idem_value` says there is no idempotency key: `idempotency` is then only a name in the
-- pool's slot, never read nor written.
-- uses: append arq
-- KEYS: record events log idempotency arq_job queue index owner_index owner_queued owner_bytes webhooks parked
-- ARGV: channel event ttl job_maxlen log_maxlen idem_value arq_payload score created_ms wake job_id max_queued max_owner_queued stored_bytes max_owner_bytes webhook_wake in_progress_prefix retry_prefix retry_ttl_s lease_prefix handoff_prefix fields...
local K, A = KEYS, ARGV
local record, idempotency = K[1], K[4]
if A[6] == '' then idempotency = '' end
local ttl, job_id, stored = tonumber(A[3]), A[11], tonumber(A[14])

if redis.call('EXISTS', record) == 1 then return {1, ''} end
local existing = idempotency ~= '' and redis.call('GET', idempotency)
if existing then return {0, existing} end
if redis.call('ZCARD', K[6]) >= tonumber(A[12]) then return {2, ''} end

local owner = owner_books(K[7], K[8], K[9], K[10], tonumber(A[9]), ttl)
local verdict = owner_admits(owner, stored, tonumber(A[13]), tonumber(A[15]))
if verdict == 4 then return {4, tostring(owner.total)} end
if verdict ~= 1 then return {verdict, ''} end

if idempotency ~= '' then redis.call('SET', idempotency, A[6], 'EX', ttl) end
set_fields(record, 22)
redis.call('EXPIRE', record, ttl)
local id = append(K[3], K[2], A[1], A[2], ttl, A[4], A[5])
for i = 22, #A - 1, 2 do  -- the record's fields
  if A[i] == 'webhook_on' then push_webhook(K[11], A[16], job_id, 'queued', id, A[i + 1]) end
end
redis.call('PSETEX', K[5], ttl * 1000, A[7])
redis.call('ZADD', K[6], A[8], job_id)
owner_add(owner, job_id, stored)
owner_list(owner)
if not hand_off(K[12], job_id, A[7], A[17], A[18], A[19], A[20], A[21]) then
  redis.call(PUBLISH, A[10], '')
end
return {1, id}
