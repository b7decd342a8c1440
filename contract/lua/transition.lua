-- Steps of a job on a worker, in order, in one call (a quick job's `started` and its end; a
-- chunk's `progress` and `output`): each appends its event and moves to its status, if the
-- job is in one of the step's `allowed` statuses at that point. The guard (a numeric record
-- field and the value it moves to: `attempt` for `started`, `done` for `progress`) makes a
-- step happen once: a retried step finds the value already there and succeeds without a
-- second event; an older one is refused. Leaving `queued` takes the job off its owner's queued
-- set. A step with outputs stores them (packed) under `outputs`, with the job's TTL (one step
-- of a call at most has outputs). A new status the job's webhook wants queues its delivery
-- (`webhooks`, append.lua). The record and its event stream keep the expiry create.lua gave
-- them (the job's TTL from its creation). The record is read once and written once
-- (append.lua's `apply_steps`; transition_many.lua does this for several jobs in one call).
-- The steps are one argument (append.lua's `read_steps`); `outputs`, the packed outputs the
-- step that says so stores.
-- Returns, per step, {appended (0/1), status before, event id, cancel requested (0/1)}.
-- uses: append
-- KEYS: record events log cancel owner_queued outputs webhooks
-- ARGV: channel ttl job_maxlen log_maxlen job_id webhook_wake steps outputs
local K, A = KEYS, ARGV
local steps = read_steps(A[7])
local call = {log = K[3], channel = A[1], ttl = A[2], job_maxlen = A[3], log_maxlen = A[4],
              webhooks = K[7], webhook_wake = A[6]}
local job = {id = A[5], record = K[1], events = K[2], cancel = K[4], owner_queued = K[5],
             outputs = K[6], stored = A[8]}
local leaving = {}
local results = apply_steps(call, job, steps, leaving)
leave_queued(leaving)
return results
