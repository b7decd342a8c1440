-- Shared by the job scripts (prepended to each that says "uses: append").

-- Sharded pub/sub from Redis 7 (a channel of the script's slot: keys.py tags them), plain
-- before it, as contract/channels.py subscribes (REDIS_VERSION_NUM exists from 7.0).
local PUBLISH = (redis.REDIS_VERSION_NUM or 0) >= 0x070000 and 'SPUBLISH' or 'PUBLISH'

-- Add an event to its pool's log and, under the same id, to the job's stream; publish it
-- ('id event'), or with `published` (a table) keep it there for `publish_all`.
-- With a `ttl`, the job's stream expires that long from now; with false it keeps the expiry
-- it has (the job's steps: the stream was given the job's TTL when `queued` created it).
local function append(log, stream, channel, event, ttl, job_maxlen, log_maxlen, published)
  local id = redis.call('XADD', log, 'MAXLEN', '~', log_maxlen, '*', 'e', event)
  redis.call('XADD', stream, 'MAXLEN', '~', job_maxlen, id, 'e', event)
  if ttl then redis.call('EXPIRE', stream, ttl) end
  if published then
    table.insert(published, id .. ' ' .. #event .. ' ' .. event)
  else
    redis.call(PUBLISH, channel, id .. ' ' .. event)
  end
  return id
end

-- Publish the events `append` kept, in order, in one message: '*', then each one's id, its
-- length and itself, space-separated (contract/jobstore.py's `published_events` reads it).
local function publish_all(channel, published)
  if #published > 0 then redis.call(PUBLISH, channel, '*' .. table.concat(published)) end
end

-- Set the record's fields from ARGV[first], ARGV[first + 1], ... (field, value pairs), in one
-- command (a record has tens of fields, far below Lua's bound on unpacked values).
local function set_fields(record, first)
  if #ARGV >= first then redis.call('HSET', record, unpack(ARGV, first, #ARGV)) end
end


-- A job that names a webhook keeps in its record the statuses it wants pushed (`webhook_on`,
-- space-separated, read by the caller with the status: no command more for other jobs): moving
-- to one queues a delivery of the event just appended (`id`), due at once, in the same script
-- as the event, so that no delivery is lost however long every hub is away. A publication on
-- `wake` (keys.webhooks_wake) wakes the hubs' senders.
local function push_webhook(due, wake, job_id, status, id, wanted)
  if not wanted or not string.find(' ' .. wanted .. ' ', ' ' .. status .. ' ', 1, true) then
    return
  end
  redis.call('ZADD', due, string.match(id, '^%d+'), job_id .. ' ' .. id .. ' 1')
  redis.call(PUBLISH, wake, '')
end


-- An owner's books for create.lua and create_many.lua: its stored bytes (kept per job in a
-- hash beside their total, field `_total`), its queued jobs, and the upkeep of its indexes
-- (dropping entries older than the TTL, with the bytes of those jobs, and moving the indexes'
-- expiry), done at most once a `TRIM_EVERY_MS` per owner (field `_trim` of the bytes hash:
-- when it is next due), and at once when a bound would refuse a job, so that a bound counts
-- no expired job; between two, the indexes expire `TRIM_EVERY_MS` after the TTL, so they
-- outlive every job they list.
local TRIM_EVERY_MS = 1000

local function owner_trim(o)
  local expired = '(' .. (o.created_ms - o.ttl * 1000)
  redis.call('ZREMRANGEBYSCORE', o.queued_set, '-inf', expired)
  local released = 0
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', o.owner_index, '-inf', expired)) do
    local size = redis.call('HGET', o.bytes, old)
    if size then
      released = released + tonumber(size)
      redis.call('HDEL', o.bytes, old)
    end
  end
  if released > 0 then
    o.total = o.total - released
    redis.call('HSET', o.bytes, '_total', o.total)
  end
  redis.call('ZREMRANGEBYSCORE', o.owner_index, '-inf', expired)
  redis.call('ZREMRANGEBYSCORE', o.index, '-inf', expired)
  o.trimmed = true
end

-- Read the owner's books (and keep its indexes up, when due) before its jobs of `created_ms`.
local function owner_books(index, owner_index, queued_set, bytes, created_ms, ttl)
  local kept = redis.call('HMGET', bytes, '_total', '_trim')
  local o = {index = index, owner_index = owner_index, queued_set = queued_set, bytes = bytes,
             created_ms = created_ms, ttl = ttl, total = tonumber(kept[1] or 0),
             trimmed = false, added = {}}
  local next_trim = tonumber(kept[2])
  -- due, or a clock over a second behind the one that set it (hubs' clocks differ; a job
  -- created a little earlier may come after)
  if not next_trim or created_ms >= next_trim or created_ms < next_trim - 2 * TRIM_EVERY_MS then
    owner_trim(o)
  end
  o.queued = redis.call('ZCARD', queued_set)
  return o
end

-- Whether the owner may have one more job of `stored` bytes: 1, or 3 (its share of the queue
-- is full) or 4 (its stored bytes would pass the bound).
local function owner_admits(o, stored, max_queued, max_stored)
  if o.queued >= max_queued and not o.trimmed then
    owner_trim(o)
    o.queued = redis.call('ZCARD', o.queued_set) + #o.added / 2
  end
  if o.queued >= max_queued then return 3 end
  if o.total + stored > max_stored and not o.trimmed then owner_trim(o) end
  if o.total + stored > max_stored then return 4 end
  return 1
end

local function owner_add(o, job_id, stored)
  o.queued = o.queued + 1
  o.total = o.total + stored
  table.insert(o.added, job_id)
  table.insert(o.added, stored)
end

-- List the jobs added in the indexes and count their bytes: one command per key.
local function owner_list(o)
  local members = {}
  for i = 1, #o.added, 2 do
    table.insert(members, o.created_ms)
    table.insert(members, o.added[i])
  end
  for _, key in ipairs({o.index, o.owner_index, o.queued_set}) do
    redis.call('ZADD', key, unpack(members))
  end
  local bytes = {unpack(o.added)}
  table.insert(bytes, '_total')
  table.insert(bytes, o.total)
  if o.trimmed then
    table.insert(bytes, '_trim')
    table.insert(bytes, o.created_ms + TRIM_EVERY_MS)
  end
  redis.call('HSET', o.bytes, unpack(bytes))
  local keep_ms = o.ttl * 1000 + TRIM_EVERY_MS
  if o.trimmed then
    for _, key in ipairs({o.index, o.owner_index, o.queued_set, o.bytes}) do
      redis.call('PEXPIRE', key, keep_ms)
    end
  elseif o.queued == #o.added / 2 then  -- emptied as its jobs started: made anew, no expiry
    redis.call('PEXPIRE', o.queued_set, keep_ms)
  end
end


-- A job's steps (transition.lua, transition_many.lua), from one argument: a msgpack array of
-- strings (contract/jobstore.py's `_lua_strings`), each step 7 of them and its fields: event
-- allowed status guard_field guard_value stores_outputs ('1': the job's outputs argument is
-- this step's) n, then n (field, value, ...) it sets in the record.
local function read_steps(packed)
  local a, steps, i = cmsgpack.unpack(packed), {}, 1
  while i <= #a do
    local n = tonumber(a[i + 6])
    table.insert(steps, {event = a[i], allowed = a[i + 1], status = a[i + 2], guard = a[i + 3],
                         value = tonumber(a[i + 4]), outputs = a[i + 5] == '1',
                         fields = {unpack(a, i + 7, i + 6 + n)}})
    i = i + 7 + n
  end
  return steps
end

-- Apply one job's steps, in order, reading its record once and writing it once (transition.lua
-- says how). `c`: the call's log, channel, ttl, job_maxlen, log_maxlen, webhooks and
-- webhook_wake (and `no_cancel`: known that no job of the call has a cancel asked;
-- `published`: where `append` keeps the events for one publication); `job`: the job's id and
-- keys (record, events, cancel, owner_queued, outputs) and `stored`, the outputs a step stores.
-- A job leaving `queued` is noted in `leaving` (owner_queued key -> ids), for `leave_queued`.
-- Returns, per step, {appended (0/1), status before, event id, cancel requested (0/1)}.
local function apply_steps(c, job, steps, leaving)
  local read = {'status', 'webhook_on'}
  for _, step in ipairs(steps) do
    if step.guard ~= '' then table.insert(read, step.guard) end
  end
  local found = redis.call('HMGET', job.record, unpack(read))
  local status, webhook_on = found[1], found[2]
  local results = {}
  if not status then
    for _ = 1, #steps do table.insert(results, {0, '', '', 0}) end
    return results
  end
  local guards = {}  -- the guard fields' values, as the steps move them
  for j = 3, #read do guards[read[j]] = tonumber(found[j] or -1) end
  local cancel = 0
  if not c.no_cancel then cancel = redis.call('EXISTS', job.cancel) end
  local fields = {}

  for _, step in ipairs(steps) do
    local recorded = step.guard ~= '' and guards[step.guard]
    if not string.find(' ' .. step.allowed .. ' ', ' ' .. status .. ' ', 1, true)
        or (recorded and recorded > step.value) then  -- not now, or overtaken by a later one
      table.insert(results, {0, status, '', cancel})
    elseif recorded and recorded == step.value then  -- a retry: already done
      table.insert(results, {1, status, '', cancel})
    else
      local before = status
      if step.guard ~= '' then guards[step.guard] = step.value end
      if step.status ~= '' then
        if status == 'queued' and step.status ~= 'queued' then
          leaving[job.owner_queued] = leaving[job.owner_queued] or {}
          table.insert(leaving[job.owner_queued], job.id)
        end
        status = step.status
        table.insert(fields, 'status')
        table.insert(fields, status)
      end
      if step.outputs then redis.call('SET', job.outputs, job.stored, 'EX', c.ttl) end
      for _, value in ipairs(step.fields) do table.insert(fields, value) end
      local id = append(
        c.log, job.events, c.channel, step.event, false, c.job_maxlen, c.log_maxlen, c.published
      )
      if step.status ~= '' then push_webhook(c.webhooks, c.webhook_wake, job.id, status, id, webhook_on) end
      table.insert(results, {1, before, id, cancel})
    end
  end
  if #fields > 0 then redis.call('HSET', job.record, unpack(fields)) end
  return results
end

-- Take the jobs that left `queued` off their owners' queued sets: one command per owner.
local function leave_queued(leaving)
  for key, ids in pairs(leaving) do redis.call('ZREM', key, unpack(ids)) end
end
