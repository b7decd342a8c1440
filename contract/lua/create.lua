-- Create a job: its record, its `queued` event, the arq job and its queue entry, the listing
-- indexes, and the pool's wake-up, all at once; or nothing.
-- Returns {1, event id} (created; {1, ''} for a retried create), {0, idempotency value} (the
-- key was used: a repeat), {2, ''} (the pool's queue is full) or {3, ''} (the owner's share is).
-- uses: append
-- KEYS: record events log idempotency arq_job queue index owner_index owner_queued
-- ARGV: channel event ttl job_maxlen log_maxlen idem_value arq_payload score created_ms wake job_id max_queued max_owner_queued fields...
local K, A = KEYS, ARGV
local record, idempotency, arq_job, queue = K[1], K[4], K[5], K[6]
local ttl, created_ms, job_id = tonumber(A[3]), tonumber(A[9]), A[11]
local owner_queued = K[9]

if redis.call('EXISTS', record) == 1 then return {1, ''} end
local existing = idempotency ~= '' and redis.call('GET', idempotency)
if existing then return {0, existing} end
if redis.call('ZCARD', queue) >= tonumber(A[12]) then return {2, ''} end
local expired = '(' .. (created_ms - ttl * 1000)
redis.call('ZREMRANGEBYSCORE', owner_queued, '-inf', expired)
if redis.call('ZCARD', owner_queued) >= tonumber(A[13]) then return {3, ''} end

if idempotency ~= '' then redis.call('SET', idempotency, A[6], 'EX', ttl) end
set_fields(record, 14)
redis.call('EXPIRE', record, ttl)
local id = append(K[3], K[2], A[1], A[2], ttl, A[4], A[5])
redis.call('PSETEX', arq_job, ttl * 1000, A[7])
redis.call('ZADD', queue, A[8], job_id)
for _, index in ipairs({K[7], K[8], owner_queued}) do
  redis.call('ZADD', index, created_ms, job_id)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', expired)
  redis.call('PEXPIRE', index, ttl * 1000)
end
redis.call('PUBLISH', A[10], '')
return {1, id}
