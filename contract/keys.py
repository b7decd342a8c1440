"""Every Redis key and channel name inferhub uses, in one place (as arq's ``constants.py``)."""

PREFIX = "inferhub:"

EVENTS_STREAM = PREFIX + "events:log"
"""Capped stream of every event, for resuming the all-jobs feed."""

JOBS_INDEX = PREFIX + "jobs"
"""Sorted set of every job id scored by creation time (ms), newest last: the admin's listing."""

MODELS = PREFIX + "models"
"""Hash: model name -> JSON catalogue entry written by the workers that serve it."""

WORKERS = PREFIX + "workers"
"""Sorted set of worker ids scored by their last heartbeat (unix seconds)."""

REPOSITORY = PREFIX + "repository"
"""Hash: model name -> "unloaded" for each model unloaded through the repository extension;
workers serve every model of their pool's repository except these (contract/repository.py)."""

REPOSITORY_GENERATION = PREFIX + "repository:generation"
"""Counter bumped with every load/unload; a worker's record says the last one it applied."""

WEBHOOKS = PREFIX + "webhooks"
"""Sorted set of the webhook deliveries to make, ``"<job id> <event id> <attempt>"``, scored by
when (ms, Redis's clock) the next attempt is due (hub/webhooks/sender.py)."""


def job(job_id: str) -> str:
    """Hash holding the job record."""
    return f"{PREFIX}job:{job_id}"


def job_events(job_id: str) -> str:
    """Stream of the job's events; its ids are the event ids."""
    return f"{PREFIX}job:{job_id}:events"


def job_inputs(job_id: str) -> str:
    """The raw bytes of the job's large inputs, stored apart from its arq job
    (contract/inputs.py), with the job's TTL."""
    return f"{PREFIX}job:{job_id}:inputs"


def job_outputs(job_id: str) -> str:
    """The job's outputs, packed (contract/outputs.py), stored once with the job's TTL."""
    return f"{PREFIX}job:{job_id}:outputs"


def job_outputs_chunk(job_id: str, start: int) -> str:
    """One chunk of a job that streams its outputs, from row ``start`` (contract/outputs.py)."""
    return f"{PREFIX}job:{job_id}:outputs:{start}"


def job_cancel(job_id: str) -> str:
    """Set when a running job must stop at its next chunk."""
    return f"{PREFIX}job:{job_id}:cancel"


def owner_jobs(owner: str) -> str:
    """Sorted set of the owner's job ids scored by creation time (ms): the tenant's listing."""
    return f"{PREFIX}owner:{owner}:jobs"


def owner_queued(owner: str) -> str:
    """Sorted set of the owner's jobs not yet started, for the per-tenant queue bound."""
    return f"{PREFIX}owner:{owner}:queued"


def owner_bytes(owner: str) -> str:
    """Hash of the bytes each of the owner's jobs stores (inputs, parameters), and ``_total``."""
    return f"{PREFIX}owner:{owner}:bytes"


def idempotency(owner: str, key: str) -> str:
    return f"{PREFIX}idem:{owner}:{key}"


def queue(pool: str) -> str:
    """The arq queue (a sorted set) of a pool."""
    return f"{PREFIX}queue:{pool}"


def _channel(name: str, db: int) -> str:
    # Redis has one pub/sub namespace for all its databases: deployments on two databases of
    # one server would hear each other's events unless the name says which. Database 0 keeps
    # the plain name.
    return f"{PREFIX}{name}" if db == 0 else f"{PREFIX}db{db}:{name}"


def events_channel(db: int) -> str:
    """Pub/sub channel every event of database ``db`` is published on; each hub process
    subscribes once."""
    return _channel("events", db)


def wake(pool: str, db: int) -> str:
    """Pub/sub channel that tells a pool's workers a job was queued, so they need not poll."""
    return _channel(f"wake:{pool}", db)


def repository_nudge(db: int) -> str:
    """Pub/sub channel that tells every worker to apply the repository's desired state now."""
    return _channel("repository", db)


def webhooks_wake(db: int) -> str:
    """Pub/sub channel that wakes the hubs' webhook senders when a delivery is queued."""
    return _channel("webhooks", db)


def ticket(digest: str) -> str:
    """A browser ticket (by the SHA-256 of its secret), single use, short-lived."""
    return f"{PREFIX}ticket:{digest}"


def rate(tenant: str) -> str:
    """The tenant's token bucket."""
    return f"{PREFIX}rate:{tenant}"


def worker(worker_id: str) -> str:
    """The worker's heartbeat record; it expires when the heartbeats stop."""
    return f"{PREFIX}worker:{worker_id}"


def reply(hub_id: str) -> str:
    """Pub/sub channel on which workers answer the online batches of one hub process."""
    return f"{PREFIX}reply:{hub_id}"


def model_stats(model: str, version: str) -> str:
    """Hash of a model version's statistics, the sum of every worker's counts (contract/stats.py)."""
    return f"{PREFIX}stats:{model}:{version}"
