"""The jobs lane's gathered calls on a real Redis and a real worker: concurrent creations of one
owner, pool and priority go in one script call (``create_many.lua``) and one arq job, each job
keeping its record, its event and its own verdict; concurrent transitions go in one call
(``transition_many.lua``); a lone one goes at once, as before."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from arq.jobs import deserialize_job_raw
from helpers import ROOT, TestClient, build_slow, job_events, wait_for, wait_job
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from sklearn.datasets import load_digits
from stack import Stack

from contract import keys, scripts
from contract.channels import Subscriber
from contract.connection import connect
from contract.events import EventType, JobStatus, published_events
from contract.gather import Gatherer
from contract.jobstore import GATHER_MOST, RUN_JOBS, Created, JobStore, Limits, Step
from contract.wire import loads

JOBS = 8
TOPOLOGIES = ("single", "cluster")


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def pool() -> str:
    return f"gathered-{uuid.uuid4().hex[:8]}"


def new_job(pool: str, fingerprint: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A record and the arq arguments of a one-row job, as the hub makes them."""
    job_id, owner = keys.new_job_id(pool), f"t-{pool}"
    record = {
        "id": job_id,
        "model": "m",
        "version": "1",
        "owner": owner,
        "pool": pool,
        "status": "queued",
        "attempt": 0,
        "created_at": time.time(),
        "rows": 1,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2]}],
        "parameters": None,
        "fingerprint": fingerprint,
        "request_id": "r-1",
    }
    args = {"model": "m", "version": "1", "owner": owner, "inputs": [], "request_id": "r-1"}
    return record, args


QUEUE_STATS = scripts.load("queue_stats")


def stats_args(pool: str) -> dict[str, Any]:
    """queue_stats.lua's arguments for the pool, as hub/metrics/cluster.py gives them."""
    return {
        "in_progress_prefix": keys.in_progress_prefix(pool),
        "job_prefix": keys.job_prefix(pool),
        "scan": 100,
    }


async def test_concurrent_creations_go_in_one_call_as_one_arq_job(r: Redis, pool: str) -> None:
    store = JobStore(r, Limits(ttl_s=600))
    jobs = [new_job(pool) for _ in range(JOBS)]
    # the first alone, as create.lua makes a job; the others together, in one call
    results = [await store.create(*jobs[0], pool=pool)]
    results += await asyncio.gather(*(store.create(rec, args, pool=pool) for rec, args in jobs[1:]))
    assert store.creates.calls == 2
    assert [created for created, _ in results] == [Created.CREATED] * JOBS
    ids = [rec["id"] for rec, _ in jobs]
    for job_id, (_, event_id) in zip(ids, results, strict=True):
        assert await r.hget(keys.job(job_id), "status") == b"queued"
        events = await r.xrange(keys.job_events(job_id))
        assert [e for e, _ in events] == [event_id.encode()]
        assert loads(events[0][1][b"e"])["job_id"] == job_id
        assert 0 < await r.ttl(keys.job(job_id)) <= 600
        assert 0 < await r.ttl(keys.job_events(job_id)) <= 600
    owner = jobs[0][0]["owner"]
    for index in (keys.owner_queued(pool, owner), keys.owner_jobs(pool, owner)):
        assert {m.decode() for m in await r.zrange(index, 0, -1)} == set(ids)
    queued = [m.decode() for m in await r.zrange(keys.queue(pool), 0, -1)]
    assert len(queued) == 2 and ids[0] in queued  # the lone job as ever, and one batch
    (batch,) = [m for m in queued if m != ids[0]]
    raw = await r.get(keys.arq_job_prefix(pool) + batch)
    function, _, kwargs, _, _ = deserialize_job_raw(raw, deserializer=loads)
    assert function == RUN_JOBS
    assert [job["job_id"] for job in kwargs["jobs"]] == ids[1:]
    assert all(job["owner"] == owner and job["model"] == "m" for job in kwargs["jobs"])
    # the pool's depth counts jobs, not queue entries
    args = stats_args(pool)
    total, running, oldest = await QUEUE_STATS(r, {"queue": keys.queue(pool)}, args)
    assert (total, running, float(oldest)) == (JOBS, 0, jobs[0][0]["created_at"])
    await r.zrem(keys.queue(pool), ids[0])  # the batch alone: its age is its first job's
    total, running, oldest = await QUEUE_STATS(r, {"queue": keys.queue(pool)}, args)
    assert (total, running, float(oldest)) == (JOBS - 1, 0, jobs[1][0]["created_at"])


async def test_a_batch_of_over_fifteen_jobs_lists_them_all(r: Redis, pool: str) -> None:
    """msgpack writes the arq job's list of more than 15 jobs with a longer header (30: one
    call, under GATHER_MOST)."""
    store = JobStore(r, Limits(ttl_s=600))
    jobs = [new_job(pool) for _ in range(30)]
    await asyncio.gather(*(store.create(rec, args, pool=pool) for rec, args in jobs))
    (batch,) = [m for m in await r.zrange(keys.queue(pool), 0, -1) if m.startswith(b"jobs-")]
    raw = await r.get(keys.arq_job_prefix(pool) + batch.decode())
    _, _, kwargs, _, _ = deserialize_job_raw(raw, deserializer=loads)
    assert [job["job_id"] for job in kwargs["jobs"]] == [rec["id"] for rec, _ in jobs]


async def test_more_jobs_than_a_call_holds_go_in_several(r: Redis, pool: str) -> None:
    """Submissions gathered past GATHER_MOST leave in calls of at most that many (so that the
    worker runs one while the hub answers another), every job in one of them."""
    store = JobStore(r, Limits(ttl_s=600))
    jobs = [new_job(pool) for _ in range(GATHER_MOST + 8)]
    await asyncio.gather(*(store.create(rec, args, pool=pool) for rec, args in jobs))
    listed: list[str] = []
    for batch in [m for m in await r.zrange(keys.queue(pool), 0, -1) if m.startswith(b"jobs-")]:
        raw = await r.get(keys.arq_job_prefix(pool) + batch.decode())
        _, _, kwargs, _, _ = deserialize_job_raw(raw, deserializer=loads)
        assert len(kwargs["jobs"]) <= GATHER_MOST
        listed += [job["job_id"] for job in kwargs["jobs"]]
    assert sorted(listed) == sorted(rec["id"] for rec, _ in jobs)


async def test_gatherer_sends_a_turns_calls_together_and_those_that_wait_next() -> None:
    """Pure logic (contract/gather.py): the calls of one turn of the loop go in one send, those
    made while it is in flight in the next; a caller that leaves before its send is not sent,
    and the others of its turn are."""
    sent: list[list[int]] = []
    release = asyncio.Event()

    async def send(_key: Any, items: Any) -> list[int]:
        sent.append(list(items))
        await release.wait()
        return [item * 10 for item in items]

    gather = Gatherer(send, most=64)
    first = [asyncio.ensure_future(gather("k", n)) for n in range(3)]
    await asyncio.sleep(0.01)  # the three in flight, as one send
    later = [asyncio.ensure_future(gather("k", n)) for n in range(3, 5)]
    await asyncio.sleep(0.01)
    assert sent == [[0, 1, 2]]
    release.set()
    assert await asyncio.gather(*first, *later) == [0, 10, 20, 30, 40]
    assert sent == [[0, 1, 2], [3, 4]] and gather.calls == 2
    assert await gather("k", 5) == 50  # alone
    leaving = asyncio.ensure_future(gather("k", 6))
    staying = asyncio.ensure_future(gather("k", 7))
    await asyncio.sleep(0)  # both in the line, the first not sent yet
    leaving.cancel()
    assert await staying == 70
    assert sent[-2:] == [[5], [7]]


def test_published_events_reads_one_or_several() -> None:
    binary = b"\x82 1-2 \x00*"  # an event's bytes may hold spaces, digits and stars
    assert published_events(b"5-0 " + binary) == [("5-0", binary)]
    several = b"*" + b"".join(b"%d-0 %d %s" % (n, len(binary), binary) for n in range(3))
    assert published_events(several) == [(f"{n}-0", binary) for n in range(3)]


async def test_gathered_events_go_out_in_one_publication(r: Redis, pool: str) -> None:
    store = JobStore(r, Limits(ttl_s=600))
    async with Subscriber(r) as pubsub:
        await pubsub.subscribe(keys.events_channel(pool, store.db))
        jobs = [new_job(pool) for _ in range(JOBS)]
        results = [await store.create(*jobs[0], pool=pool)]
        results += await asyncio.gather(*(store.create(rec, a, pool=pool) for rec, a in jobs[1:]))
        messages = []
        async with asyncio.timeout(10):
            while len(messages) < 2:  # the lone job's, then the others' together
                _, data = await pubsub.get()
                messages.append(published_events(data))
    ids = [event_id for _, event_id in results]
    assert [[event_id for event_id, _ in m] for m in messages] == [ids[:1], ids[1:]]
    for (rec, _), (_, raw) in zip(jobs, messages[0] + messages[1], strict=True):
        assert loads(raw)["job_id"] == rec["id"] and loads(raw)["type"] == "queued"


async def test_gathered_creations_each_get_their_verdict(r: Redis, pool: str) -> None:
    """An Idempotency-Key used twice in one call repeats the first; the owner's share is
    counted job by job; a retried call makes nothing twice."""
    store = JobStore(r, Limits(ttl_s=600))
    jobs = [new_job(pool, fingerprint="fp") for _ in range(JOBS)]
    owner = jobs[0][0]["owner"]
    idempotency = [(owner, "k1") if n in (1, 2) else None for n in range(JOBS)]
    results = await asyncio.gather(
        *(
            store.create(rec, args, pool=pool, idempotency=idem, max_queued_per_owner=4)
            for (rec, args), idem in zip(jobs, idempotency, strict=True)
        )
    )
    assert store.creates.calls == 1
    verdicts = [created for created, _ in results]
    assert (
        verdicts
        == [Created.CREATED] * 2
        + [Created.REPEAT]
        + [Created.CREATED] * 2
        + [Created.OWNER_FULL] * 3
    )
    assert results[2][1] == f"{jobs[1][0]['id']} fp"  # the first job of the key
    made = [rec["id"] for (rec, _), v in zip(jobs, verdicts, strict=True) if v is Created.CREATED]
    assert await r.zcard(keys.owner_queued(pool, owner)) == 4
    for rec, _ in jobs:
        assert bool(await r.exists(keys.job(rec["id"]))) is (rec["id"] in made)
    # the batch's arq job lists the jobs it created, none it refused: those never run
    (batch,) = [m for m in await r.zrange(keys.queue(pool), 0, -1) if m.startswith(b"jobs-")]
    assert batch.decode() == f"jobs-4-{made[0]}"  # named for them: 4 of the 8 sent
    raw = await r.get(keys.arq_job_prefix(pool) + batch.decode())
    function, _, kwargs, _, _ = deserialize_job_raw(raw, deserializer=loads)
    assert function == RUN_JOBS
    assert [job["job_id"] for job in kwargs["jobs"]] == made
    assert kwargs["jobs"][0] == {"job_id": made[0], **jobs[0][1]}
    # so the pool's depth counts the jobs queued, and its age is the first one's
    total, running, oldest = await QUEUE_STATS(r, {"queue": keys.queue(pool)}, stats_args(pool))
    assert (total, running, float(oldest)) == (4, 0, jobs[0][0]["created_at"])

    # the same jobs again (as a retried command): each one made is found made, none doubles;
    # the others are made now (no key, no bound this time)
    log_before = await r.xlen(keys.events_log(pool))
    retried = await asyncio.gather(*(store.create(rec, args, pool=pool) for rec, args in jobs))
    made_twice = [
        v for (rec, _), (v, value) in zip(jobs, retried, strict=True) if rec["id"] in made
    ]
    assert made_twice == [Created.CREATED] * 4
    assert all(
        value == "" for (rec, _), (_, value) in zip(jobs, retried, strict=True) if rec["id"] in made
    )
    for job_id in made:
        assert await r.xlen(keys.job_events(job_id)) == 1
    assert await r.xlen(keys.events_log(pool)) == log_before + JOBS - 4


async def test_concurrent_transitions_go_in_one_call(r: Redis, pool: str) -> None:
    store = JobStore(r, Limits(ttl_s=600))
    jobs = [new_job(pool) for _ in range(4)]
    for rec, args in jobs:  # one after the other: each alone
        assert (await store.create(rec, args, pool=pool))[0] is Created.CREATED
    assert store.creates.calls == 4
    canceled = jobs[2][0]["id"]
    await r.set(keys.job_cancel(canceled), "1", ex=60)
    started = Step(
        EventType.STARTED,
        (JobStatus.QUEUED,),
        JobStatus.STARTED,
        {"attempt": 1, "worker": "w1"},
        guard=("attempt", 1),
    )
    ended = Step(EventType.SUCCEEDED, (JobStatus.STARTED,), JobStatus.SUCCEEDED, outputs=b"out")
    results = await asyncio.gather(
        *(
            store.transition(rec["id"], started, ended, model="m", owner=rec["owner"])
            for rec, _ in jobs
        )
    )
    assert store.transitions.calls == 1
    for (rec, _), steps in zip(jobs, results, strict=True):
        cancel = rec["id"] == canceled
        assert steps == [(True, "queued", cancel), (True, "started", cancel)]
        assert await r.hget(keys.job(rec["id"]), "status") == b"succeeded"
        assert await r.get(keys.job_outputs(rec["id"])) == b"out"
        types = [
            loads(body[b"e"])["type"] for _, body in await r.xrange(keys.job_events(rec["id"]))
        ]
        assert types == ["queued", "started", "succeeded"]
    assert await r.zcard(keys.owner_queued(pool, jobs[0][0]["owner"])) == 0
    # again (a retried call): the guard and the statuses refuse every step, nothing doubles
    again = await asyncio.gather(
        *(
            store.transition(rec["id"], started, ended, model="m", owner=rec["owner"])
            for rec, _ in jobs
        )
    )
    assert [steps[1][0] for steps in again] == [False] * 4
    for rec, _ in jobs:
        assert await r.xlen(keys.job_events(rec["id"])) == 3


def test_concurrent_submissions_run_as_one_batch_on_a_real_worker(
    client: TestClient, redis: SyncRedis
) -> None:
    """Submitted at once, one row each: created in one call, run by the worker, and each
    answered as onnxruntime answers its row, with its own three events."""
    rows = load_digits().data[:JOBS].astype(np.float32)
    session = ort.InferenceSession(str(ROOT / "models" / "digits" / "1" / "model.onnx"))
    labels, probabilities = session.run(None, {"input": rows})
    service = client.app.state.service

    async def submit_all() -> tuple[list[dict[str, Any]], int]:
        model, version = await service.catalogue.model("digits", None)
        before = service.store.creates.calls
        jobs = await asyncio.gather(
            *(
                service.submit_arrays(
                    model, version, {"input": rows[n : n + 1]}, owner="gathered", wait_s=20
                )
                for n in range(JOBS)
            )
        )
        return list(jobs), service.store.creates.calls - before

    jobs, calls = client.portal.call(submit_all)
    assert calls == 1
    for n, job in enumerate(jobs):
        assert job["status"] == "succeeded", job
        (label,) = [o for o in job["outputs"] if o["name"] == "label"]
        (probs,) = [o for o in job["outputs"] if o["name"] == "probabilities"]
        assert label["data"] == [int(labels[n])]
        np.testing.assert_allclose(probs["data"], probabilities[n], rtol=1e-5, atol=1e-7)
        types = [e.type for e in job_events(redis, job["id"])]
        assert types == [EventType.QUEUED, EventType.STARTED, EventType.SUCCEEDED]


def test_a_batch_whose_worker_is_killed_runs_again_and_each_job_ends_once(
    client: TestClient, redis: SyncRedis, transient: Stack, tmp_path: Path
) -> None:
    """Three bulk jobs submitted at once (one arq job) on a worker killed while they run:
    another runs them again, and each ends once, succeeded."""
    repo = tmp_path / "models"
    build_slow(repo / "batchslow")  # a name of its own: the module's worker serves a "slow"
    (repo / "batchslow" / "config.toml").write_text('pool = "batchfaults"\nmax_batch_size = 2\n')
    victim = transient.worker("victim", models=repo, pool="batchfaults")
    wait_for(lambda: client.get("/v1/models/batchslow").json().get("ready"), what="model ready")
    service = client.app.state.service
    rows = np.full((300, 16), 0.25, dtype=np.float32)

    async def submit_all() -> tuple[list[str], int]:
        model, version = await service.catalogue.model("batchslow", None)
        before = service.store.creates.calls
        jobs = await asyncio.gather(
            *(service.submit_arrays(model, version, {"x": rows}, owner="anonymous") for _ in "abc")
        )
        return [job["id"] for job in jobs], service.store.creates.calls - before

    ids, calls = client.portal.call(submit_all)
    assert calls == 1

    def running(job_id: str) -> bool:
        body = client.get(f"/v1/jobs/{job_id}").json()
        return body["status"] == "started" and (body["progress"] or {}).get("done", 0) >= 4

    wait_for(lambda: all(running(j) for j in ids), what="the batch running on the victim")
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(10)
    transient.worker("rescuer", models=repo, pool="batchfaults")
    for job_id in ids:
        done = wait_job(client, job_id, {"succeeded", "failed", "canceled"}, timeout=60)
        assert done["status"] == "succeeded", done
        assert done["outputs_summary"][0]["shape"] == [300, 1024]
        events = job_events(redis, job_id)
        assert sum(e.terminal for e in events) == 1 and events[-1].type is EventType.SUCCEEDED
    for job_id in ids:  # the batch ran again, as a whole, on the rescuer
        starts = [
            e.data["attempt"] for e in job_events(redis, job_id) if e.type is EventType.STARTED
        ]
        assert starts == [1, 2]
