"""Real parts only: redis-server, the arq worker and the hub as subprocesses, onnxruntime.

Every module gets its own stack (``tests/stack.py``): a database of the session's Redis, and the
workers and hubs it starts, stopped at the module's end. Nothing here talks to the Redis on
port 6379: every Redis is started on a free port.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import RedisClusterServers
from helpers import ROOT, TestClient, build_failing, build_pair, build_slow, wait_for
from redis import Redis
from stack import RedisServer, Stack, Stacks, Worker

from contract import keys
from contract.connection import connect_sync
from contract.settings import Settings

# Starlette's TestClient sends "Host: testserver", which a keyless hub refuses (hub/hosts.py):
# in the environment, every Settings() of the tests allows it, whoever builds one.
os.environ.setdefault("INFERHUB_ALLOWED_HOSTS", '["testserver"]')
# Hubs serve gRPC on 8001 by default, where several hubs of the tests would collide: they serve
# none unless a test gives a free port (tests/test_grpc.py).
os.environ.setdefault("INFERHUB_GRPC_PORT", "0")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example models plus test models: slow, failing, pair, orphan, broken, badconfig."""
    root = tmp_path_factory.mktemp("repo") / "models"
    shutil.copytree(ROOT / "models", root)
    build_slow(root / "slow")
    build_failing(root / "failing")
    build_pair(root / "pair")
    # orphan: iris served by pool "nobody", which has no worker once the orphan worker left
    shutil.copytree(ROOT / "models" / "iris", root / "orphan")
    (root / "orphan" / "config.toml").write_text('pool = "nobody"\n')
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx model \x00\x01\x02")
    (root / "broken" / "config.toml").write_text('description = "garbage bytes"\n')
    shutil.copytree(ROOT / "models" / "iris" / "1", root / "badconfig" / "1")
    (root / "badconfig" / "config.toml").write_text("max_batch_sise = 8\n")
    return root


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster on loopback ports, for the modules of the cluster topology."""
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def stacks(
    redis_server: RedisServer,
    model_repo: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Stacks:
    """Makes stacks; a module that needs another stack than the default overrides ``stack``
    with one of these."""
    return Stacks(
        redis_server,
        model_repo,
        tmp_path_factory,
        cluster=lambda: request.getfixturevalue("redis_cluster"),
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module with ``TOPOLOGIES`` runs each of its tests on a stack of each (module-scoped:
    one stack per topology); ``@pytest.mark.topologies("single")`` narrows a test."""
    topologies = getattr(metafunc.module, "TOPOLOGIES", None)
    if topologies is None or "topology" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("topologies")
    chosen = [t for t in topologies if marker is None or t in marker.args]
    metafunc.parametrize("topology", chosen, indirect=True, scope="module")


@pytest.fixture(scope="module")
def topology(request: pytest.FixtureRequest) -> str:
    """The module's Redis: ``single`` unless it runs on several (``TOPOLOGIES``)."""
    return str(getattr(request, "param", "single"))


@pytest.fixture(scope="module")
def stack(stacks: Stacks, topology: str) -> Iterator[Stack]:
    """The module's database (or the emptied cluster), and the processes its tests start on
    it."""
    with stacks(topology=topology) as made:
        yield made


@pytest.fixture
def transient(stack: Stack, tmp_path: Path) -> Iterator[Stack]:
    """Processes of one test, on the module's database, stopped when the test ends."""
    with stack.child(tmp_path) as made:
        yield made


@pytest.fixture(scope="module")
def redis_url(stack: Stack) -> str:
    return stack.redis_url


@pytest.fixture(scope="module")
def redis(redis_url: str) -> Iterator[Redis]:
    """A plain redis-py client on the module's database (a cluster client on the cluster), to
    look at what was written."""
    client = connect_sync(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def settings(stack: Stack) -> Settings:
    return stack.settings


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Worker:
    """The arq worker of the default pool, as a real subprocess."""
    return stack.first_worker()


@pytest.fixture(scope="module")
def orphan_model(stack: Stack, redis: Redis) -> str:
    """The model ``orphan`` in the catalogue, with no live worker for its pool ``nobody``.

    A worker of pool ``nobody`` starts just long enough for its heartbeat to write the model's
    catalogue entry, then stops; jobs for ``orphan`` then stay queued.
    """
    orphan = stack.worker("orphan", pool="nobody")
    try:
        record = orphan.record(redis)
        assert record is not None and record["pool"] == "nobody"
        wait_for(lambda: redis.hexists(keys.MODELS, "orphan"), what="orphan in the catalogue")
    finally:
        orphan.stop()
    return "orphan"


@pytest.fixture(scope="module")
def client(stack: Stack, worker: Worker) -> Iterator[TestClient]:
    """The hub app, lifespan running, with a live worker behind it."""
    with stack.app() as app:
        yield app


@pytest.fixture(scope="module")
def hub_url(stack: Stack) -> str:
    """A real hub process (``inferhub serve``), for the tests that need HTTP from outside the
    app (the CLI, schemathesis); it starts beside the module's worker and is ready with it."""
    stack.first_worker(wait=False)
    return stack.hub("hub", max_wait_s=5).url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """schemathesis leaves each API operation's item the test function's node id, which pytest's
    progress counter counts once (the run ended at 90%): give each its operation, as
    ``test_x[GET /v1/jobs]``."""
    for item in items:
        label = getattr(item, "operation_label", None)  # only schemathesis's items have one
        if label and not item.nodeid.endswith("]"):
            nodeid = f"{item.nodeid}[{label}]"
            if hasattr(item, "_id"):  # pytest 9 keeps a structured id
                item._id = item._id.parse(nodeid)
            else:
                item._nodeid = nodeid


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "topologies(*names): the topologies of the module's TOPOLOGIES a test runs on"
    )
