-- Create a job: its record, its `queued` event, the arq job and its queue entry, the listing
-- indexes, and the pool's wake-up, all at once; or nothing.
-- The owner's stored bytes (what its jobs of the last `ttl` hold: inputs and parameters) are
-- kept per job in a hash beside their total (field `_total`); entries of expired jobs go first.
-- Returns {1, event id} (created; {1, ''} for a retried create), {0, idempotency value} (the
-- key was used: a repeat), {2, ''} (the pool's queue is full), {3, ''} (the owner's share of
-- it is), or {4, total} (the owner's stored bytes would pass the bound). A webhook that wants
-- `queued` is queued (append.lua).
-- uses: append
-- KEYS: record events log idempotency arq_job queue index owner_index owner_queued owner_bytes webhooks
-- ARGV: channel event ttl job_maxlen log_maxlen idem_value arq_payload score created_ms wake job_id max_queued max_owner_queued stored_bytes max_owner_bytes webhook_wake fields...
local K, A = KEYS, ARGV
local record, idempotency, arq_job, queue = K[1], K[4], K[5], K[6]
local ttl, created_ms, job_id = tonumber(A[3]), tonumber(A[9]), A[11]
local owner_index, owner_queued, owner_bytes = K[8], K[9], K[10]
local stored, max_stored = tonumber(A[14]), tonumber(A[15])

if redis.call('EXISTS', record) == 1 then return {1, ''} end
local existing = idempotency ~= '' and redis.call('GET', idempotency)
if existing then return {0, existing} end
if redis.call('ZCARD', queue) >= tonumber(A[12]) then return {2, ''} end
local expired = '(' .. (created_ms - ttl * 1000)
redis.call('ZREMRANGEBYSCORE', owner_queued, '-inf', expired)
if redis.call('ZCARD', owner_queued) >= tonumber(A[13]) then return {3, ''} end
for _, old in ipairs(redis.call('ZRANGEBYSCORE', owner_index, '-inf', expired)) do
  local size = redis.call('HGET', owner_bytes, old)
  if size then
    redis.call('HINCRBY', owner_bytes, '_total', -tonumber(size))
    redis.call('HDEL', owner_bytes, old)
  end
end
local total = tonumber(redis.call('HGET', owner_bytes, '_total') or 0)
if total + stored > max_stored then return {4, tostring(total)} end

if idempotency ~= '' then redis.call('SET', idempotency, A[6], 'EX', ttl) end
set_fields(record, 17)
redis.call('EXPIRE', record, ttl)
local id = append(K[3], K[2], A[1], A[2], ttl, A[4], A[5])
for i = 17, #A - 1, 2 do  -- the record's fields
  if A[i] == 'webhook_on' then push_webhook(K[11], A[16], job_id, 'queued', id, A[i + 1]) end
end
redis.call('PSETEX', arq_job, ttl * 1000, A[7])
redis.call('ZADD', queue, A[8], job_id)
for _, index in ipairs({K[7], owner_index, owner_queued}) do
  redis.call('ZADD', index, created_ms, job_id)
  if index ~= owner_queued then  -- trimmed above already
    redis.call('ZREMRANGEBYSCORE', index, '-inf', expired)
  end
  redis.call('PEXPIRE', index, ttl * 1000)
end
redis.call('HSET', owner_bytes, job_id, stored)
redis.call('HINCRBY', owner_bytes, '_total', stored)
redis.call('PEXPIRE', owner_bytes, ttl * 1000)
redis.call('PUBLISH', A[10], '')
return {1, id}
