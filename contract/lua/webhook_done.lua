-- A claimed webhook delivery is over: record the attempt on the job (`attempted` 1: counted,
-- with its HTTP `status` or the `error`, and `delivered_at` when it was delivered) and queue
-- `next` (the retry, '' for none) `delay_ms` from now. Nothing happens unless the entry still
-- holds this claim's `lease` (another hub took it over once the lease ended, and reports its
-- own), and nothing is retried once the job's record has expired: its TTL bounds the retries.
-- A hub that stops hands its claims back with `attempted` 0 and the same member as `next`.
-- Returns 1 if recorded, else 0.
-- KEYS: due record
-- ARGV: member lease attempted status error delivered_at next delay_ms
local K, A = KEYS, ARGV
if tonumber(redis.call('ZSCORE', K[1], A[1]) or -1) ~= tonumber(A[2]) then return 0 end
redis.call('ZREM', K[1], A[1])
if redis.call('EXISTS', K[2]) == 0 then return 0 end
if A[3] == '1' then
  redis.call('HINCRBY', K[2], 'webhook_attempts', 1)
  for name, value in pairs({webhook_status = A[4], webhook_error = A[5]}) do
    if value == '' then redis.call('HDEL', K[2], name) else redis.call('HSET', K[2], name, value) end
  end
  if A[6] ~= '' then redis.call('HSET', K[2], 'webhook_delivered_at', A[6]) end
end
if A[7] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', K[1], now + tonumber(A[8]), A[7])
end
return 1
