"""The running parts a test module needs: a Redis database of its own, and workers and hubs as
real processes, started and stopped with the product's own helpers (``cli.processes``).

One module, one database (of a test Redis with ``DATABASES`` of them): a module's jobs, queues,
workers and events are invisible to every other module, pub/sub included, since the channel
names carry the database's index (``contract/keys.py``). So no test waits for another module's
jobs to drain. A module that must stop its Redis gets a server of its own.

A stack's *topology* is ``single`` (the above) or ``cluster``: the session's 3-master Redis
Cluster (tests/cluster.py), emptied for each stack, which has database 0 only. A module runs
against both when it says ``TOPOLOGIES = ("single", "cluster")`` (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import pytest
from cluster import RedisClusterServers
from helpers import TestClient, wait_for
from pydantic import SecretStr
from redis import Redis

from cli.processes import free_port, start_cli, start_redis, stop, wait_ready
from contract import keys
from contract.connection import connect_sync, database
from contract.settings import Settings
from hub.app import create_app

DATABASES = 64  # one per test module, with room to spare

SERVER = shutil.which("redis-server")
"""The Redis on PATH (Debian's 7.0 in CI, as in Compose), else the one ``inferhub up`` runs."""

BASE = {"poll_delay_s": 0.02, "heartbeat_s": 0.5}
"""What every stack sets: fast polls and heartbeats (a dead worker is noticed in 1.5 s)."""


class RedisServer:
    """A redis-server on a free port, which hands out its databases one at a time."""

    def __init__(self, folder: Path, *, persistent: bool = False) -> None:
        self.folder = folder
        self.persistent = persistent
        self.port = free_port()
        self.process = self._start()
        self._used = 0

    def _start(self) -> subprocess.Popen[bytes]:
        return start_redis(
            self.port, self.folder, persistent=self.persistent, databases=DATABASES, binary=SERVER
        )

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def database(self) -> str:
        """The URL of a database nobody has used yet."""
        assert self._used < DATABASES, f"all {DATABASES} databases are taken: raise DATABASES"
        self._used += 1
        return self.url(self._used - 1)

    def restart(self) -> None:
        """Stop (SIGTERM: an append-only server has written everything) and start again."""
        stop([self.process])
        self.process = self._start()

    def stop(self) -> None:
        stop([self.process])


def settings_env(fields: dict[str, Any]) -> dict[str, str]:
    """Settings as the environment a child process reads them from (``INFERHUB_*``)."""
    env = {}
    for name, value in fields.items():
        if name not in Settings.model_fields:
            raise TypeError(f"no setting {name!r}")
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | dict):
            text = orjson.dumps(value).decode()
        else:
            text = str(value)
        env[f"INFERHUB_{name.upper()}"] = text
    return env


class Process:
    """A worker or hub the stack started (``inferhub worker|serve``), with its log file."""

    def __init__(self, command: str, name: str, env: dict[str, str], log_path: Path) -> None:
        self.command, self.name, self.env, self.log_path = command, name, env, log_path
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:  # the child holds its own copy of the file
            return start_cli(self.command, env=self.env, log=log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        assert self.process.poll() is None, f"{self.name} exited:\n{self.log_text()}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        """Every line of the log, each parsed as JSON (it must be JSON)."""
        return [orjson.loads(line) for line in self.log_text().splitlines() if line.strip()]

    def stop(self) -> None:
        stop([self.process])


class Worker(Process):
    def record(self, redis: Redis) -> dict[str, Any] | None:
        """This worker's heartbeat record, once it is in Redis."""
        for key in redis.scan_iter(match=keys.worker("*")):
            raw = redis.get(key)
            if raw is not None and orjson.loads(raw).get("pid") == self.pid:
                return dict(orjson.loads(raw))
        return None

    def wait_registered(self, redis: Redis) -> dict[str, Any]:
        def registered() -> dict[str, Any] | None:
            self.check_alive()
            return self.record(redis)

        return wait_for(registered, timeout=60, every=0.02, what=f"{self.name}'s heartbeat")


class Hub(Process):
    def __init__(self, name: str, env: dict[str, str], log_path: Path, port: int) -> None:
        super().__init__("serve", name, env, log_path)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        ok = wait_ready(self.url, 60, watch=[self.process])
        assert ok, f"{self.name} at {self.url} is not ready:\n{self.log_text()}"

    def restart(self) -> None:
        """Start again on the same port, after ``stop``."""
        self.process = self._start()
        self.wait_ready()


class Stack:
    """A Redis database and the processes started on it, stopped together by ``close``."""

    def __init__(
        self,
        redis_url: str,
        folder: Path,
        models: Path,
        *,
        server: RedisServer | None = None,
        **overrides: Any,
    ) -> None:
        self.redis_url = redis_url
        self.folder = folder
        self.server = server  # a server of the stack's own, stopped with it
        self.fields = {"redis_url": redis_url, "models": models, **BASE, **overrides}
        self.settings = Settings(**self.fields)
        self.redis = connect_sync(redis_url)  # a Sentinel URL too (tests/test_sentinel.py)
        self.processes: list[Process] = []

    @property
    def db(self) -> int:
        return database(self.redis)

    def env(self, **fields: Any) -> dict[str, str]:
        """A child's environment: the stack's settings, then ``fields``. Children answer to
        loopback host names only, as the product does by default (the tests' own apps also
        allow Starlette's ``testserver``)."""
        return {"INFERHUB_ALLOWED_HOSTS": "[]", **settings_env({**self.fields, **fields})}

    def _log(self, name: str) -> Path:
        if any(p.name == name for p in self.processes):
            raise ValueError(f"the stack already has a process named {name!r}")
        return self.folder / f"{name}.log"

    def worker(self, name: str = "worker", *, wait: bool = True, **fields: Any) -> Worker:
        """``inferhub worker`` with the stack's settings and ``fields`` (pool, models, ...);
        returns once its heartbeat is in Redis unless ``wait`` is false."""
        worker = Worker("worker", name, self.env(**fields), self._log(name))
        self.processes.append(worker)
        if wait:
            worker.wait_registered(self.redis)
        return worker

    def hub(self, name: str = "hub", *, wait: bool = True, **fields: Any) -> Hub:
        """``inferhub serve`` on a free port; returns once it is ready unless ``wait`` is
        false (ready means a worker is alive too)."""
        port = free_port()
        hub = Hub(name, self.env(port=port, **fields), self._log(name), port)
        self.processes.append(hub)
        if wait:
            hub.wait_ready()
        return hub

    def wait_ready(self) -> None:
        """Wait for every worker started without waiting to register, then every hub."""
        for proc in self.processes:
            if isinstance(proc, Worker):
                proc.wait_registered(self.redis)
        for proc in self.processes:
            if isinstance(proc, Hub):
                proc.wait_ready()

    def workers(self) -> list[Worker]:
        return [p for p in self.processes if isinstance(p, Worker)]

    def hubs(self) -> list[Hub]:
        return [p for p in self.processes if isinstance(p, Hub)]

    def named(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def first_worker(self, *, wait: bool = True) -> Worker:
        """The stack's first worker of the default pool, started now if it has none; once it
        is registered unless ``wait`` is false (a hub that waits to be ready waits for it)."""
        default = [w for w in self.workers() if "INFERHUB_POOL" not in w.env]
        if not default:
            return self.worker(wait=wait)
        if wait:
            default[0].wait_registered(self.redis)
        return default[0]

    @contextlib.contextmanager
    def app(self, *, wait_ready: bool = True, **fields: Any) -> Iterator[TestClient]:
        """The hub app in this process (lifespan running) with the stack's settings and
        ``fields``; once ``/readyz`` says 200 unless ``wait_ready`` is false."""
        with TestClient(create_app(self.settings.model_copy(update=fields))) as client:
            if wait_ready:
                wait_for(
                    lambda: client.get("/readyz").status_code == 200, timeout=30, what="/readyz"
                )
            yield client

    def child(self, folder: Path) -> Stack:
        """Another stack on the same database, for processes that end before this one's."""
        overrides = {k: v for k, v in self.fields.items() if k not in ("redis_url", "models")}
        return Stack(self.redis_url, folder, self.fields["models"], **overrides)

    def close(self) -> None:
        stop([p.process for p in self.processes])
        self.redis.close()
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Stacks:
    """Makes stacks, each on a database of the shared server that nobody used before, or on a
    server of its own: ``stacks(workers=2, hubs=2, log_format="json")``."""

    def __init__(
        self,
        server: RedisServer,
        models: Path,
        folders: pytest.TempPathFactory,
        cluster: Callable[[], RedisClusterServers],
    ) -> None:
        self.server, self.models, self.folders = server, models, folders
        self.cluster = cluster  # started at the first stack that asks for it

    def __call__(
        self,
        name: str = "stack",
        *,
        own_redis: bool = False,
        persistent: bool = False,
        workers: int = 0,
        hubs: int = 0,
        topology: str = "single",
        **overrides: Any,
    ) -> Stack:
        """A stack with ``workers`` workers and ``hubs`` hubs started at once (in parallel)
        and ready; ``overrides`` are settings for every process and app of the stack. On the
        ``cluster`` topology, on the emptied session cluster."""
        folder = self.folders.mktemp(name)
        server = RedisServer(folder, persistent=persistent) if own_redis else None
        if topology == "cluster":
            assert not own_redis, "a stack on the cluster shares the session's cluster"
            cluster = self.cluster()
            cluster.flush()
            url = cluster.url()
        else:
            assert topology == "single", topology
            url = server.url() if server is not None else self.server.database()
        stack = Stack(url, folder, self.models, server=server, **overrides)
        try:
            for i in range(workers):
                stack.worker(f"worker{i}", wait=False)
            for i in range(hubs):
                stack.hub(f"hub{i}", wait=False)
            stack.wait_ready()
        except BaseException:
            stack.close()
            raise
        return stack
