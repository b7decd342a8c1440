"""Redis under Sentinel: the URL form, WAIT for replicas, and a failover under load.

Real processes only: a master, two replicas and three sentinels (Debian's ``redis-server`` and
``redis-sentinel``, ``tests/sentinel.py``), a worker and a hub started with the Sentinel URL.
Two replicas, so that a failover leaves one and ``INFERHUB_REDIS_WAIT_REPLICAS=1`` can still be
met: jobs go on being accepted after the master is gone.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from sentinel import Deployment, failover_run
from stack import Stack

from contract.connection import SentinelTarget, sentinel_target
from contract.settings import Settings

DURABLE = {"redis_wait_replicas": 1, "redis_wait_timeout_s": 5.0}
"""A generous timeout: on a loaded machine a replica may take a while to confirm."""


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    url = "redis+sentinel://:s3cret@h1:26380,h2,[::1]:26381/mymaster/3?sentinel_password=p"
    assert sentinel_target(url) == SentinelTarget(
        nodes=(("h1", 26380), ("h2", 26379), ("::1", 26381)),
        service="mymaster",
        db=3,
        password="s3cret",
        sentinel_password="p",
    )
    assert sentinel_target("redis+sentinel://h1/mymaster") == SentinelTarget(
        nodes=(("h1", 26379),), service="mymaster"
    )
    assert sentinel_target("redis://127.0.0.1:6379/0") is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:6379", "scheme is 'http'"),
        ("redis+sentinel://:pw@h1:26379", "a Sentinel URL is redis+sentinel://"),
        ("redis+sentinel://h1:port/mymaster", "a sentinel is host:port, got 'h1:port'"),
        ("redis+sentinel://h1/mymaster/zero", "the database of a Sentinel URL is a number"),
        ("redis+sentinel://h1/mymaster?password=x", "?sentinel_password="),
    ],
)
def test_a_wrong_redis_url_is_refused_with_what_to_fix(url: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(redis_url=url)
    message = str(caught.value)
    assert says in message
    assert "pw@" not in message.split("input_value")[0]  # the password is not repeated


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    made = Deployment(tmp_path_factory.mktemp("sentinel"), replicas=2)
    yield made
    made.stop()


@pytest.fixture(scope="module")
def stack(
    deployment: Deployment, model_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with Stack(deployment.url(), tmp_path_factory.mktemp("stack"), model_repo) as made:
        made.worker()
        yield made


def test_a_job_that_too_few_replicas_confirm_is_refused_with_503_and_may_exist(
    stack: Stack,
) -> None:
    with stack.app(redis_wait_replicas=3, redis_wait_timeout_s=0.2) as client:
        refused = client.post("/v1/jobs", json={"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]})
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        error = refused.json()["error"]
        assert error["code"] == "not_replicated"
        assert re.search(r"only \d of the 3 Redis replicas asked for", error["message"])
        assert "Idempotency-Key" in error["message"]
        job_id = error["message"].split()[1]  # "job <id> was written ..."
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200  # it may exist: it does


def test_with_wait_a_failover_under_load_loses_no_acknowledged_job(
    stack: Stack, deployment: Deployment
) -> None:
    hub = stack.hub(**DURABLE)
    report = asyncio.run(failover_run(hub.url, deployment, before=30, after=30))
    print("failover with WAIT 1:", json.dumps(report.figures()))
    assert report.accepted_after >= 30  # accepted after the failover, on the new master
    assert report.lost == []  # every 202 names a job that exists...
    assert report.unfinished == []  # ...and ended
    assert report.online_ok_after > 0  # the online lane answers again too
    for proc in stack.processes:
        proc.check_alive()  # the hub and the worker followed the failover by themselves
