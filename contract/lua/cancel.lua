-- Cancel a job: a queued one is taken off its queue and canceled at once (with its event);
-- a started one is flagged and stops at its next chunk; a finished one is left as it is.
-- Returns the status found ('' for no such job). A webhook that wants `canceled` is queued.
-- uses: append
-- KEYS: record events log cancel arq_job queue owner_queued webhooks
-- ARGV: channel event ttl job_maxlen log_maxlen job_id finished_at webhook_wake
local K, A = KEYS, ARGV
local status, webhook_on = unpack(redis.call('HMGET', K[1], 'status', 'webhook_on'))
if status == 'queued' then
  redis.call('ZREM', K[6], A[6])
  redis.call('ZREM', K[7], A[6])
  redis.call('DEL', K[5])
  redis.call('HSET', K[1], 'status', 'canceled', 'finished_at', A[7])
  local id = append(K[3], K[2], A[1], A[2], A[3], A[4], A[5])
  push_webhook(K[8], A[8], A[6], 'canceled', id, webhook_on)
elseif status == 'started' then
  redis.call('SET', K[4], '1', 'EX', A[3])
end
return status or ''
