"""The Lua scripts of ``contract/lua/``, called directly through ``contract.scripts`` on the
module's Redis database, one table of cases per script.

Each row is (case, setup, call, expected): the keys written before, what the script is called
with, and what it returns plus the keys afterwards. Every key lives under a prefix of its own
(``t:lua:{<uuid>}:``, one hash tag), channels included, so no other test sees these jobs or their
events. The module runs on one Redis and on a Redis Cluster (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import msgpack
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from contract import scripts
from contract.channels import Subscriber, publish
from contract.connection import cluster_target

TOPOLOGIES = ("single", "cluster")

TTL = 60
T0 = 1_700_000_000_000  # a creation time (ms)
EXPIRED = T0 - TTL * 1000  # an index entry scored below this is older than the TTL


# ---- state: what a row writes before the call and expects after it


@dataclass(frozen=True)
class Hash:
    fields: Mapping[str, str]


@dataclass(frozen=True)
class ZSet:
    members: Mapping[str, float]


@dataclass(frozen=True)
class Str:
    value: str
    px: int | None = field(default=None, compare=False)  # a time to live (ms), set up only


@dataclass(frozen=True)
class Stream:
    """A stream's event payloads, in order (read-only: the scripts write the streams)."""

    events: Sequence[str]


Value = Hash | ZSet | Str | Stream
State = Mapping[str, Value | None]  # key name (under the test's prefix) -> value; None: absent


@dataclass
class Keys:
    """Key and channel names under a prefix of the test's own."""

    # a hash tag of its own: on a cluster every key of a test lies in one slot, as a pool's do
    prefix: str = field(default_factory=lambda: f"t:lua:{{{uuid.uuid4().hex}}}")

    def __call__(self, name: str) -> str:
        return f"{self.prefix}:{name}" if name else ""

    def many(self, *names: str) -> dict[str, str]:
        return {name: self(name) for name in names}


async def write(r: Redis, k: Keys, state: State) -> None:
    for name, value in state.items():
        match value:
            case Hash(fields):
                await r.hset(k(name), mapping=dict(fields))  # type: ignore[misc]
            case ZSet(members):
                await r.zadd(k(name), dict(members))
            case Str(text, px):
                await r.set(k(name), text, px=px)
            case _:
                raise AssertionError(f"cannot set up {value!r}")


async def read(r: Redis, key: str) -> Value | None:
    kind = await r.type(key)
    if kind == "hash":
        return Hash(await r.hgetall(key))  # type: ignore[misc]
    if kind == "zset":
        return ZSet(dict(await r.zrange(key, 0, -1, withscores=True)))
    if kind == "string":
        return Str(await r.get(key))
    if kind == "stream":
        return Stream([body["e"] for _, body in await r.xrange(key)])
    assert kind == "none", f"{key} is a {kind}"
    return None


async def check(r: Redis, k: Keys, expected: State) -> None:
    for name, value in expected.items():
        assert await read(r, k(name)) == value, name


async def snapshot(r: Redis, k: Keys) -> dict[str, Value | None]:
    """Every key under the test's prefix, for the rows that must write nothing."""
    return {key: await read(r, key) async for key in r.scan_iter(f"{k.prefix}:*", count=1000)}


@contextlib.asynccontextmanager
async def subscribed(r: Redis, channel: str) -> AsyncIterator[Subscriber]:
    """A pubsub on ``channel``, its subscription confirmed (so no publish can precede it)."""
    async with Subscriber(r) as pubsub:
        await pubsub.subscribe(channel)  # returns once the server confirmed it
        yield pubsub


async def next_message(pubsub: Subscriber) -> str:
    async with asyncio.timeout(5):
        _, data = await pubsub.get()
    return data.decode()


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[Redis]:
    target = cluster_target(redis_url)
    if target is None:
        client = Redis.from_url(redis_url, decode_responses=True)
    else:
        nodes = [ClusterNode(host, port) for host, port in target.nodes]
        client = cast(Redis, RedisCluster(startup_nodes=nodes, decode_responses=True))
    yield client
    await client.aclose()


@pytest.fixture
def k(redis: SyncRedis) -> Iterator[Keys]:
    names = Keys()
    yield names
    found = list(redis.scan_iter(f"{names.prefix}:*", count=1000))
    if found:
        redis.delete(*found)


# ---- transition


TRANSITION = scripts.load("transition")
STATUSES = ("queued", "started", "succeeded", "failed", "canceled")


@dataclass(frozen=True)
class Step:
    """A step as workers/runner.py builds it (the guard's value is among its fields)."""

    event: str
    allowed: str
    status: str = ""
    guard: tuple[str, int] | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    outputs: str = ""  # the packed outputs an ending step stores

    def flat(self) -> list[Any]:
        """The step's values, as append.lua's ``read_steps`` takes them."""
        guard = dict([(self.guard[0], str(self.guard[1]))]) if self.guard else {}
        fields = [x for kv in {**self.fields, **guard}.items() for x in kv]
        return [
            self.event,
            self.allowed,
            self.status,
            self.guard[0] if self.guard else "",
            str(self.guard[1]) if self.guard else "",
            "1" if self.outputs else "",
            str(len(fields)),
            *fields,
        ]

    def args(self, k: Keys) -> dict[str, Any]:
        return steps_args(k, self)

    def after(self, record: Mapping[str, str]) -> dict[str, str]:
        """The record once this step is appended."""
        guard = dict([(self.guard[0], str(self.guard[1]))]) if self.guard else {}
        status = {"status": self.status} if self.status else {}
        return {**record, **status, **self.fields, **guard}


def steps_args(k: Keys, *steps: Step) -> dict[str, Any]:
    """The script's arguments for these steps, in one call."""
    return {
        "channel": k("channel"),
        "ttl": TTL,
        "job_maxlen": 100,
        "log_maxlen": 1000,
        "job_id": "j",
        "webhook_wake": k("webhook_wake"),
        # one argument, as contract/jobstore.py sends them (Redis 7.0's cmsgpack reads no bin)
        "steps": msgpack.packb([x for step in steps for x in step.flat()], use_bin_type=False),
        "outputs": "".join(step.outputs for step in steps),
    }


async def one_step(r: Redis, k: Keys, step: Step) -> list[Any]:
    """Call the script with one step: its {appended, status before, event id, cancel}."""
    [result] = await TRANSITION(r, keys=k.many(*TRANSITION.keys), args=step.args(k))
    return list(result)


def started(attempt: int) -> Step:
    worker = {"worker": "w1"}
    return Step(f"started {attempt}", "queued started", "started", ("attempt", attempt), worker)


def progress(done: int) -> Step:
    return Step(f"progress {done}", "started", guard=("done", done))


def ended(status: str) -> Step:
    return Step(status, "started", status, fields={"finished_at": "2.5"})


# the steps workers/runner.py takes, each from every status
MATRIX_STEPS = (started(2), progress(1), ended("succeeded"), ended("failed"), ended("canceled"))


def matrix_rows() -> Iterator[Any]:
    for before in STATUSES:
        # a job that left `queued` has run once; a stray owner_queued entry shows who removes
        # it: the step that leaves `queued`, and no other (only create.lua adds entries)
        record = {"status": before} if before == "queued" else {"status": before, "attempt": "1"}
        setup: State = {"record": Hash(record), "owner_queued": ZSet({"j": T0, "other": T0})}
        for step in MATRIX_STEPS:
            allowed = before in step.allowed.split()
            leaves = allowed and step.status != "" and before == "queued"
            expected = {
                "record": Hash(step.after(record) if allowed else record),
                "owner_queued": ZSet({"other": T0} if leaves else {"j": T0, "other": T0}),
                "log": Stream([step.event]) if allowed else None,
                "events": Stream([step.event]) if allowed else None,
            }
            case = f"{step.event.split()[0]} from {before}: {'appended' if allowed else 'refused'}"
            yield pytest.param(
                setup, (step,), ([int(allowed), before, allowed, 0],), expected, id=case
            )


GUARDED = {"status": "started", "attempt": "2", "worker": "w0", "done": "4"}

TRANSITION_ROWS = [
    *matrix_rows(),
    pytest.param(
        {}, (started(1),), ([0, "", False, 0],), {"record": None, "log": None}, id="missing job"
    ),
    pytest.param(
        {"record": Hash({"status": "started"}), "cancel": Str("1")},
        (progress(1), ended("succeeded")),
        ([1, "started", True, 1], [1, "started", True, 1]),
        {"record": Hash({"status": "succeeded", "done": "1", "finished_at": "2.5"})},
        id="cancel requested: reported with each step",
    ),
    pytest.param(
        {"record": Hash({"status": "succeeded"}), "cancel": Str("1")},
        (progress(1),),
        ([0, "succeeded", False, 1],),
        {"record": Hash({"status": "succeeded"})},
        id="cancel requested: reported when refused too",
    ),
    # outputs are stored once, by the step that ends the job, and only if it is applied
    pytest.param(
        {"record": Hash({"status": "started"})},
        (Step("succeeded", "started", "succeeded", outputs="packed"),),
        ([1, "started", True, 0],),
        {"record": Hash({"status": "succeeded"}), "outputs": Str("packed")},
        id="succeeded: stores the outputs",
    ),
    pytest.param(
        {"record": Hash({"status": "canceled"})},
        (Step("succeeded", "started", "succeeded", outputs="packed"),),
        ([0, "canceled", False, 0],),
        {"record": Hash({"status": "canceled"}), "outputs": None},
        id="succeeded refused: stores nothing",
    ),
    # the retry guard
    pytest.param(
        {"record": Hash(GUARDED)},
        (started(2),),
        ([1, "started", False, 0],),
        {"record": Hash(GUARDED), "log": None, "events": None},
        id="guard: same attempt again is a no-op that succeeds",
    ),
    pytest.param(
        {"record": Hash(GUARDED)},
        (started(1),),
        ([0, "started", False, 0],),
        {"record": Hash(GUARDED), "log": None, "events": None},
        id="guard: older attempt refused",
    ),
    pytest.param(
        {"record": Hash(GUARDED)},
        (started(3),),
        ([1, "started", True, 0],),
        {
            "record": Hash({**GUARDED, "attempt": "3", "worker": "w1"}),
            "events": Stream(["started 3"]),
        },
        id="guard: newer attempt appended",
    ),
    pytest.param(
        {"record": Hash(GUARDED)},
        (progress(4),),
        ([1, "started", False, 0],),
        {"record": Hash(GUARDED), "events": None},
        id="guard: same progress again is a no-op that succeeds",
    ),
    pytest.param(
        {"record": Hash(GUARDED)},
        (progress(3),),
        ([0, "started", False, 0],),
        {"record": Hash(GUARDED), "events": None},
        id="guard: older progress refused",
    ),
    pytest.param(
        {"record": Hash(GUARDED)},
        (progress(10),),
        ([1, "started", True, 0],),
        {"record": Hash({**GUARDED, "done": "10"}), "events": Stream(["progress 10"])},
        id="guard: compared as numbers (10 after 4)",
    ),
    pytest.param(
        {"record": Hash({"status": "queued"}), "owner_queued": ZSet({"j": T0})},
        (started(1), started(1), progress(5), progress(5), ended("failed"), ended("failed")),
        (
            [1, "queued", True, 0],
            [1, "started", False, 0],
            [1, "started", True, 0],
            [1, "started", False, 0],
            [1, "started", True, 0],
            [0, "failed", False, 0],
        ),
        {
            "record": Hash(
                {
                    "status": "failed",
                    "attempt": "1",
                    "worker": "w1",
                    "done": "5",
                    "finished_at": "2.5",
                }
            ),
            "owner_queued": None,
            "log": Stream(["started 1", "progress 5", "failed"]),
            "events": Stream(["started 1", "progress 5", "failed"]),
        },
        id="a whole job, every step sent twice: each event once",
    ),
]


@pytest.mark.parametrize(("setup", "calls", "returns", "expected"), TRANSITION_ROWS)
async def test_transition(
    r: Redis,
    k: Keys,
    setup: State,
    calls: Sequence[Step],
    returns: Sequence[list[Any]],
    expected: State,
) -> None:
    await write(r, k, setup)
    for step, want in zip(calls, returns, strict=True):
        appended, before, event_id, cancel = await one_step(r, k, step)
        assert [appended, before, event_id != "", cancel] == want, step
    await check(r, k, expected)
    assert not await r.exists(k("webhooks"))  # the record names no webhook
    # one id for an event in both streams, so either feed resumes from it
    log_ids = [i for i, _ in await r.xrange(k("log"))]
    assert [i for i, _ in await r.xrange(k("events"))] == log_ids
    if log_ids:  # the steps leave the stream's expiry as create.lua set it (none here)
        assert await r.ttl(k("events")) == -1


async def test_transition_keeps_the_expiry_of_the_record_and_stream(r: Redis, k: Keys) -> None:
    await write(r, k, {"record": Hash({"status": "queued"})})
    await r.xadd(k("events"), {"e": "queued"}, id="1-0")
    for key in (k("record"), k("events")):
        await r.expire(key, TTL // 2)
    for step in (started(1), ended("succeeded")):
        appended, *_ = await one_step(r, k, step)
        assert appended == 1
    for key in (k("record"), k("events")):
        assert 0 < await r.ttl(key) <= TTL // 2
    await check(r, k, {"events": Stream(["queued", "started 1", "succeeded"])})


async def test_transition_publishes_its_event(r: Redis, k: Keys) -> None:
    await write(r, k, {"record": Hash({"status": "queued"})})
    async with subscribed(r, k("channel")) as pubsub:
        _, _, event_id, _ = await one_step(r, k, started(1))
        assert await next_message(pubsub) == f"{event_id} started 1"


# ---- cancel

CANCEL = scripts.load("cancel")
QUEUED_JOB: State = {
    "queue": ZSet({"j": 5, "other": 6}),
    "owner_queued": ZSet({"j": T0, "other": T0}),
    "arq_job": Str("payload"),
}


def cancel_row(status: str, expected: State | None, *, id: str) -> Any:
    return pytest.param({**QUEUED_JOB, "record": Hash({"status": status})}, status, expected, id=id)


CANCEL_ROWS = [
    cancel_row(
        "queued",
        {
            "record": Hash({"status": "canceled", "finished_at": "123.5"}),
            "queue": ZSet({"other": 6}),
            "owner_queued": ZSet({"other": T0}),
            "arq_job": None,
            "cancel": None,
            "log": Stream(["canceled"]),
            "events": Stream(["canceled"]),
        },
        id="queued: canceled at once",
    ),
    cancel_row(
        "started",
        {
            **QUEUED_JOB,
            "record": Hash({"status": "started"}),
            "cancel": Str("1"),
            "log": None,
            "events": None,
        },
        id="started: flagged, no event",
    ),
    *(cancel_row(s, None, id=f"{s}: nothing changes") for s in ("succeeded", "failed", "canceled")),
    pytest.param(QUEUED_JOB, "", None, id="missing: nothing changes"),
]


@pytest.mark.parametrize(("setup", "returns", "expected"), CANCEL_ROWS)
async def test_cancel(
    r: Redis, k: Keys, setup: State, returns: str, expected: State | None
) -> None:
    await write(r, k, setup)
    before = await snapshot(r, k)
    status = await CANCEL(
        r,
        keys=k.many(*CANCEL.keys),
        args={
            "channel": k("channel"),
            "event": "canceled",
            "ttl": TTL,
            "job_maxlen": 100,
            "log_maxlen": 1000,
            "webhook_wake": k("webhook_wake"),
            "job_id": "j",
            "finished_at": "123.5",
        },
    )
    assert status == returns
    if expected is None:
        assert await snapshot(r, k) == before
    else:
        await check(r, k, expected)
    if expected and expected.get("cancel"):
        assert 0 < await r.ttl(k("cancel")) <= TTL


# ---- create

CREATE = scripts.load("create")
CREATE_KEYS = (
    "record",
    "events",
    "log",
    "idempotency",
    "arq_job",
    "queue",
    "index",
    "owner_index",
    "owner_queued",
    "owner_bytes",
    "webhooks",
    "parked",
)
TRIM_EVERY_MS = 1000  # create.lua's upkeep of an owner's indexes, at most this often
RECORD = {"id": "j", "status": "queued", "model": "m", "owner": "o", "created_at": "1700000000.0"}


def hand_off_args(k: Keys) -> dict[str, Any]:
    """As contract.keys.hand_off_args names them, under the test's prefix."""
    return {
        "in_progress_prefix": k("ip:"),
        "retry_prefix": k("retry:"),
        "retry_ttl_s": 600,
        "lease_prefix": k("worker:"),
        "handoff_prefix": k("handoff:"),
    }


def create_args(k: Keys, **changes: Any) -> dict[str, Any]:
    return {
        "channel": k("channel"),
        "event": "queued",
        "ttl": TTL,
        "job_maxlen": 100,
        "log_maxlen": 1000,
        "webhook_wake": k("webhook_wake"),
        "idem_value": "j fp",
        "arq_payload": "payload",
        "score": T0 - 100_000,
        "created_ms": T0,
        "wake": k("wake"),
        "job_id": "j",
        "max_queued": 2,
        "max_owner_queued": 2,
        "stored_bytes": 100,
        "max_owner_bytes": 1000,
        **hand_off_args(k),
        "fields": [x for kv in RECORD.items() for x in kv],
        **changes,
    }


CREATED: State = {
    "record": Hash(RECORD),
    "log": Stream(["queued"]),
    "events": Stream(["queued"]),
    "idempotency": Str("j fp"),
    "arq_job": Str("payload"),
    "queue": ZSet({"j": T0 - 100_000}),
    "index": ZSet({"j": T0}),
    "owner_index": ZSet({"j": T0}),
    "owner_queued": ZSet({"j": T0}),
    "owner_bytes": Hash({"j": "100", "_total": "100", "_trim": str(T0 + TRIM_EVERY_MS)}),
}
FULL_QUEUE: State = {"queue": ZSet({"a": 1, "b": 2})}
FULL_OWNER: State = {"owner_queued": ZSet({"a": T0 - 1, "b": EXPIRED})}  # both still count

CREATE_ROWS = [
    pytest.param({}, {}, {}, (1, True), CREATED, id="created"),
    pytest.param(
        {},
        {},
        {"idem_value": ""},
        (1, True),
        {**CREATED, "idempotency": None},
        id="created without an idempotency key",
    ),
    pytest.param(
        {"record": Hash({"status": "started"})}, {}, {}, (1, ""), None, id="retried create"
    ),
    pytest.param({"idempotency": Str("i fp")}, {}, {}, (0, "i fp"), None, id="idempotency repeat"),
    pytest.param(
        {"idempotency": Str("i fp"), **FULL_QUEUE},
        {},
        {},
        (0, "i fp"),
        None,
        id="idempotency repeat, queue full: the repeat",
    ),
    pytest.param(FULL_QUEUE, {}, {}, (2, ""), None, id="pool queue full"),
    pytest.param(FULL_OWNER, {}, {}, (3, ""), None, id="owner share full"),
    pytest.param(
        {"owner_queued": ZSet({"a": EXPIRED - 1, "b": EXPIRED - 10_000, "c": EXPIRED})},
        {},
        {},
        (1, True),
        {**CREATED, "owner_queued": ZSet({"c": EXPIRED, "j": T0})},
        id="expired owner_queued entries pruned first",
    ),
    pytest.param(
        {"owner_bytes": Hash({"x": "950", "_total": "950"}), "owner_index": ZSet({"x": EXPIRED})},
        {},
        {},
        (4, "950"),
        None,
        id="owner storage full",
    ),
    pytest.param(
        {
            "owner_bytes": Hash({"x": "950", "y": "20", "_total": "970"}),
            "owner_index": ZSet({"x": EXPIRED - 1, "y": T0 - 5}),
            "index": ZSet({"x": EXPIRED - 1, "y": T0 - 5}),
        },
        {},
        {},
        (1, True),
        {
            **CREATED,
            "owner_bytes": Hash(
                {"y": "20", "j": "100", "_total": "120", "_trim": str(T0 + TRIM_EVERY_MS)}
            ),
            "owner_index": ZSet({"y": T0 - 5, "j": T0}),
            "index": ZSet({"y": T0 - 5, "j": T0}),
        },
        id="expired jobs' bytes and index entries released",
    ),
]


@pytest.mark.parametrize(
    ("setup", "key_changes", "arg_changes", "returns", "expected"), CREATE_ROWS
)
async def test_create(
    r: Redis,
    k: Keys,
    setup: State,
    key_changes: Mapping[str, str],
    arg_changes: Mapping[str, Any],
    returns: tuple[int, str | bool],
    expected: State | None,
) -> None:
    await write(r, k, setup)
    before = await snapshot(r, k)
    names = {**k.many(*CREATE_KEYS), **key_changes}
    code, value = await CREATE(r, keys=names, args=create_args(k, **arg_changes))
    if returns[1] is True:  # the new event's id
        assert code == returns[0] and value == (await r.xrange(k("log")))[0][0]
    else:
        assert (code, value) == returns
    if expected is None:
        assert await snapshot(r, k) == before
        return
    await check(r, k, expected)
    assert [i for i, _ in await r.xrange(k("events"))] == [value]
    # everything a job writes expires with it (the indexes a little later, so that they
    # outlive every job they list), but the global log and arq's queue
    indexes = [k(n) for n in ("index", "owner_index", "owner_queued", "owner_bytes")]
    for key in await snapshot(r, k):
        if key not in (k("log"), k("queue")):
            most = TTL * 1000 + (TRIM_EVERY_MS if key in indexes else 0)
            assert 0 < await r.pttl(key) <= most, key


STALE: State = {  # an owner's indexes holding an expired job, x
    "index": ZSet({"x": EXPIRED - 1}),
    "owner_index": ZSet({"x": EXPIRED - 1}),
    "owner_queued": ZSet({"x": EXPIRED - 1}),
}


async def test_create_keeps_up_the_indexes_once_a_while(r: Redis, k: Keys) -> None:
    """Between two upkeeps (``_trim``: the next is due) a create only adds to the indexes."""
    bytes_ = {"x": "10", "_total": "10", "_trim": str(T0 + 500)}
    await write(r, k, {**STALE, "owner_bytes": Hash(bytes_)})
    code, _ = await CREATE(r, keys=k.many(*CREATE_KEYS), args=create_args(k))
    assert code == 1
    after = {n: ZSet({"x": EXPIRED - 1, "j": T0}) for n in STALE}
    await check(r, k, {**after, "owner_bytes": Hash({**bytes_, "j": "100", "_total": "110"})})


@pytest.mark.parametrize(
    ("next_trim", "arg_changes"),
    [
        (T0, {}),
        (T0 + 5000, {}),
        (T0 + 500, {"max_owner_queued": 1}),
        (T0 + 500, {"max_owner_bytes": 105}),
    ],
    ids=["due", "a clock behind the last one's", "owner share full", "owner storage full"],
)
async def test_create_keeps_up_the_indexes_when_due_or_a_bound_would_refuse(
    r: Redis, k: Keys, next_trim: int, arg_changes: Mapping[str, Any]
) -> None:
    bytes_ = {"x": "10", "_total": "10", "_trim": str(next_trim)}
    await write(r, k, {**STALE, "owner_bytes": Hash(bytes_)})
    code, _ = await CREATE(r, keys=k.many(*CREATE_KEYS), args=create_args(k, **arg_changes))
    assert code == 1
    after = {n: ZSet({"j": T0}) for n in STALE}
    trim = str(T0 + TRIM_EVERY_MS)
    await check(r, k, {**after, "owner_bytes": Hash({"j": "100", "_total": "100", "_trim": trim})})
    for name in (*STALE, "owner_bytes"):
        assert TTL * 1000 < await r.pttl(k(name)) <= TTL * 1000 + TRIM_EVERY_MS, name


async def test_create_gives_a_remade_owner_queued_set_an_expiry(r: Redis, k: Keys) -> None:
    """Its jobs all started (so the set went), it is made anew between two upkeeps."""
    await write(r, k, {"owner_bytes": Hash({"_total": "0", "_trim": str(T0 + 500)})})
    code, _ = await CREATE(r, keys=k.many(*CREATE_KEYS), args=create_args(k))
    assert code == 1
    assert 0 < await r.pttl(k("owner_queued")) <= TTL * 1000 + TRIM_EVERY_MS


async def test_create_wakes_the_pool(r: Redis, k: Keys) -> None:
    async with subscribed(r, k("wake")) as pubsub:
        code, _ = await CREATE(r, keys=k.many(*CREATE_KEYS), args=create_args(k))
        assert code == 1
        assert await next_message(pubsub) == ""


async def test_create_hands_the_job_to_a_live_parked_worker_that_hears(r: Redis, k: Keys) -> None:
    """As an online batch's enqueue: w1's lease is gone, passed over; w2 holds the job as its
    claim would and hears 'id tries arq-job'; nobody is woken; the job is made as ever."""
    await write(r, k, {"parked": Hash({"w1": "1000", "w2": "30000"}), "worker:w2": Str("1")})
    async with subscribed(r, k("handoff:w2")) as handoffs, subscribed(r, k("wake")) as wake:
        code, _ = await CREATE(r, keys=k.many(*CREATE_KEYS), args=create_args(k))
        assert code == 1
        assert await next_message(handoffs) == "j 1 payload"
        await publish(r, k("wake"), "marker")
        assert await next_message(wake) == "marker"
    handed = {"ip:j": Str("w2"), "retry:j": Str("1"), "parked": None}
    await check(r, k, {**CREATED, **handed})
    assert 0 < await r.pttl(k("ip:j")) <= 30_000


async def test_a_refused_create_hands_nothing_to_a_parked_worker(r: Redis, k: Keys) -> None:
    parked: State = {"parked": Hash({"w2": "30000"}), "worker:w2": Str("1")}
    await write(r, k, {**parked, **FULL_QUEUE})
    code, _ = await CREATE(r, keys=k.many(*CREATE_KEYS), args=create_args(k))
    assert code == 2
    await check(r, k, {**parked, **FULL_QUEUE, "ip:j": None, "retry:j": None, "record": None})


# ---- claim

CLAIM = scripts.load("claim")
ALIVE: State = {"worker:w1": Str("{}")}
HOLD_MS = 30_000


def claim_args(k: Keys, **changes: Any) -> dict[str, Any]:
    """The claim's arguments: worker w1 with room for one job, and what it reads with each job
    (the arq job and its tries)."""
    return {
        "in_progress_prefix": k("ip:"),
        "in_progress_ms": HOLD_MS,
        "now_ms": 1000,
        "room": 1,
        "worker_id": "w1",
        "page": 256,
        "job_prefix": k("job:"),
        "retry_prefix": k("retry:"),
        "retry_ttl_s": 600,
        "park": 0,
        "running": [],
        **changes,
    }


def claim_keys(k: Keys) -> dict[str, str]:
    return {"queue": k("queue"), "heartbeat": k("worker:w1"), "parked": k("parked")}


CLAIM_ROWS = [
    pytest.param(
        {**ALIVE, "queue": ZSet({"c": 3, "a": 1, "b": 2})},
        {"room": 2},
        ["a", "1", "b", "2"],
        {"ip:a": Str("w1"), "ip:b": Str("w1"), "ip:c": None},
        id="free jobs in score order, up to the room",
    ),
    pytest.param(
        {**ALIVE, "queue": ZSet({"a": 1, "b": 2})},
        {"room": 5},
        ["a", "1", "b", "2"],
        {"ip:a": Str("w1"), "ip:b": Str("w1")},
        id="room beyond the queue",
    ),
    pytest.param(
        {**ALIVE, "queue": ZSet({"a": 1, "b": 2, "c": 3}), "ip:b": Str("w2")},
        {"room": 2},
        ["a", "1", "c", "3"],
        {"ip:a": Str("w1"), "ip:b": Str("w2"), "ip:c": Str("w1")},
        id="skips a held job",
    ),
    pytest.param(
        {
            **ALIVE,
            "queue": ZSet({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}),
            **{f"ip:{j}": Str("w2") for j in "abcd"},
        },
        {"room": 1, "page": 2},
        ["e", "5"],
        {**{f"ip:{j}": Str("w2") for j in "abcd"}, "ip:e": Str("w1")},
        id="reads past pages of held jobs",
    ),
    pytest.param(
        {**ALIVE, "queue": ZSet({"a": 1, "b": 2}), "ip:a": Str("w2"), "ip:b": Str("w2")},
        {"room": 1, "page": 2},
        [],
        {"ip:a": Str("w2"), "ip:b": Str("w2")},
        id="every job held, a page exactly",
    ),
    pytest.param(
        {**ALIVE, "queue": ZSet({"a": 500, "b": 1000, "c": 1001})},
        {"room": 3},
        ["a", "500", "b", "1000"],
        {"ip:c": None},
        id="not before its score",
    ),
    pytest.param(
        {"queue": ZSet({"a": 1})},
        {"room": 1},
        [],
        {"ip:a": None},
        id="no heartbeat: nothing",
    ),
    pytest.param(ALIVE, {"room": 1}, [], {}, id="empty queue"),
    pytest.param(
        {**ALIVE, "queue": ZSet({"a": 1, "b": 2, "c": 3}), "ip:a": Str("w1")},
        {"room": 2, "running": ["a", "b"]},
        ["c", "3"],
        {"ip:a": Str("w1"), "ip:b": None, "ip:c": Str("w1")},
        id="skips the jobs it runs (a hold gone too: the reaper's business)",
    ),
]


@pytest.mark.parametrize(("setup", "arg_changes", "returns", "expected"), CLAIM_ROWS)
async def test_claim(
    r: Redis,
    k: Keys,
    setup: State,
    arg_changes: Mapping[str, Any],
    returns: list[str],
    expected: State,
) -> None:
    await write(r, k, setup)
    args = claim_args(k, **arg_changes)
    claimed = await CLAIM(r, keys=claim_keys(k), args=args)
    # {id, score, arq job, tries, ...}: no arq job was written here, each is a first try
    assert [x for i in range(0, len(claimed), 4) for x in claimed[i : i + 2]] == returns
    assert claimed[2::4] == [None] * (len(claimed) // 4)
    assert claimed[3::4] == [1] * (len(claimed) // 4)
    await check(r, k, expected)
    for job_id in claimed[::4]:
        assert 0 < await r.pttl(k(f"ip:{job_id}")) <= HOLD_MS
        assert 0 < await r.ttl(k(f"retry:{job_id}")) <= 600


async def test_claim_reads_the_job_and_counts_its_tries(r: Redis, k: Keys) -> None:
    await write(
        r, k, {**ALIVE, "queue": ZSet({"a": 1}), "job:a": Str("payload"), "retry:a": Str("2")}
    )
    args = claim_args(k)
    claimed = await CLAIM(r, keys=claim_keys(k), args=args)
    assert claimed == ["a", "1", "payload", 3]  # the third try: two ran before
    await check(r, k, {"retry:a": Str("3"), "ip:a": Str("w1"), "job:a": Str("payload")})
    assert await r.ttl(k("retry:a")) == -1  # the count's expiry is set by the first try only


async def test_claim_takes_a_job_handed_to_it_that_it_does_not_run(r: Redis, k: Keys) -> None:
    """A handoff the worker never read (enqueue.lua held the job in its name and counted the
    try): its claim takes it, the try counted once; one it runs, or another's, it leaves."""
    await write(
        r,
        k,
        {
            **ALIVE,
            "queue": ZSet({"a": 1, "b": 2, "c": 3}),
            **{f"ip:{j}": Str(w, px=HOLD_MS) for j, w in (("a", "w1"), ("b", "w1"), ("c", "w2"))},
            **{f"retry:{j}": Str("2") for j in "abc"},
            "job:a": Str("payload"),
        },
    )
    claimed = await CLAIM(r, keys=claim_keys(k), args=claim_args(k, room=3, running=["b"]))
    assert claimed == ["a", "1", "payload", 2]
    await check(r, k, {"ip:a": Str("w1"), "retry:a": Str("2"), "ip:c": Str("w2")})


@pytest.mark.parametrize(
    ("queue", "room", "park", "parked"),
    [
        pytest.param({"a": 1}, 2, 1, {"w1": str(HOLD_MS)}, id="room left: parks"),
        pytest.param({}, 1, 1, {"w1": str(HOLD_MS)}, id="empty queue: parks"),
        pytest.param({"a": 1}, 1, 1, None, id="room filled: leaves the set"),
        pytest.param({}, 1, 0, None, id="not hearing its handoffs: leaves the set"),
    ],
)
async def test_claim_parks_a_worker_with_room_once_nothing_is_due(
    r: Redis,
    k: Keys,
    queue: dict[str, float],
    room: int,
    park: int,
    parked: dict[str, str] | None,
) -> None:
    await write(r, k, {**ALIVE, "parked": Hash({"w1": "1", "w2": "5"})})
    if queue:
        await write(r, k, {"queue": ZSet(queue)})
    await CLAIM(r, keys=claim_keys(k), args=claim_args(k, room=room, park=park))
    await check(r, k, {"parked": Hash({**(parked or {}), "w2": "5"})})


# ---- enqueue: an online batch queued, and handed to a parked worker

ENQUEUE = scripts.load("enqueue")


async def enqueue(r: Redis, k: Keys) -> str | None:
    """Queue job ``a`` (score 7, ``payload``) as the hub does; the worker it was handed to."""
    handed: str | None = await ENQUEUE(
        r,
        keys={"job": k("job:a"), **k.many("queue", "parked", "wake")},
        args={
            "payload": "payload",
            "ttl_ms": 60_000,
            "id": "a",
            "score": 7,
            **hand_off_args(k),
        },
    )
    return handed


QUEUED: State = {"job:a": Str("payload"), "queue": ZSet({"a": 7})}


async def test_enqueue_with_no_worker_parked_wakes_the_pool(r: Redis, k: Keys) -> None:
    async with subscribed(r, k("wake")) as pubsub:
        assert await enqueue(r, k) is None
        assert await next_message(pubsub) == ""
    await check(r, k, {**QUEUED, "ip:a": None, "retry:a": None})
    assert 0 < await r.pttl(k("job:a")) <= 60_000


async def test_enqueue_hands_the_job_to_a_live_parked_worker_that_hears(r: Redis, k: Keys) -> None:
    """w1's lease is gone: passed over; w2 holds the job as its claim would (in-progress key,
    first try counted) and hears 'id tries arq-job' on its channel; nobody is woken."""
    await write(r, k, {"parked": Hash({"w1": "1000", "w2": "30000"}), "worker:w2": Str("1")})
    async with subscribed(r, k("handoff:w2")) as handoffs, subscribed(r, k("wake")) as wake:
        assert await enqueue(r, k) == "w2"
        assert await next_message(handoffs) == "a 1 payload"
        await publish(r, k("wake"), "marker")
        assert await next_message(wake) == "marker"
    await check(r, k, {**QUEUED, "ip:a": Str("w2"), "retry:a": Str("1"), "parked": None})
    assert 0 < await r.pttl(k("ip:a")) <= 30_000
    assert 0 < await r.ttl(k("retry:a")) <= 600


async def test_enqueue_passes_over_a_parked_worker_nobody_hears(r: Redis, k: Keys) -> None:
    """Its subscription dropped: the job is not held in its name (it would wait there for the
    hold to expire) and its try count is as it was; the pool is woken."""
    await write(r, k, {"parked": Hash({"w1": "30000"}), "worker:w1": Str("1"), "retry:a": Str("2")})
    async with subscribed(r, k("wake")) as pubsub:
        assert await enqueue(r, k) is None
        assert await next_message(pubsub) == ""
    await check(r, k, {**QUEUED, "ip:a": None, "retry:a": Str("2"), "parked": None})


# ---- reap

REAP = scripts.load("reap")

REAP_ROWS = [
    pytest.param(
        {"queue": ZSet({"a": 1}), "ip:a": Str("gone")},
        ["a"],
        {"ip:a": None},
        id="dead holder: released",
    ),
    pytest.param(
        {"queue": ZSet({"a": 1}), "ip:a": Str("w1"), "worker:w1": Str("{}")},
        [],
        {"ip:a": Str("w1")},
        id="live holder: kept",
    ),
    pytest.param(
        {
            "queue": ZSet({"a": 1}),
            "ip:a": Str("1"),
            "job:a": Hash({"status": "started", "worker": "gone"}),
        },
        ["a"],
        {"ip:a": None},
        id="legacy '1', started by a dead worker: released",
    ),
    pytest.param(
        {
            "queue": ZSet({"a": 1}),
            "ip:a": Str("1"),
            "job:a": Hash({"status": "started", "worker": "w1"}),
            "worker:w1": Str("{}"),
        },
        [],
        {"ip:a": Str("1")},
        id="legacy '1', started by a live worker: kept",
    ),
    pytest.param(
        {"queue": ZSet({"a": 1}), "ip:a": Str("1"), "job:a": Hash({"status": "queued"})},
        [],
        {"ip:a": Str("1")},
        id="legacy '1', not started: kept",
    ),
    pytest.param(
        {"queue": ZSet({"a": 1}), "ip:a": Str("1"), "job:a": Hash({"status": "started"})},
        [],
        {"ip:a": Str("1")},
        id="legacy '1', started, no worker named: kept",
    ),
    pytest.param(
        {
            "queue": ZSet({"a": 1}),
            "ip:a": Str("1"),
            "job:a": Hash({"status": "succeeded", "worker": "gone"}),
        },
        [],
        {"ip:a": Str("1")},
        id="legacy '1', finished by a dead worker: kept",
    ),
    pytest.param(
        {"queue": ZSet({"a": 1}), "ip:a": Str("1")},
        [],
        {"ip:a": Str("1")},
        id="legacy '1', no record: kept",
    ),
    pytest.param({"queue": ZSet({"a": 1})}, [], {"ip:a": None}, id="free job: nothing to do"),
    pytest.param(
        {
            "queue": ZSet({"a": 1, "b": 2, "c": 3, "d": 4}),
            "ip:a": Str("gone"),
            "ip:b": Str("w1"),
            "worker:w1": Str("{}"),
            "ip:d": Str("1"),
            "job:d": Hash({"status": "started", "worker": "gone"}),
        },
        ["a", "d"],
        {"ip:a": None, "ip:b": Str("w1"), "ip:c": None, "ip:d": None},
        id="mixed queue: the dead ones, in queue order",
    ),
]


OWN_HOLD_MS, OWN_GRACE_MS = 60_000, 5_000
"""A reaping worker ``me`` whose claims last a minute, and who keeps its own for 5 s."""

OWN_ROWS = [
    pytest.param(
        {"queue": ZSet({"a": 1}), "ip:a": Str("me", px=OWN_HOLD_MS - OWN_GRACE_MS - 1000)},
        [],
        ["a"],
        {"ip:a": None},
        id="own hold, not run, older than the grace: released",
    ),
    pytest.param(
        {"queue": ZSet({"a": 1}), "ip:a": Str("me", px=OWN_HOLD_MS - OWN_GRACE_MS - 1000)},
        ["a"],
        [],
        {"ip:a": Str("me")},
        id="own hold, run: kept",
    ),
    pytest.param(
        {"queue": ZSet({"a": 1}), "ip:a": Str("me", px=OWN_HOLD_MS)},
        [],
        [],
        {"ip:a": Str("me")},
        id="own hold, not run, just claimed (its reply on its way): kept",
    ),
    pytest.param(
        {
            "queue": ZSet({"a": 1, "b": 2}),
            "ip:a": Str("w1", px=OWN_HOLD_MS - OWN_GRACE_MS - 1000),
            "worker:w1": Str("{}"),
            "ip:b": Str("me", px=OWN_HOLD_MS - OWN_GRACE_MS - 1000),
        },
        ["a"],
        ["b"],
        {"ip:a": Str("w1"), "ip:b": None},
        id="a live worker's hold on a job this one runs not: kept",
    ),
]


def reap_args(k: Keys, scan: int = 1000, running: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "in_progress_prefix": k("ip:"),
        "job_prefix": k("job:"),
        "worker_prefix": k("worker:"),
        "scan": scan,
        "worker_id": "me",
        "hold_ms": OWN_HOLD_MS,
        "grace_ms": OWN_GRACE_MS,
        "running": list(running),
    }


@pytest.mark.parametrize(("setup", "returns", "expected"), REAP_ROWS)
async def test_reap(r: Redis, k: Keys, setup: State, returns: list[str], expected: State) -> None:
    await write(r, k, setup)
    released = await REAP(r, keys=k.many("queue", "wake"), args=reap_args(k))
    assert released == returns
    await check(r, k, expected)


@pytest.mark.parametrize(("setup", "running", "returns", "expected"), OWN_ROWS)
async def test_reap_own_holds(
    r: Redis, k: Keys, setup: State, running: list[str], returns: list[str], expected: State
) -> None:
    await write(r, k, setup)
    released = await REAP(r, keys=k.many("queue", "wake"), args=reap_args(k, running=running))
    assert released == returns
    await check(r, k, expected)


async def test_reap_looks_at_the_first_scan_entries_only(r: Redis, k: Keys) -> None:
    await write(r, k, {"queue": ZSet({"a": 1, "b": 2}), "ip:a": Str("gone"), "ip:b": Str("gone")})
    assert await REAP(r, keys=k.many("queue", "wake"), args=reap_args(k, scan=1)) == ["a"]
    await check(r, k, {"ip:b": Str("gone")})


@pytest.mark.parametrize(
    ("setup", "wakes"),
    [
        pytest.param({"queue": ZSet({"a": 1}), "ip:a": Str("gone")}, True, id="released: wakes"),
        pytest.param({"queue": ZSet({"a": 1})}, False, id="nothing released: silent"),
    ],
)
async def test_reap_wakes_the_pool_only_when_it_released(
    r: Redis, k: Keys, setup: State, wakes: bool
) -> None:
    await write(r, k, setup)
    async with subscribed(r, k("wake")) as pubsub:
        await REAP(r, keys=k.many("queue", "wake"), args=reap_args(k))
        await publish(r, k("wake"), "marker")  # what comes first: the reaper's or this
        assert await next_message(pubsub) == ("" if wakes else "marker")


# ---- give_back: a worker with no room for jobs held in its name

GIVE_BACK = scripts.load("give_back")


def give_back_args(k: Keys, *ids: str) -> dict[str, Any]:
    return {
        "in_progress_prefix": k("ip:"),
        "retry_prefix": k("retry:"),
        "worker_id": "me",
        "ids": list(ids),
    }


async def test_give_back_undoes_its_holds_and_their_tries_and_wakes_the_pool(
    r: Redis, k: Keys
) -> None:
    """a: its first try undone (the count goes); b: its third (back to two); c: held by
    another worker since (the reaper released it, another claimed it): left as it is."""
    await write(
        r,
        k,
        {
            "queue": ZSet({"a": 1, "b": 2, "c": 3}),
            "ip:a": Str("me", px=HOLD_MS),
            "ip:b": Str("me", px=HOLD_MS),
            "ip:c": Str("w2", px=HOLD_MS),
            "retry:a": Str("1"),
            "retry:b": Str("3"),
            "retry:c": Str("1"),
        },
    )
    async with subscribed(r, k("wake")) as pubsub:
        given = await GIVE_BACK(r, keys=k.many("wake"), args=give_back_args(k, "a", "b", "c"))
        assert given == ["a", "b"]
        assert await next_message(pubsub) == ""
    await check(
        r,
        k,
        {
            "queue": ZSet({"a": 1, "b": 2, "c": 3}),  # queued as they were: a claim takes them
            "ip:a": None,
            "ip:b": None,
            "ip:c": Str("w2"),
            "retry:a": None,
            "retry:b": Str("2"),
            "retry:c": Str("1"),
        },
    )


async def test_give_back_of_nothing_held_is_silent(r: Redis, k: Keys) -> None:
    await write(r, k, {"queue": ZSet({"a": 1}), "ip:a": Str("w2", px=HOLD_MS)})
    before = await snapshot(r, k)
    async with subscribed(r, k("wake")) as pubsub:
        assert await GIVE_BACK(r, keys=k.many("wake"), args=give_back_args(k, "a", "z")) == []
        await publish(r, k("wake"), "marker")
        assert await next_message(pubsub) == "marker"
    assert await snapshot(r, k) == before


# ---- queue_stats

QUEUE_STATS = scripts.load("queue_stats")

QUEUE_STATS_ROWS = [
    pytest.param({}, 1000, [0, 0, ""], id="empty"),
    pytest.param(
        {
            "queue": ZSet({"a": 1, "b": 2, "c": 3, "d": 4}),
            "ip:a": Str("w1"),
            "job:a": Hash({"created_at": "5"}),  # the oldest, but running
            "job:b": Hash({"created_at": "20"}),
            "job:c": Hash({"created_at": "10"}),
        },
        1000,
        [4, 1, "10"],
        id="total, running, oldest waiting (d has no record)",
    ),
    pytest.param(
        {"queue": ZSet({"a": 1, "b": 2}), "ip:a": Str("w1"), "ip:b": Str("w1")},
        1000,
        [2, 2, ""],
        id="all running",
    ),
    pytest.param(
        {
            "queue": ZSet({"a": 1, "b": 2}),
            "job:a": Hash({"created_at": "10.25"}),
            "job:b": Hash({"created_at": "9.5"}),
        },
        1000,
        [2, 0, "9.5"],
        id="created_at compared as numbers",
    ),
    pytest.param(
        {
            "queue": ZSet({"a": 1, "b": 2, "c": 3}),
            "ip:a": Str("w1"),
            "job:b": Hash({"created_at": "20"}),
            "job:c": Hash({"created_at": "1"}),
        },
        2,
        [3, 1, "20"],
        id="looks at the first `scan` entries only",
    ),
]


@pytest.mark.parametrize(("setup", "scan", "returns"), QUEUE_STATS_ROWS)
async def test_queue_stats(r: Redis, k: Keys, setup: State, scan: int, returns: list[Any]) -> None:
    await write(r, k, setup)
    args = {"in_progress_prefix": k("ip:"), "job_prefix": k("job:"), "scan": scan}
    assert await QUEUE_STATS(r, keys={"queue": k("queue")}, args=args) == returns


# ---- take_token

TAKE_TOKEN = scripts.load("take_token")


@pytest.mark.parametrize(
    ("burst", "rate"),
    [
        pytest.param(1, 0.01, id="burst 1"),
        pytest.param(3, 0.01, id="burst 3"),
        pytest.param(2, 0.5, id="rate 0.5/s"),
    ],
)
async def test_take_token_burst_then_wait(r: Redis, k: Keys, burst: int, rate: float) -> None:
    """At these rates a token takes 2 s or more to come back: the calls are far quicker."""
    take = {"keys": {"bucket": k("bucket")}, "args": {"rate": rate, "burst": burst}}
    assert [await TAKE_TOKEN(r, **take) for _ in range(burst)] == [0] * burst
    wait = await TAKE_TOKEN(r, **take)
    assert 0 < wait <= 1000 / rate
    assert 0 < await r.pttl(k("bucket")) <= burst * 1000 / rate + 1000


async def test_take_token_refills_with_time(r: Redis, k: Keys) -> None:
    seconds, micros = await r.time()
    now_ms = seconds * 1000 + micros // 1000
    await write(r, k, {"bucket": Hash({"tokens": "0", "ts": str(now_ms - 2000)})})
    take = {"keys": {"bucket": k("bucket")}, "args": {"rate": 1, "burst": 5}}
    assert [await TAKE_TOKEN(r, **take) for _ in range(2)] == [0, 0]  # 2 s at 1/s: two tokens
    assert await TAKE_TOKEN(r, **take) > 0


# ---- stats_add: a worker's counts added to a model version's statistics

STATS_ADD = scripts.load("stats_add")

STATS_ROWS = [
    pytest.param(
        {},
        {"last_inference": 5, "deltas": ["success:count", 2, "success:ns", 900]},
        2,
        Hash({"last_inference": "5", "success:count": "2", "success:ns": "900"}),
        id="a new hash",
    ),
    pytest.param(
        {"stats": Hash({"last_inference": "9", "success:count": "3"})},
        {"last_inference": 7, "deltas": ["success:count", 2, "batch:4:compute_infer:count", 1]},
        2,
        Hash({"last_inference": "9", "success:count": "5", "batch:4:compute_infer:count": "1"}),
        id="summed; an older time is not kept",
    ),
    pytest.param(
        {"stats": Hash({"last_inference": "9"})},
        {"last_inference": 12, "deltas": []},
        0,
        Hash({"last_inference": "12"}),
        id="no deltas: the time only",
    ),
]


@pytest.mark.parametrize(("setup", "args", "returns", "after"), STATS_ROWS)
async def test_stats_add(
    r: Redis, k: Keys, setup: State, args: dict[str, Any], returns: int, after: Hash
) -> None:
    await write(r, k, setup)
    assert await STATS_ADD(r, keys={"stats": k("stats")}, args=args) == returns
    await check(r, k, {"stats": after})


# ---- webhooks: queued by the job scripts (append.lua), claimed and recorded by the hubs

WEBHOOK_CLAIM = scripts.load("webhook_claim")
WEBHOOK_DONE = scripts.load("webhook_done")
TERMINAL_ON = "succeeded failed canceled"
FAR = 9_000_000_000_000  # ms: due long after the test
LEASE_MS = 60_000


def queued_member(event_id: str) -> dict[str, float]:
    """What the job scripts queue for job "j"'s event: due when the event was appended."""
    return {f"j {event_id} 1": float(event_id.split("-")[0])}


WEBHOOK_STEPS = [
    pytest.param(TERMINAL_ON, "started", ended("succeeded"), True, id="terminal: wanted"),
    pytest.param("succeeded", "started", ended("failed"), False, id="a status not wanted"),
    pytest.param("started succeeded", "queued", started(1), True, id="started: wanted"),
    pytest.param(
        "queued started succeeded failed canceled", "started", progress(1), False, id="progress"
    ),
    pytest.param(TERMINAL_ON, "succeeded", ended("failed"), False, id="a refused step"),
]


@pytest.mark.parametrize(("wanted", "status", "step", "queued"), WEBHOOK_STEPS)
async def test_transition_queues_a_wanted_webhook(
    r: Redis, k: Keys, wanted: str, status: str, step: Step, queued: bool
) -> None:
    await write(r, k, {"record": Hash({"status": status, "webhook_on": wanted})})
    async with subscribed(r, k("webhook_wake")) as pubsub:
        _, _, event_id, _ = await one_step(r, k, step)
        await check(r, k, {"webhooks": ZSet(queued_member(event_id)) if queued else None})
        if queued:
            assert await next_message(pubsub) == ""


async def test_create_queues_a_webhook_that_wants_queued(r: Redis, k: Keys) -> None:
    fields = [x for kv in {**RECORD, "webhook_on": "queued succeeded"}.items() for x in kv]
    code, event_id = await CREATE(r, keys=k.many(*CREATE_KEYS), args=create_args(k, fields=fields))
    assert code == 1
    await check(r, k, {"webhooks": ZSet(queued_member(event_id))})


async def test_cancel_queues_a_webhook_that_wants_canceled(r: Redis, k: Keys) -> None:
    await write(
        r, k, {**QUEUED_JOB, "record": Hash({"status": "queued", "webhook_on": TERMINAL_ON})}
    )
    args = {
        "channel": k("channel"),
        "event": "canceled",
        "ttl": TTL,
        "job_maxlen": 100,
        "log_maxlen": 1000,
        "webhook_wake": k("webhook_wake"),
        "job_id": "j",
        "finished_at": "1.5",
    }
    assert await CANCEL(r, keys=k.many(*CANCEL.keys), args=args) == "queued"
    ((event_id, _),) = await r.xrange(k("events"))
    await check(r, k, {"webhooks": ZSet(queued_member(event_id))})


async def redis_ms(r: Redis) -> int:
    seconds, micros = await r.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_webhook_claim_leases_what_is_due(r: Redis, k: Keys) -> None:
    await write(r, k, {"webhooks": ZSet({"a": 1, "b": 2, "c": 3, "later": FAR})})
    before = await redis_ms(r)
    lease, wait_ms, members = await WEBHOOK_CLAIM(
        r, keys={"due": k("webhooks")}, args={"lease_ms": LEASE_MS, "count": 2}
    )
    after = await redis_ms(r)
    assert members == ["a", "b"]  # the oldest first, at most `count`
    assert before + LEASE_MS <= lease <= after + LEASE_MS
    assert wait_ms == 0  # "c" is due still
    await check(r, k, {"webhooks": ZSet({"a": lease, "b": lease, "c": 3, "later": FAR})})
    # a second hub takes what is left, never what is leased
    _, wait_ms, members = await WEBHOOK_CLAIM(
        r, keys={"due": k("webhooks")}, args={"lease_ms": LEASE_MS, "count": 10}
    )
    assert members == ["c"]
    assert LEASE_MS - 5_000 < wait_ms <= LEASE_MS  # until the first lease ends
    _, wait_ms, members = await WEBHOOK_CLAIM(
        r, keys={"due": k("empty")}, args={"lease_ms": LEASE_MS, "count": 10}
    )
    assert (members, wait_ms) == ([], -1)


def done_args(**changes: Any) -> dict[str, Any]:
    return {
        "member": "j e 1",
        "lease": 500,
        "attempted": 1,
        "status": "503",
        "error": "",
        "delivered_at": "",
        "next": "j e 2",
        "delay_ms": LEASE_MS,
        **changes,
    }


JOB_DONE = {"status": "succeeded", "webhook_error": "old"}
ATTEMPTED = {"status": "succeeded", "webhook_attempts": "1"}
SOON = -1.0  # a score of `delay_ms` from the call
WEBHOOK_DONE_ROWS = [
    pytest.param(
        {},
        1,
        {**ATTEMPTED, "webhook_status": "503"},
        {"j e 2": SOON, "other": FAR},
        id="failed: recorded, retried later",
    ),
    pytest.param(
        {"status": "200", "delivered_at": "7.5", "next": ""},
        1,
        {**ATTEMPTED, "webhook_status": "200", "webhook_delivered_at": "7.5"},
        {"other": FAR},
        id="delivered: recorded, no retry",
    ),
    pytest.param(
        {"status": "", "error": "connection refused"},
        1,
        {**ATTEMPTED, "webhook_error": "connection refused"},
        {"j e 2": SOON, "other": FAR},
        id="no answer: the error recorded",
    ),
    pytest.param(
        {"lease": 499},
        0,
        JOB_DONE,
        {"j e 1": 500, "other": FAR},
        id="another hub holds the lease: nothing changes",
    ),
    pytest.param(
        {"attempted": 0, "status": "", "next": "j e 1", "delay_ms": 0},
        1,
        JOB_DONE,
        {"j e 1": SOON, "other": FAR},
        id="handed back unsent: due at once, not counted",
    ),
]


@pytest.mark.parametrize(("changes", "returns", "record", "due"), WEBHOOK_DONE_ROWS)
async def test_webhook_done(
    r: Redis,
    k: Keys,
    changes: dict[str, Any],
    returns: int,
    record: dict[str, str],
    due: dict[str, float],
) -> None:
    await write(r, k, {"record": Hash(JOB_DONE), "webhooks": ZSet({"j e 1": 500, "other": FAR})})
    args = done_args(**changes)
    now = await redis_ms(r)
    assert (
        await WEBHOOK_DONE(r, keys={"due": k("webhooks"), "record": k("record")}, args=args)
        == returns
    )
    await check(r, k, {"record": Hash(record)})
    found = dict(await r.zrange(k("webhooks"), 0, -1, withscores=True))
    assert set(found) == set(due)
    for member, score in due.items():
        if score == SOON:
            assert now + args["delay_ms"] <= found[member] <= now + args["delay_ms"] + 5_000
        else:
            assert found[member] == score


async def test_webhook_done_retries_nothing_once_the_job_expired(r: Redis, k: Keys) -> None:
    await write(r, k, {"webhooks": ZSet({"j e 1": 500})})
    assert (
        await WEBHOOK_DONE(r, keys={"due": k("webhooks"), "record": k("record")}, args=done_args())
        == 0
    )
    await check(r, k, {"webhooks": None, "record": None})


# ---- the loader

LOADER_ROWS = [
    pytest.param({"bucket": "b"}, {"rate": 1, "burst": 1}, None, id="right names"),
    pytest.param({"bukket": "b"}, {"rate": 1, "burst": 1}, "KEYS", id="wrong key name"),
    pytest.param({}, {"rate": 1, "burst": 1}, "KEYS", id="missing key"),
    pytest.param({"bucket": "b", "other": "o"}, {"rate": 1, "burst": 1}, "KEYS", id="extra key"),
    pytest.param({"bucket": "b"}, {"rate": 1}, "ARGV", id="missing argument"),
    pytest.param({"bucket": "b"}, {"rate": 1, "burts": 1}, "ARGV", id="wrong argument name"),
    pytest.param({"bucket": "b"}, {"rate": 1, "burst": 1, "x": 2}, "ARGV", id="extra argument"),
]


@pytest.mark.parametrize(("names", "args", "refused"), LOADER_ROWS)
def test_loader_takes_the_header_names_only(
    names: dict[str, str], args: dict[str, Any], refused: str | None
) -> None:
    if refused is None:
        assert TAKE_TOKEN.positions(names, args) == (["b"], [1, 1])
    else:
        with pytest.raises(TypeError, match=refused):
            TAKE_TOKEN.positions(names, args)


def test_loader_flattens_the_trailing_list() -> None:
    names = {n: n for n in CREATE.keys}
    key_list, arg_list = CREATE.positions(names, create_args(Keys("p"), fields=["a", "1", "b"]))
    assert key_list == list(CREATE.keys)
    assert len(arg_list) == len(CREATE.args) - 1 + 3
    assert arg_list[-3:] == ["a", "1", "b"]


LIBRARIES = ("append", "arq")  # prepended to the scripts that use them: no header of their own
NAMES = sorted(p.stem for p in scripts.LUA.glob("*.lua") if p.stem not in LIBRARIES)


@pytest.mark.parametrize("name", NAMES)
def test_header_matches_the_positions_the_script_reads(name: str) -> None:
    """Every KEYS[n] / ARGV[n] the body reads (also as K[n], A[n]) is a name of its header, and
    a trailing list (read by ``set_fields`` or a loop) starts right after the named arguments."""
    script = scripts.load(name)
    body = (scripts.LUA / f"{name}.lua").read_text()
    body = "\n".join(line for line in body.splitlines() if not line.startswith("--"))
    read_keys = {int(n) for n in re.findall(r"\b(?:KEYS|K)\[(\d+)\]", body)}
    read_args = {int(n) for n in re.findall(r"\b(?:ARGV|A)\[(\d+)\]", body)}
    named = [a for a in script.args if not a.endswith("...")]
    assert read_keys == set(range(1, len(script.keys) + 1))
    assert read_args == set(range(1, len(named) + 1))
    if len(named) < len(script.args):
        starts = re.findall(
            r"(?:set|add)_fields\(\w+, (\d+)\)|for \w+ = (\d+), #(?:ARGV|A)\b"
            r"|local (\w+) = (\d+)\nwhile \3 <= #(?:ARGV|A)\b",
            body,
        )
        assert {a or b or d for a, b, _, d in starts} == {str(len(named) + 1)}
    assert scripts.load(name) is script  # loaded once


async def test_script_survives_script_flush(r: Redis, k: Keys) -> None:
    take = {"keys": {"bucket": k("bucket")}, "args": {"rate": 0.01, "burst": 5}}
    assert await TAKE_TOKEN(r, **take) == 0
    assert await r.script_exists(TAKE_TOKEN.sha) == [True]
    await r.script_flush()  # as after a Redis restart
    assert await r.script_exists(TAKE_TOKEN.sha) == [False]
    assert await TAKE_TOKEN(r, **take) == 0  # NoScriptError: loaded again, run again
    assert await r.script_exists(TAKE_TOKEN.sha) == [True]
    assert await r.script_load(TAKE_TOKEN.source) == TAKE_TOKEN.sha


@pytest.mark.parametrize(("setup", "calls", "returns", "expected"), TRANSITION_ROWS)
async def test_transition_steps_in_one_call(
    r: Redis,
    k: Keys,
    setup: State,
    calls: Sequence[Step],
    returns: Sequence[list[Any]],
    expected: State,
) -> None:
    """Several steps in one call (how the job store sends them) do what one call each does."""
    await write(r, k, setup)
    results = await TRANSITION(r, keys=k.many(*TRANSITION.keys), args=steps_args(k, *calls))
    assert [[a, before, event_id != "", c] for a, before, event_id, c in results] == list(returns)
    await check(r, k, expected)
    log_ids = [i for i, _ in await r.xrange(k("log"))]
    assert [i for i, _ in await r.xrange(k("events"))] == log_ids
    assert [event_id for _, _, event_id, _ in results if event_id] == log_ids


def test_tables_have_unique_cases() -> None:
    for rows in (
        TRANSITION_ROWS,
        CANCEL_ROWS,
        CREATE_ROWS,
        CLAIM_ROWS,
        REAP_ROWS,
        OWN_ROWS,
        WEBHOOK_STEPS,
        WEBHOOK_DONE_ROWS,
    ):
        ids = [row.id for row in rows]
        assert len(ids) == len(set(ids))


# ---- repository: the desired state of what the workers serve (contract/repository.py)

REPOSITORY_READ = scripts.load("repository_read")
REPOSITORY_CHANGE = scripts.load("repository_change")


async def test_repository_change_marks_counts_and_nudges_at_once(r: Redis, k: Keys) -> None:
    names = k.many("generation", "unloaded", "nudge")
    state = {"keys": k.many("generation", "unloaded"), "args": {}}
    assert await REPOSITORY_READ(r, **state) == ["0", []]
    async with subscribed(r, k("nudge")) as pubsub:
        assert await REPOSITORY_CHANGE(r, names, {"model": "m", "load": 0}) == 1
        assert await next_message(pubsub) == "m"
    await check(r, k, {"unloaded": Hash({"m": "unloaded"}), "generation": Str("1")})
    assert await REPOSITORY_READ(r, **state) == ["1", ["m"]]
    assert await REPOSITORY_CHANGE(r, names, {"model": "m", "load": 1}) == 2
    await check(r, k, {"unloaded": None, "generation": Str("2")})
    assert await REPOSITORY_READ(r, **state) == ["2", []]
