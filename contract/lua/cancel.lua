-- Cancel a job: a queued one is taken off its queue and canceled at once (with its event);
-- a started one is flagged and stops at its next chunk; a finished one is left as it is.
-- Returns the status found ('' for no such job).
-- uses: append
-- KEYS: record events log cancel arq_job queue owner_queued
-- ARGV: channel event ttl job_maxlen log_maxlen job_id finished_at
local K, A = KEYS, ARGV
local status = redis.call('HGET', K[1], 'status')
if status == 'queued' then
  redis.call('ZREM', K[6], A[6])
  redis.call('ZREM', K[7], A[6])
  redis.call('DEL', K[5])
  redis.call('HSET', K[1], 'status', 'canceled', 'finished_at', A[7])
  append(K[3], K[2], A[1], A[2], A[3], A[4], A[5])
elseif status == 'started' then
  redis.call('SET', K[4], '1', 'EX', A[3])
end
return status or ''
