"""Every Redis key and channel name inferhub uses, in one place (as arq's ``constants.py``)."""

import random
import re

PREFIX = "inferhub:"

POOLS = PREFIX + "pools"
"""Set of every pool a job was created in: where the per-pool logs and indexes are found."""

MODELS = PREFIX + "models"
"""Hash: model name -> JSON catalogue entry written by the workers that serve it."""

WORKERS = PREFIX + "workers"
"""Sorted set of worker ids scored by their last heartbeat (unix seconds)."""

REPOSITORY = PREFIX + "{repository}:unloaded"
"""Hash: model name -> "unloaded" for each model unloaded through the repository extension;
workers serve every model of their pool's repository except these (contract/repository.py)."""

REPOSITORY_GENERATION = PREFIX + "{repository}:generation"
"""Counter bumped with every load/unload; a worker's record says the last one it applied."""

_POOL = re.compile(r"[A-Za-z0-9._-]*")  # no braces (the hash tag), URL-safe (in job ids)


def tag(pool: str) -> str:
    """The prefix of every key of ``pool``'s queue and jobs: its hash tag puts them all in one
    slot of a Redis Cluster (so each script's keys lie on one node), and spreads the pools over
    the masters. One layout for one Redis and for a cluster."""
    if not _POOL.fullmatch(pool):
        raise ValueError(f"a pool's name is letters, digits, '.', '_' and '-': got {pool!r}")
    return f"{PREFIX}{{{pool}}}:"


def new_job_id(pool: str) -> str:
    """A new job's id: ``<pool>.<32 hex digits>``, so that any hub finds the job's keys (and
    its pool) from the id alone."""
    tag(pool)  # a pool the keys cannot carry is refused before anything is written
    # 128 random bits, from the process's generator rather than a system call per job: a job
    # id names a job, it grants nothing (every read checks the owner)
    return f"{pool}.{random.getrandbits(128):032x}"


def pool_of(job_id: str) -> str:
    """The pool in a job's id ('' for an id of no pool: such a job does not exist)."""
    pool, _, _ = job_id.rpartition(".")
    return pool if _POOL.fullmatch(pool) else ""


def job_prefix(pool: str) -> str:
    """The prefix of the records of ``pool``'s jobs: ``job_prefix(pool) + id`` is ``job(id)``."""
    return tag(pool) + "job:"


def job(job_id: str) -> str:
    """Hash holding the job record."""
    return job_prefix(pool_of(job_id)) + job_id


def job_events(job_id: str) -> str:
    """Stream of the job's events; its ids are the event ids."""
    return f"{job(job_id)}:events"


def job_inputs(job_id: str) -> str:
    """The raw bytes of the job's large inputs, stored apart from its arq job
    (contract/inputs.py), with the job's TTL."""
    return f"{job(job_id)}:inputs"


def job_outputs(job_id: str) -> str:
    """The job's outputs, packed (contract/outputs.py), stored once with the job's TTL."""
    return f"{job(job_id)}:outputs"


def job_outputs_chunk(job_id: str, start: int) -> str:
    """One chunk of a job that streams its outputs, from row ``start`` (contract/outputs.py)."""
    return f"{job(job_id)}:outputs:{start}"


def job_cancel(job_id: str) -> str:
    """Set when a running job must stop at its next chunk."""
    return f"{job(job_id)}:cancel"


def events_log(pool: str) -> str:
    """Capped stream of every event of the pool's jobs, for resuming the all-jobs feed; each
    event has the same id here as in its job's stream."""
    return tag(pool) + "events:log"


def jobs_index(pool: str) -> str:
    """Sorted set of the pool's job ids scored by creation time (ms), newest last: the admin's
    listing merges those of every pool."""
    return tag(pool) + "jobs"


def owner_jobs(pool: str, owner: str) -> str:
    """Sorted set of the owner's job ids of the pool scored by creation time (ms): the
    tenant's listing merges those of every pool."""
    return f"{tag(pool)}owner:{owner}:jobs"


def owner_queued(pool: str, owner: str) -> str:
    """Sorted set of the owner's jobs of the pool not yet started, for the per-tenant queue
    bound (per pool)."""
    return f"{tag(pool)}owner:{owner}:queued"


def owner_bytes(pool: str, owner: str) -> str:
    """Hash of the bytes each of the owner's jobs of the pool stores (inputs, parameters), and
    ``_total``, for the per-tenant storage bound (per pool)."""
    return f"{tag(pool)}owner:{owner}:bytes"


def idempotency(pool: str, owner: str, key: str) -> str:
    """The job an owner's Idempotency-Key made in the pool (a key is unique per pool)."""
    return f"{tag(pool)}idem:{owner}:{key}"


def webhooks(pool: str) -> str:
    """Sorted set of the webhook deliveries to make for the pool's jobs, ``"<job id> <event id>
    <attempt>"``, scored by when (ms, Redis's clock) the next attempt is due
    (hub/webhooks/sender.py)."""
    return tag(pool) + "webhooks"


def queue(pool: str) -> str:
    """The queue of a pool: a sorted set of job ids scored by run-at ms, as arq's."""
    return tag(pool) + "queue"


# Our worker loop does arq's bookkeeping (workers/attempt.py) in arq's formats, under the
# pool's tag instead of arq's global prefixes, so that a claim touches one slot.


def arq_job_prefix(pool: str) -> str:
    """``+ id``: the arq job (``arq.jobs.serialize_job``), written by the hub."""
    return tag(pool) + "arq:job:"


def in_progress_prefix(pool: str) -> str:
    """``+ id``: held by the worker that claimed the job (its id is the value)."""
    return tag(pool) + "arq:in-progress:"


def retry_prefix(pool: str) -> str:
    """``+ id``: the tries of the job so far."""
    return tag(pool) + "arq:retry:"


RETRY_TTL_S = 88_400
"""How long arq keeps a job's tries count after its last attempt."""


def worker_lease(pool: str, worker_id: str) -> str:
    """Present while the worker heartbeats, beside its record (``worker``) but in its pool's
    slot, so that the claim and the reap scripts can read it."""
    return f"{tag(pool)}worker:{worker_id}"


def parked(pool: str) -> str:
    """Hash: worker id -> its hold (ms) of the pool's idle workers, each waiting on its own
    ``handoff`` channel for a job the hub queues (``lua/arq.lua``'s ``hand_off``, called by
    the scripts that queue: enqueue, create, create_many; ``workers/loop.py``)."""
    return tag(pool) + "parked"


def _channel(tag_: str, name: str, db: int) -> str:
    # Redis has one pub/sub namespace for all its databases: deployments on two databases of
    # one server would hear each other's events unless the name says which. Database 0 keeps
    # the plain name. The hash tag puts a sharded channel on its keys' master
    # (contract/channels.py), and lets a script of those keys publish on it.
    return f"{PREFIX}{{{tag_}}}:{name}" if db == 0 else f"{PREFIX}db{db}:{{{tag_}}}:{name}"


def events_channel(pool: str, db: int) -> str:
    """Pub/sub channel every event of the pool's jobs (database ``db``) is published on; each
    hub process subscribes to every pool's (hub/fanout.py)."""
    tag(pool)
    return _channel(pool, "events", db)


def wake(pool: str, db: int) -> str:
    """Pub/sub channel that tells a pool's workers a job was queued, so they need not poll."""
    tag(pool)
    return _channel(pool, "wake", db)


def handoff(pool: str, worker_id: str, db: int) -> str:
    """Pub/sub channel on which the hub hands a job to a parked worker of the pool, claimed on
    its behalf (``lua/arq.lua``'s ``hand_off``); in the pool's slot, so that the script may
    publish on it."""
    tag(pool)
    return _channel(pool, f"handoff:{worker_id}", db)


def hand_off_args(pool: str, db: int) -> dict[str, str | int]:
    """The arguments of ``lua/arq.lua``'s ``hand_off``, as the scripts that queue a job take
    them."""
    return {
        "in_progress_prefix": in_progress_prefix(pool),
        "retry_prefix": retry_prefix(pool),
        "retry_ttl_s": RETRY_TTL_S,
        "lease_prefix": worker_lease(pool, ""),
        "handoff_prefix": handoff(pool, "", db),
    }


def repository_nudge(db: int) -> str:
    """Pub/sub channel that tells every worker to apply the repository's desired state now."""
    return _channel("repository", "nudge", db)


def webhooks_wake(pool: str, db: int) -> str:
    """Pub/sub channel that wakes the hubs' webhook senders when a delivery of the pool's jobs
    is queued."""
    tag(pool)
    return _channel(pool, "webhooks", db)


def ticket(digest: str) -> str:
    """A browser ticket (by the SHA-256 of its secret), single use, short-lived."""
    return f"{PREFIX}ticket:{digest}"


def rate(tenant: str) -> str:
    """The tenant's token bucket."""
    return f"{PREFIX}rate:{tenant}"


def worker(worker_id: str) -> str:
    """The worker's heartbeat record; it expires when the heartbeats stop. Every worker's is
    under one hash tag, so the catalogue reads them all with one MGET on a cluster too."""
    return f"{PREFIX}{{workers}}:{worker_id}"


def reply(hub_id: str) -> str:
    """Pub/sub channel on which workers answer the online batches of one hub process (its own
    hash tag: on a cluster, hubs' replies spread over the masters)."""
    return f"{PREFIX}{{reply-{hub_id}}}"


def model_stats(model: str, version: str) -> str:
    """Hash of a model version's statistics, the sum of every worker's counts (contract/stats.py)."""
    return f"{PREFIX}stats:{model}:{version}"
