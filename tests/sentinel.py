"""A Redis deployment under Sentinel on loopback, and a failover under a steady load of jobs.

``Deployment`` runs a master, its replicas and three sentinels (Debian's ``redis-server`` and
``redis-sentinel``) on free ports, with short failure detection. ``failover_run`` submits jobs
to a hub in a closed loop, SIGKILLs the master once some are in, keeps submitting until jobs are
accepted again after the failover, then checks that every job acknowledged with 202 exists and
finishes. tests/test_sentinel.py asserts on it; bench/failover.py prints its figures.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import statistics
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from helpers import wait_for

from cli.processes import free_port, stop

SERVICE = "inferhub"
TERMINAL = {"succeeded", "failed", "canceled"}
BODY = {"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]}
ONLINE = "/v2/models/iris/infer"
ONLINE_BODY = {
    "inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
    ],
    "parameters": {"timeout": 5_000_000},  # µs: a reply lost in the failover costs 5 s, not 30
}


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"no {name} on PATH: apt-get install redis-server redis-sentinel")
    return found


def _answers(port: int, check: str = "PING") -> Any:
    client = redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=1)
    try:
        return client.execute_command(check)
    except redis.RedisError:
        return None
    finally:
        client.close()


class Deployment:
    """A master, ``replicas`` replicas and three sentinels (quorum 2) on 127.0.0.1."""

    def __init__(
        self,
        folder: Path,
        *,
        replicas: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.folder = folder
        self.servers: dict[int, subprocess.Popen[bytes]] = {}
        self.sentinels: dict[int, subprocess.Popen[bytes]] = {}
        try:
            self.first_master = self._server()
            for _ in range(replicas):
                self._server(replica_of=self.first_master)
            for _ in range(3):
                self._sentinel(down_after_ms, failover_timeout_ms)
            self._wait_watching(replicas)
        except BaseException:
            self.stop()
            raise

    def url(self, db: int = 0) -> str:
        nodes = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{nodes}/{SERVICE}/{db}"

    def _server(self, replica_of: int | None = None) -> int:
        port = free_port()
        flags = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        flags += ["--dir", str(self.folder), "--logfile", str(self.folder / f"redis-{port}.log")]
        if replica_of is not None:
            flags += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.servers[port] = self._spawn([binary("redis-server"), *flags], port)
        return port

    def _sentinel(self, down_after_ms: int, failover_timeout_ms: int) -> None:
        port = free_port()
        conf = self.folder / f"sentinel-{port}.conf"  # the sentinel rewrites it: its own file
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.folder}\n"
            f"logfile {self.folder / f'sentinel-{port}.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.first_master} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}\n"
        )
        self.sentinels[port] = self._spawn([binary("redis-sentinel"), str(conf)], port)

    def _spawn(self, command: list[str], port: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            wait_for(lambda: proc.poll() is not None or _answers(port), timeout=10, what=command[0])
        except AssertionError:
            stop([proc])
            raise
        if proc.poll() is not None:
            raise RuntimeError(f"{command} exited at once; see the logs in {self.folder}")
        return proc

    def _wait_watching(self, replicas: int) -> None:
        """Until every replica is in sync and every sentinel knows the replicas and the other
        sentinels (else a failover would find no quorum or nothing to promote)."""

        def watching(port: int) -> bool:
            state = _answers(port, f"SENTINEL MASTER {SERVICE}")
            if not state:
                return False
            fields = dict(zip(state[::2], state[1::2], strict=True))
            return (
                int(fields[b"num-slaves"]) == replicas and int(fields[b"num-other-sentinels"]) == 2
            )

        def synced(port: int) -> bool:
            return b"master_link_status:up" in (_answers(port, "INFO replication") or b"")

        for port in self.servers:
            if port != self.first_master:
                wait_for(lambda p=port: synced(p), timeout=30, what=f"replica {port} to sync")
        for port in self.sentinels:
            wait_for(
                lambda p=port: watching(p), timeout=30, what=f"sentinel {port} to see the others"
            )

    def master_port(self) -> int | None:
        """The master's port as the sentinels agree on it (None while they disagree)."""
        said = set()
        for port in self.sentinels:
            address = _answers(port, f"SENTINEL GET-MASTER-ADDR-BY-NAME {SERVICE}")
            said.add(int(address[1]) if address else None)
        found = said.pop() if len(said) == 1 else None
        role = _answers(found, "ROLE") if found is not None else None
        return found if role and role[0] == b"master" else None

    def kill_master(self, lag_s: float = 0) -> tuple[int, float]:
        """SIGKILL the master (no goodbye, nothing flushed); its port, and when (monotonic).
        With ``lag_s``, the replicas are frozen (SIGSTOP) and cut off that long before: what
        the master acknowledges meanwhile reaches no replica, as when replication lags."""
        port = self.master_port()
        assert port is not None, "the sentinels do not agree on a master"
        replicas = [p for p in self.servers.values() if p is not self.servers[port]]
        if lag_s:
            for proc in replicas:
                proc.send_signal(signal.SIGSTOP)  # frozen, so they cannot reconnect
            assert _answers(port, "CLIENT KILL TYPE replica")  # else the sockets' buffers
            time.sleep(lag_s)  # the lag being modelled, not a wait for something
        self.servers[port].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        for proc in replicas if lag_s else []:
            proc.send_signal(signal.SIGCONT)
        self.servers[port].wait()
        return port, killed_at

    def wait_failover(self, old_port: int, limit_s: float = 30) -> int:
        """Until the sentinels agree on a new master that says it is one; its port."""
        new: int = wait_for(
            lambda: (port := self.master_port()) not in (None, old_port) and port,
            timeout=limit_s,
            what="the sentinels to promote a replica",
        )
        return new

    def stop(self) -> None:
        stop([*self.servers.values(), *self.sentinels.values()], grace_s=5)


@dataclass
class FailoverReport:
    """What a failover under load did to the jobs acknowledged with 202."""

    accepted: int = 0  # 202s
    refused: dict[int | str, int] = field(default_factory=dict)  # status code (or error): count
    accepted_after: int = 0  # 202s to submissions sent after the failover
    lost: list[str] = field(default_factory=list)  # acknowledged, then unknown (404)
    unfinished: list[str] = field(default_factory=list)  # acknowledged, not ended in time
    rerun: int = 0  # ended after more than one attempt (a worker's writes lost, then re-run)
    failover_s: float = 0.0  # from the SIGKILL until the sentinels agree on a new master
    recover_s: float = 0.0  # from the SIGKILL until a submission sent after it gets a 202
    all_ended_s: float = 0.0  # from the SIGKILL until every acknowledged job had ended
    killed_at: float = 0.0  # monotonic
    accept_ms: list[float] = field(default_factory=list)  # each 202's latency, before the kill
    online: dict[str, int] = field(default_factory=dict)  # online (/v2 infer) outcomes: count
    online_ok_after: int = 0  # 200s to online requests sent after the failover
    jobs: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "accepted_after_failover": self.accepted_after,
            "refused": {str(k): v for k, v in self.refused.items()},
            "lost": len(self.lost),
            "unfinished": len(self.unfinished),
            "rerun": self.rerun,
            "failover_s": round(self.failover_s, 2),
            "recover_s": round(self.recover_s, 2),
            "all_ended_s": round(self.all_ended_s, 2),
            "online": dict(self.online),
            "online_ok_after_failover": self.online_ok_after,
            "accept_p50_ms": round(statistics.median(self.accept_ms), 2)
            if self.accept_ms
            else None,
        }


class _Load:
    """Submitters in a closed loop, each job with an Idempotency-Key (as a careful client)."""

    def __init__(self, client: httpx.AsyncClient, report: FailoverReport) -> None:
        self.client, self.report = client, report
        self.killed_at: float | None = None  # monotonic time of the SIGKILL
        self.failed_over = False
        self.stopped = False
        self.changed = asyncio.Event()

    async def submit_until_stopped(self) -> None:
        while not self.stopped:
            sent_at, after = time.monotonic(), self.failed_over
            try:
                response = await self.client.post(
                    "/v1/jobs", json=BODY, headers={"Idempotency-Key": uuid.uuid4().hex}
                )
                outcome: int | str = response.status_code
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            if outcome == 202:
                self._accepted(response.json()["id"], sent_at, after)
            else:
                self.report.refused[outcome] = self.report.refused.get(outcome, 0) + 1
            self.changed.set()

    async def infer_until_stopped(self) -> None:
        """Online requests (no record: nothing to lose, but a reply can be)."""
        report = self.report
        while not self.stopped:
            after = self.failed_over
            try:
                outcome = str((await self.client.post(ONLINE, json=ONLINE_BODY)).status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            report.online[outcome] = report.online.get(outcome, 0) + 1
            report.online_ok_after += after and outcome == "200"
            self.changed.set()

    def _accepted(self, job_id: str, sent_at: float, after: bool) -> None:
        report = self.report
        report.accepted += 1
        report.jobs.append(job_id)
        report.accepted_after += after
        if self.killed_at is None:
            report.accept_ms.append((time.monotonic() - sent_at) * 1000)
        elif sent_at > self.killed_at and not report.recover_s:
            report.recover_s = time.monotonic() - self.killed_at

    async def until(self, condition: Any, limit_s: float, what: str) -> None:
        async with asyncio.timeout(limit_s):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


async def failover_run(
    hub_url: str,
    deployment: Deployment,
    *,
    submitters: int = 2,
    online: int = 1,
    before: int = 30,
    after: int = 30,
    finish_s: float = 60,
    lag_s: float = 0,
) -> FailoverReport:
    """Submit jobs (and ``online`` requests); SIGKILL the master once ``before`` are accepted
    (the replicas cut off for ``lag_s`` before); go on until ``after`` submissions sent after
    the failover are accepted; then follow every acknowledged job."""
    report = FailoverReport()
    async with httpx.AsyncClient(base_url=hub_url, timeout=30) as client:
        load = _Load(client, report)
        tasks = [asyncio.create_task(load.submit_until_stopped()) for _ in range(submitters)]
        tasks += [asyncio.create_task(load.infer_until_stopped()) for _ in range(online)]
        try:
            await load.until(lambda: report.accepted >= before, 60, "jobs before the kill")
            old, report.killed_at = await asyncio.to_thread(deployment.kill_master, lag_s)
            load.killed_at = report.killed_at
            await asyncio.to_thread(deployment.wait_failover, old)
            report.failover_s = time.monotonic() - load.killed_at
            load.failed_over = True
            await load.until(
                lambda: report.accepted_after >= after and report.online_ok_after >= min(online, 1),
                60,
                "jobs and an online request after it",
            )
        finally:
            load.stopped = True
            await asyncio.gather(*tasks)
        await _follow(client, report, finish_s)
    return report


async def _follow(client: httpx.AsyncClient, report: FailoverReport, limit_s: float) -> None:
    """Sort every acknowledged job: ended, unknown (lost), or not ended within ``limit_s``."""
    pending = list(report.jobs)
    deadline = time.monotonic() + limit_s
    room = asyncio.Semaphore(16)

    async def status(job_id: str) -> dict[str, Any] | None:
        async with room:
            response = await client.get(f"/v1/jobs/{job_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        job: dict[str, Any] = response.json()
        return job

    while pending:
        jobs = await asyncio.gather(*(status(job) for job in pending))
        report.lost += [job for job, found in zip(pending, jobs, strict=True) if found is None]
        ended = [j for j in jobs if j is not None and j["status"] in TERMINAL]
        report.rerun += sum(j["attempt"] > 1 for j in ended)
        pending = [j["id"] for j in jobs if j is not None and j["status"] not in TERMINAL]
        if pending and time.monotonic() > deadline:
            report.unfinished = pending
            return
        if pending:  # polled, as wait_for does: the jobs are other processes' work
            await asyncio.sleep(0.2)
    report.all_ended_s = time.monotonic() - report.killed_at
