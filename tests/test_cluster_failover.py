"""A master of the Redis Cluster dies (SIGKILL) under a steady load of jobs: the cluster promotes
its replica, and a real hub and worker go on by themselves.

Replication is asynchronous and nothing here WAITs, so a job acknowledged with 202 just before
the kill may be lost with the master: nothing is asserted of those. What must hold: jobs
submitted once the replica is promoted are accepted and finish, their records on the new master
(the worker claims from it); and the all-jobs feed, opened before the kill, delivers their
events (the hub's subscriber reconnects to the new master). The times are printed, not asserted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from cluster import RedisClusterServers
from helpers import wait_for
from httpx_sse import connect_sse
from redis import Redis
from redis.crc import key_slot
from stack import Hub, Stack

from contract import keys

BODY = {"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]}
POOL = "default"  # iris's pool
SLOT = key_slot(keys.queue(POOL).encode())
AFTER = 10  # jobs accepted after the promotion, each followed to its end


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A cluster of its own (the session's has no replicas, and this one loses a master),
    quick to notice a dead node."""
    made = RedisClusterServers(
        tmp_path_factory.mktemp("failover"), replicas=1, node_timeout_ms=1000
    )
    yield made
    made.stop()


@pytest.fixture(scope="module")
def stack(
    cluster: RedisClusterServers, model_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with Stack(cluster.url(), tmp_path_factory.mktemp("stack"), model_repo) as made:
        made.worker()
        yield made


def owner(cluster: RedisClusterServers, dead: set[int]) -> int | None:
    """The port of the master that serves ``SLOT``, as a live node sees it (None: no master
    serves it now)."""
    port = next(p for p in cluster.ports if p not in dead)
    with Redis(port=port, socket_timeout=2) as node:
        for start, end, master, *_ in node.execute_command("CLUSTER", "SLOTS"):
            if start <= SLOT <= end and int(master[1]) not in dead:
                return int(master[1])
    return None


@dataclass
class Load:
    """Jobs submitted one after another by a thread, each with when it was sent."""

    url: str
    accepted: list[tuple[float, float, str]] = field(default_factory=list)  # sent, answered, id
    refused: dict[str, int] = field(default_factory=dict)  # status code or error: count
    stopped: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stopped.is_set():
                sent_at = time.monotonic()
                try:
                    r = client.post("/v1/jobs", json=BODY)
                    outcome = str(r.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                if outcome == "202":
                    self.accepted.append((sent_at, time.monotonic(), r.json()["id"]))
                else:
                    self.refused[outcome] = self.refused.get(outcome, 0) + 1
                self.stopped.wait(0.02)  # steady, not a flood: two cores are shared

    def sent_after(self, moment: float) -> list[str]:
        return [job for sent_at, _, job in list(self.accepted) if sent_at > moment]


@dataclass
class Feed:
    """The hub's all-jobs feed, read by a thread: the terminal events it delivered."""

    url: str
    ended: set[str] = field(default_factory=set)
    opened: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with (
            httpx.Client(timeout=60) as client,
            connect_sse(client, "GET", f"{self.url}/v1/events") as source,
        ):
            self.opened.set()
            try:
                for message in source.iter_sse():
                    if message.data and message.event not in ("reset", "close"):
                        event = orjson.loads(message.data)
                        if event["type"] == "succeeded":
                            self.ended.add(event["job_id"])
                    if self.stopped.is_set():  # read once more after a last job's events
                        return
            except httpx.HTTPError:
                if not self.stopped.is_set():  # else the hub stopped first: nothing lost
                    raise


def test_a_master_killed_under_load_fails_over_and_jobs_go_on(
    stack: Stack, cluster: RedisClusterServers
) -> None:
    hub: Hub = stack.hub()
    load, feed = Load(hub.url), Feed(hub.url)
    threads = [threading.Thread(target=t.run, daemon=True) for t in (feed, load)]
    for thread in threads:
        thread.start()
    try:
        assert feed.opened.wait(30)
        wait_for(lambda: len(load.accepted) >= AFTER, timeout=30, what="jobs before the kill")
        old = owner(cluster, set())
        assert old is not None and old in cluster.ports[:3]
        cluster.kill(old)
        killed_at = time.monotonic()
        new = wait_for(
            lambda: owner(cluster, {old}), timeout=30, what="the cluster to promote a replica"
        )
        promoted_at = time.monotonic()
        wait_for(
            lambda: len(load.sent_after(promoted_at)) >= AFTER,
            timeout=30,
            what="jobs accepted after the promotion",
        )
    finally:
        load.stopped.set()
        threads[1].join(30)
    after = load.sent_after(promoted_at)
    recovered_at = min(answered for sent, answered, _ in load.accepted if sent > killed_at)
    with httpx.Client(base_url=hub.url, timeout=30) as client:

        def ended() -> bool:
            answers = [client.get(f"/v1/jobs/{job}") for job in after]
            assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
            jobs = [r.json() for r in answers]
            assert all(j["status"] in ("queued", "running", "succeeded") for j in jobs), jobs
            return all(j["status"] == "succeeded" for j in jobs)

        wait_for(ended, timeout=30, every=0.2, what="the jobs accepted after the promotion")
        before = [job for sent_at, _, job in load.accepted if sent_at < killed_at]
        lost = sum(client.get(f"/v1/jobs/{job}").status_code == 404 for job in before)
    with Redis(port=new) as node:  # the worker ran them from the new master
        assert all(node.exists(keys.job(job)) for job in after)
    wait_for(lambda: feed.ended >= set(after), timeout=30, what="the feed to deliver their ends")
    feed.stopped.set()
    with httpx.Client(base_url=hub.url, timeout=30) as client:
        assert client.post("/v1/jobs", json=BODY).status_code == 202  # its events end the feed
    threads[0].join(30)
    for proc in stack.processes:
        proc.check_alive()  # the hub and the worker followed the failover by themselves
    print(
        f"cluster failover: promoted {promoted_at - killed_at:.1f} s after the kill, "
        f"first 202 to a submission sent after the kill {recovered_at - killed_at:.1f} s "
        f"after it; accepted {len(load.accepted)}, refused: {load.refused}; of the "
        f"{len(before)} acknowledged before the kill, lost (no WAIT): {lost}"
    )
