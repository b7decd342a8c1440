"""Jobs of several pools, on one Redis and on a 3-master Redis Cluster: each pool's keys lie in
one slot (its hash tag), the pools lie on different masters, listings merge the pools' indexes,
and the all-jobs feed merges the pools' logs and resumes from a position per pool.

Pools ``b`` and ``c``: ``redis-cli --cluster create`` gives three masters a third of the slots
each, and ``{b}`` (slot 3300) and ``{c}`` (slot 7365) fall to the first and the second.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cluster import RedisClusterServers
from helpers import ROOT, TestClient
from httpx_sse import connect_sse
from pydantic import ValidationError
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from stack import Hub, Stack

from contract import keys
from contract.channels import Subscriber, publish
from contract.connection import ClusterTarget, cluster_target, connect
from contract.events import Event, EventType, stream_key
from contract.position import Position
from contract.settings import Settings
from hub.auth import new_key

TOPOLOGIES = ("single", "cluster")
POOLS = ("b", "c")
ROW = [[5.1, 3.5, 1.4, 0.2]]


@pytest.fixture(scope="module")
def pools_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """iris twice: ``iris_b`` served by pool ``b``, ``iris_c`` by pool ``c``."""
    root = tmp_path_factory.mktemp("pools") / "models"
    for pool in POOLS:
        shutil.copytree(ROOT / "models" / "iris", root / f"iris_{pool}")
        (root / f"iris_{pool}" / "config.toml").write_text(f'pool = "{pool}"\n')
    return root


@pytest.fixture(scope="module")
def hub(stack: Stack, pools_repo: Path) -> Hub:
    """A hub process started before any job exists: it learns of the pools as they come."""
    for pool in POOLS:
        stack.worker(pool, wait=False, models=pools_repo, pool=pool)
    made = stack.hub("hub", wait=False)
    stack.wait_ready()
    return made


@pytest.fixture(scope="module")
def app(stack: Stack, hub: Hub) -> Iterator[TestClient]:
    with stack.app() as client:
        yield client


def run(client: httpx.Client, pool: str) -> dict[str, Any]:
    r = client.post(
        "/v1/jobs", json={"model": f"iris_{pool}", "data": ROW}, headers={"Prefer": "wait=10"}
    )
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    return dict(r.json())


def job_keys(job_id: str) -> list[str]:
    pool = keys.pool_of(job_id)
    return [
        keys.job(job_id),
        keys.job_events(job_id),
        keys.job_outputs(job_id),
        keys.events_log(pool),
        keys.jobs_index(pool),
        keys.owner_jobs(pool, "anonymous"),
        keys.queue(pool),
        keys.arq_job_prefix(pool) + job_id,
        keys.events_channel(pool, 0),
    ]


def test_each_pool_lies_in_one_slot_and_the_pools_on_different_masters(
    stack: Stack, app: TestClient
) -> None:
    jobs = [run(app, pool) for pool in POOLS]
    slots = []
    for job in jobs:
        assert keys.pool_of(job["id"]) == job["id"].split(".")[0]
        names = job_keys(job["id"])
        assert {key_slot(name.encode()) for name in names} == {key_slot(names[0].encode())}
        assert stack.redis.exists(keys.job(job["id"]), keys.events_log(keys.pool_of(job["id"])))
        slots.append(key_slot(names[0].encode()))
    assert len(set(slots)) == len(POOLS)
    if isinstance(stack.redis, RedisCluster):
        # the server agrees, and the pools' masters differ
        owners = set()
        for job, slot in zip(jobs, slots, strict=True):
            assert stack.redis.cluster_keyslot(keys.job(job["id"])) == slot
            owners.add(stack.redis.get_node_from_key(keys.job(job["id"])).name)
        assert len(owners) == len(POOLS), owners


def test_the_listing_merges_the_pools_newest_first(app: TestClient) -> None:
    made = [run(app, pool)["id"] for pool in (*POOLS, *POOLS)]
    listed, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = app.get("/v1/jobs", params=params).json()
        listed += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [j for j in listed if j in made] == made[::-1]
    assert {keys.pool_of(j) for j in listed} == set(POOLS)


def feed(url: str, headers: dict[str, str], until: str) -> list[dict[str, Any]]:
    """The all-jobs feed of the hub at ``url`` until the event ``until`` (a job's terminal)."""
    seen: list[dict[str, Any]] = []
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(client, "GET", f"{url}/v1/events", headers=headers) as source,
    ):
        for message in source.iter_sse():
            if message.data:
                assert message.event not in ("reset", "close"), message.data
                seen.append(orjson.loads(message.data))
                if (seen[-1]["job_id"], seen[-1]["type"]) == (until, "succeeded"):
                    return seen
    raise AssertionError(f"the feed ended before {until} succeeded: {seen}")


def test_the_feed_resumes_each_pool_from_its_own_position(
    hub: Hub, app: TestClient, redis: Redis
) -> None:
    first, second = run(app, "b"), run(app, "c")
    [queued_b, *_] = redis.xrange(keys.job_events(first["id"]))
    *_, (done_c, _) = redis.xrange(keys.job_events(second["id"]))
    # pool b from its first job's `queued`, pool c from its job's end
    token = f"0,b:{queued_b[0].decode()},c:{done_c.decode()}"
    later = run(app, "c")
    seen = feed(hub.url, {"Last-Event-ID": token}, until=later["id"])
    b_events = [(e["job_id"], e["type"]) for e in seen if keys.pool_of(e["job_id"]) == "b"]
    assert b_events == [(first["id"], "started"), (first["id"], "succeeded")]
    assert [e["job_id"] for e in seen if keys.pool_of(e["job_id"]) == "c"] == [later["id"]] * 3
    ids = [e["id"] for e in seen]
    assert len(ids) == len(set(ids))


@pytest.fixture(scope="module")
def keyed(
    stack: Stack, hub: Hub, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Hub, dict[str, dict[str, str]]]:
    """A hub with keys, and the headers of its tenants ``alpha`` and ``beta``."""
    path = tmp_path_factory.mktemp("keys") / "keys.toml"
    made = {name: new_key(path, name, ["submit", "read"]) for name in ("alpha", "beta")}
    headers = {name: {"Authorization": f"Bearer {key}"} for name, key in made.items()}
    return stack.hub("keyed", api_keys_file=path), headers


@pytest.mark.parametrize("who", ["admin", "tenant"])
def test_an_event_source_resumes_every_pool_exactly_from_its_last_id(
    request: pytest.FixtureRequest, who: str, hub: Hub, redis: Redis
) -> None:
    """The feed's SSE ids are resume tokens: a stream cut mid-run and opened again with its
    last ``id:`` as Last-Event-ID (as a browser's EventSource does) gets every event of both
    pools once, in each pool's order: replayed ones (their ids the stream's own position), then
    live ones (the hub's position, the same frame for every subscriber). A tenant's too, while
    another tenant's jobs run beside its own."""
    url, mine, theirs = hub.url, {}, {}  # no keys: everyone is an admin
    if who == "tenant":
        keyed_hub, headers = request.getfixturevalue("keyed")
        url, mine, theirs = keyed_hub.url, headers["alpha"], headers["beta"]
    # jobs through the hub that streams: it reads a pool's channels before it takes the pool's
    # first job, so that the jobs' events reach it live
    with (
        httpx.Client(base_url=url, headers=mine, timeout=30) as http,
        httpx.Client(base_url=url, headers=theirs, timeout=30) as other,
    ):

        def submit(pool: str) -> str:
            if theirs:
                _submit(other, pool)
            return _submit(http, pool)

        for pool in POOLS:  # a log to resume from, in each pool
            run(http, pool)
        ends = {p: redis.xrevrange(keys.events_log(p), count=1)[0][0].decode() for p in POOLS}
        jobs = [run(http, pool)["id"] for pool in POOLS]  # before the stream: replayed
        live: list[str] = []
        seen: list[tuple[str, dict[str, Any]]] = []

        def cut_mid_run() -> bool:
            if not live:  # while the stream reads
                live.extend(submit(pool) for pool in (*POOLS, *POOLS))
            # once both pools' live jobs have begun, before they all end
            return {keys.pool_of(e["job_id"]) for _, e in seen if e["job_id"] in live} == {*POOLS}

        start = ",".join(["0", *(f"{p}:{ends[p]}" for p in POOLS)])
        _read(url, mine, start, seen, cut_mid_run)
        cut = len(seen)
        jobs += [*live, *(submit(pool) for pool in POOLS)]  # the last while none reads

        def all_ended() -> bool:
            return {e["job_id"] for _, e in seen if e["type"] == "succeeded"} >= {*jobs}

        _read(url, mine, seen[-1][0], seen, all_ended)
    assert {e["job_id"] for _, e in seen} == {*jobs}
    assert 0 < cut < len(seen)
    stored = {
        pool: [
            eid.decode()
            for eid, body in redis.xrange(keys.events_log(pool), min=f"({ends[pool]}")
            if Event.from_wire(eid.decode(), body[b"e"]).job_id in jobs
        ]
        for pool in POOLS
    }
    for pool in POOLS:
        got = [e["id"] for _, e in seen if keys.pool_of(e["job_id"]) == pool]
        assert got == stored[pool], pool  # each once, in the pool's order, none missed
    for n, (token, _) in enumerate(seen, 1):
        # each id is exact, whatever the pools' clocks: the events it puts before it in each
        # pool are those received so far
        at = Position.parse(token)
        assert "," in token and set(at.pools) <= set(POOLS), token
        for pool in POOLS:
            got = [e["id"] for _, e in seen[:n] if keys.pool_of(e["job_id"]) == pool]
            assert [i for i in stored[pool] if stream_key(i) <= at.of(pool)] == got, (n, token)


def test_a_feed_from_now_names_a_quiet_pool_where_its_log_ended(
    stack: Stack, app: TestClient, redis: Redis
) -> None:
    """A feed followed from now, whose ids are the hub's position, names every pool the hub
    reads, from where it began to read it: a pool with no event since the hub started resumes
    after its last one, not from the start of its log."""
    run(app, "c")
    quiet = redis.xrevrange(keys.events_log("c"), count=1)[0][0].decode()
    with httpx.Client(base_url=stack.hub("late").url, timeout=30) as http:
        seen: list[tuple[str, dict[str, Any]]] = []
        with connect_sse(http, "GET", "/v1/events") as source:
            job = run(http, "b")["id"]
            for message in source.iter_sse():
                if message.data:
                    seen.append((message.id, orjson.loads(message.data)))
                    if (seen[-1][1]["job_id"], seen[-1][1]["type"]) == (job, "succeeded"):
                        break
    assert [e["job_id"] for _, e in seen] == [job] * 3
    for token, event in seen:
        at = Position.parse(token)
        assert (at.of("b"), at.of("c")) == (stream_key(event["id"]), stream_key(quiet)), token


def _read(
    url: str,
    headers: dict[str, str],
    last_id: str,
    seen: list[tuple[str, dict[str, Any]]],
    until: Callable[[], bool],
) -> None:
    """Add the events of the all-jobs feed after ``last_id`` to ``seen``, with their ids,
    until ``until()`` says so; then leave the stream."""
    resume = {**headers, "Last-Event-ID": last_id}
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(client, "GET", f"{url}/v1/events", headers=resume) as source,
    ):
        for message in source.iter_sse():
            if message.data:
                assert message.event not in ("reset", "close"), message.data
                seen.append((message.id, orjson.loads(message.data)))
                if until():
                    return
    raise AssertionError(f"the feed ended early: {seen}")


def _submit(client: httpx.Client, pool: str) -> str:
    r = client.post("/v1/jobs", json={"model": f"iris_{pool}", "data": ROW})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_a_cluster_url_names_some_nodes_and_no_database() -> None:
    assert cluster_target("redis+cluster://:pw@h1:7000,h2,[::1]:7001/") == ClusterTarget(
        nodes=(("h1", 7000), ("h2", 6379), ("::1", 7001)), password="pw"
    )
    assert cluster_target("redis://127.0.0.1:6379/0") is None
    for url, says in [
        ("redis+cluster://h1:7000/3", "a Redis Cluster URL is redis+cluster://"),
        ("redis+cluster:///", "a Redis Cluster URL is redis+cluster://"),
        ("redis+cluster://h1:port/", "a cluster node is host:port, got 'h1:port'"),
    ]:
        with pytest.raises(ValidationError) as caught:
            Settings(redis_url=url)
        assert says in str(caught.value)


def test_a_job_id_carries_its_pool_and_a_pool_name_the_keys_cannot_carry_is_refused() -> None:
    job_id = keys.new_job_id("gpu.large-1")
    assert keys.pool_of(job_id) == "gpu.large-1"
    assert keys.job(job_id) == f"inferhub:{{gpu.large-1}}:job:{job_id}"
    assert keys.pool_of("0123") == ""  # no such job: its keys are looked up, and not found
    for bad in ("a{b}", "a b", "a/b"):
        with pytest.raises(ValueError, match="a pool's name"):
            keys.new_job_id(bad)


async def test_a_subscriber_reads_channels_of_several_slots_and_masters(redis_url: str) -> None:
    """Pools b and f (slots 3300 and 3168) share the first master of the cluster, c is on
    the second: one subscriber hears each channel's publications (on one Redis, too)."""
    client = connect(redis_url)
    names = [keys.wake(pool, 0) for pool in ("b", "f", "c")]
    try:
        async with Subscriber(client) as subscriber:
            await subscriber.subscribe(*names)
            for n, name in enumerate(names):
                await publish(client, name, str(n))
            async with asyncio.timeout(10):
                heard = [await subscriber.get() for _ in names]
        assert heard == [(name.encode(), str(n).encode()) for n, name in enumerate(names)]
    finally:
        await client.aclose()


@pytest.mark.topologies("single")
async def test_a_subscriber_idle_past_its_health_check_still_subscribes(redis_url: str) -> None:
    """A hub subscribes to a new pool's channels long after its last message: the client's
    health check must not send a PING whose reply the subscriber's reader takes for its own
    (the subscription then waited for a confirmation forever, and the pool's events were
    never heard)."""
    client = AsyncRedis.from_url(redis_url, health_check_interval=0.05)
    try:
        async with Subscriber(client) as subscriber:
            await subscriber.subscribe(keys.wake("b", 0))
            await asyncio.sleep(0.2)  # idle past the interval: the next command would check
            late = keys.wake("c", 0)
            async with asyncio.timeout(10):
                await subscriber.subscribe(late)
                await publish(client, late, "late")
                heard = await subscriber.get()
        assert heard == (late.encode(), b"late")
    finally:
        await client.aclose()


@pytest.mark.topologies("cluster")
def test_a_pool_moved_to_another_master_goes_on(
    stack: Stack, hub: Hub, app: TestClient, redis_cluster: RedisClusterServers
) -> None:
    """A resharding moves pool b's slot, its keys with it: the worker's claims and the hubs'
    commands follow MOVED, and their subscriptions to the pool's channels, which the old
    master ends, come back on the new one (the last test of the module: b stays moved)."""
    assert isinstance(stack.redis, RedisCluster)
    queue = keys.queue("b")
    was = stack.redis.get_node_from_key(queue).port
    before = run(app, "b")
    redis_cluster.move_slot(
        key_slot(queue.encode()), now := next(p for p in redis_cluster.ports if p != was)
    )
    with Redis(port=now) as node:
        assert node.exists(keys.job(before["id"]), keys.job_events(before["id"])) == 2
    after = [run(app, "b") for _ in range(3)]  # through the in-process hub
    with httpx.Client(base_url=hub.url, timeout=30) as client:  # and through the other
        r = client.post(
            "/v1/jobs", json={"model": "iris_b", "data": ROW}, headers={"Prefer": "wait=10"}
        )
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    with Redis(port=now) as node:
        assert all(node.exists(keys.job(job["id"])) for job in [*after, r.json()])
    with Redis(port=was) as node:
        assert node.execute_command("CLUSTER", "COUNTKEYSINSLOT", key_slot(queue.encode())) == 0


def test_a_feed_position_is_a_base_and_an_id_per_pool() -> None:
    plain = Position.parse("1700000000000-3")
    assert (plain.base, dict(plain.pools)) == ((1700000000000, 3), {})
    both = Position.parse("0,b:5-1,c.x:7-0")
    assert both.of("b") == (5, 1) and both.of("c.x") == (7, 0) and both.of("d") == (0, 0)
    assert str(both) == "0-0,b:5-1,c.x:7-0" and Position.parse(str(both)) == both
    moved = both.past([_event("b.0", "9-0"), _event("d.0", "3-2"), _event("b.1", "6-0")])
    assert dict(moved.pools) == {"b": (9, 0), "c.x": (7, 0), "d": (3, 2)}
    for bad in ("b:5-1", "0,b", "0,b:x", "0,{b}:5-0", "0,:5-0"):
        with pytest.raises(ValueError):
            Position.parse(bad)


def _event(job_id: str, event_id: str) -> Event:
    return Event(id=event_id, job_id=job_id, type=EventType.QUEUED, ts=0.0, model="m", owner="o")
