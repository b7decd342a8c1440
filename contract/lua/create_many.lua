-- Create several jobs of one owner, pool and priority in one call (concurrent submissions the
-- hub gathered): each job as create.lua creates one (its record and `queued` event, its
-- idempotency key, its webhook), with its own verdict, in order; the jobs created share one
-- arq job (`run_jobs`, one queue entry), one update of each index and of the owner's books
-- (append.lua), one handoff to a parked worker (arq.lua's `hand_off`) or else one wake-up, and
-- one publication of their `queued` events (append.lua's
-- `publish_all`). The pool's bound counts queue entries (a batch is one), the owner's counts
-- jobs. The arq job lists the jobs created only (a job refused here never runs): this script
-- joins their `run` pieces between `payload_head` and `payload_tail` (msgpack: the array's
-- header is written here, for the jobs it lists). Its id, `batch_id` (`jobs-<n>-<first id>`,
-- which queue_stats.lua reads), is renamed for the jobs it lists when some were refused, so
-- that the pool's depth and age count the jobs queued, not those sent.
-- Returns, per job, what create.lua returns.
-- uses: append arq
-- KEYS: log queue arq_job index owner_index owner_queued owner_bytes webhooks parked jobs...
-- ARGV: channel ttl job_maxlen log_maxlen batch_id payload_head payload_tail score created_ms wake max_queued max_owner_queued max_owner_bytes webhook_wake in_progress_prefix retry_prefix retry_ttl_s lease_prefix handoff_prefix jobs...
-- The keys of each job (`jobs...`): record events idempotency; its 6 arguments: job_id event
-- idem_value stored_bytes record run: `record` the record's fields (msgpack: an array of
-- field, value, ... strings), `run` its entry of the arq job (msgpack). An empty idem_value
-- says the job has no idempotency key (its name, in the pool's slot, is unused).
local K, A = KEYS, ARGV
local ttl, created_ms = tonumber(A[2]), tonumber(A[9])
local room = redis.call('ZCARD', K[2]) < tonumber(A[11])
local owner = owner_books(K[4], K[5], K[6], K[7], created_ms, ttl)
local results, published, runs, first = {}, {}, {}, nil
local records = {}
for k = 10, #K, 3 do table.insert(records, K[k]) end
-- a retried call finds its jobs made: one command tells whether any is
local retried = redis.call('EXISTS', unpack(records)) > 0

local key = 10
for i = 20, #A, 6 do
  local record, events, idempotency = K[key], K[key + 1], K[key + 2]
  if A[i + 2] == '' then idempotency = '' end
  local job_id, stored = A[i], tonumber(A[i + 3])
  local existing = idempotency ~= '' and redis.call('GET', idempotency)
  if retried and redis.call('EXISTS', record) == 1 then
    table.insert(results, {1, ''})
    table.insert(runs, A[i + 5])
    first = first or job_id
  elseif existing then
    table.insert(results, {0, existing})
  elseif not room then
    table.insert(results, {2, ''})
  else
    local verdict = owner_admits(owner, stored, tonumber(A[12]), tonumber(A[13]))
    if verdict == 4 then
      table.insert(results, {4, tostring(owner.total)})
    elseif verdict ~= 1 then
      table.insert(results, {verdict, ''})
    else
      if idempotency ~= '' then redis.call('SET', idempotency, A[i + 2], 'EX', ttl) end
      local fields = cmsgpack.unpack(A[i + 4])
      redis.call('HSET', record, unpack(fields))
      redis.call('EXPIRE', record, ttl)
      local id = append(K[1], events, A[1], A[i + 1], ttl, A[3], A[4], published)
      for f = 1, #fields - 1, 2 do
        if fields[f] == 'webhook_on' then
          push_webhook(K[8], A[14], job_id, 'queued', id, fields[f + 1])
        end
      end
      owner_add(owner, job_id, stored)
      table.insert(results, {1, id})
      table.insert(runs, A[i + 5])
      first = first or job_id
    end
  end
  key = key + 3
end

if #owner.added > 0 then
  local n = #runs  -- at most 65,535 (the hub gathers GATHER_MOST)
  local header = n < 16 and string.char(0x90 + n) or string.char(0xdc, math.floor(n / 256), n % 256)
  local payload = A[6] .. header .. table.concat(runs) .. A[7]
  local batch_id, arq_job = A[5], K[3]
  if n < (#A - 19) / 6 then  -- some refused: named for those it lists (its key in the same slot)
    batch_id = 'jobs-' .. n .. '-' .. first
    arq_job = string.sub(K[3], 1, #K[3] - #A[5]) .. batch_id
  end
  redis.call('PSETEX', arq_job, ttl * 1000, payload)
  redis.call('ZADD', K[2], A[8], batch_id)
  owner_list(owner)
  if not hand_off(K[9], batch_id, payload, A[15], A[16], A[17], A[18], A[19]) then
    redis.call(PUBLISH, A[10], '')
  end
end
publish_all(A[1], published)
return results
