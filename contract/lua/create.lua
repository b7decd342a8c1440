-- Create a job: its record, its `queued` event, the arq job and its queue entry, the listing
-- indexes, and the pool's wake-up, all at once; or nothing.
-- The owner's stored bytes (what its jobs of the last `ttl` hold: inputs and parameters) are
-- kept per job in a hash beside their total (field `_total`).
-- The indexes' upkeep (dropping entries older than the TTL, with the bytes of those jobs, and
-- moving the indexes' expiry) is done at most once a `TRIM_EVERY_MS` per owner (field `_trim`
-- of the bytes hash: when it is next due), and at once when a bound would refuse the job, so
-- that a bound counts no expired job; between two, the indexes expire `TRIM_EVERY_MS` after
-- the TTL, so they outlive every job they list.
-- Returns {1, event id} (created; {1, ''} for a retried create), {0, idempotency value} (the
-- key was used: a repeat), {2, ''} (the pool's queue is full), {3, ''} (the owner's share of
-- it is), or {4, total} (the owner's stored bytes would pass the bound). A webhook that wants
-- `queued` is queued (append.lua). An empty `idem_value` says there is no idempotency key:
-- `idempotency` is then only a name in the pool's slot, never read nor written.
-- uses: append
-- KEYS: record events log idempotency arq_job queue index owner_index owner_queued owner_bytes webhooks
-- ARGV: channel event ttl job_maxlen log_maxlen idem_value arq_payload score created_ms wake job_id max_queued max_owner_queued stored_bytes max_owner_bytes webhook_wake fields...
local K, A = KEYS, ARGV
local record, idempotency, arq_job, queue = K[1], K[4], K[5], K[6]
if A[6] == '' then idempotency = '' end
local index, owner_index, owner_queued, owner_bytes = K[7], K[8], K[9], K[10]
local ttl, created_ms, job_id = tonumber(A[3]), tonumber(A[9]), A[11]
local stored, max_stored = tonumber(A[14]), tonumber(A[15])
local TRIM_EVERY_MS = 1000

if redis.call('EXISTS', record) == 1 then return {1, ''} end
local existing = idempotency ~= '' and redis.call('GET', idempotency)
if existing then return {0, existing} end
if redis.call('ZCARD', queue) >= tonumber(A[12]) then return {2, ''} end

local kept = redis.call('HMGET', owner_bytes, '_total', '_trim')
local total, next_trim = tonumber(kept[1] or 0), tonumber(kept[2])
local trimmed = false

local function trim()
  local expired = '(' .. (created_ms - ttl * 1000)
  redis.call('ZREMRANGEBYSCORE', owner_queued, '-inf', expired)
  local released = 0
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', owner_index, '-inf', expired)) do
    local size = redis.call('HGET', owner_bytes, old)
    if size then
      released = released + tonumber(size)
      redis.call('HDEL', owner_bytes, old)
    end
  end
  if released > 0 then
    total = total - released
    redis.call('HSET', owner_bytes, '_total', total)
  end
  redis.call('ZREMRANGEBYSCORE', owner_index, '-inf', expired)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', expired)
  trimmed = true
end

-- due, or a clock over a second behind the one that set it (hubs' clocks differ; a job
-- created a little earlier may come after)
if not next_trim or created_ms >= next_trim or created_ms < next_trim - 2 * TRIM_EVERY_MS then
  trim()
end
local queued = redis.call('ZCARD', owner_queued)
if queued >= tonumber(A[13]) and not trimmed then
  trim()
  queued = redis.call('ZCARD', owner_queued)
end
if queued >= tonumber(A[13]) then return {3, ''} end
if total + stored > max_stored and not trimmed then trim() end
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
for _, key in ipairs({index, owner_index, owner_queued}) do
  redis.call('ZADD', key, created_ms, job_id)
end
local bytes = {job_id, stored, '_total', total + stored}
if trimmed then
  table.insert(bytes, '_trim')
  table.insert(bytes, created_ms + TRIM_EVERY_MS)
end
redis.call('HSET', owner_bytes, unpack(bytes))
local keep_ms = ttl * 1000 + TRIM_EVERY_MS
if trimmed then
  for _, key in ipairs({index, owner_index, owner_queued, owner_bytes}) do
    redis.call('PEXPIRE', key, keep_ms)
  end
elseif queued == 0 then  -- emptied as its jobs started: made anew, without an expiry
  redis.call('PEXPIRE', owner_queued, keep_ms)
end
redis.call(PUBLISH, A[10], '')
return {1, id}
