-- Shared by the scripts that take an arq job for a worker (prepended to each that says
-- "uses: arq"): claim.lua, enqueue.lua.

-- Count a try of a job: arq's retry key, kept `ttl` s from the first try (a first try makes the
-- count with its expiry, in one command). Returns the try's number.
local function count_try(key, ttl)
  if redis.call('SET', key, 1, 'EX', ttl, 'NX') then return 1 end
  return redis.call('INCR', key)
end
