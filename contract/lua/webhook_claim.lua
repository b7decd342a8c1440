-- Claim up to `count` webhook deliveries that are due: each is leased (its score moved to now +
-- `lease_ms`), so that no other hub sends it meanwhile, and is due again when the lease ends if
-- its sender died. Times are Redis's, so hubs with skewed clocks agree.
-- Returns {lease (the claim's score, its token), ms until the next entry is due or -1, members}.
-- KEYS: due
-- ARGV: lease_ms count
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = now + tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', lease, member) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if first[2] then wait = math.max(0, tonumber(first[2]) - now) end
return {lease, wait, due}
