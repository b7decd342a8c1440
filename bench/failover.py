"""A Sentinel failover under load, with and without WAIT: jobs accepted, lost, time to recover.

Each round starts its own deployment on 127.0.0.1 (a master, two replicas, three sentinels:
tests/sentinel.py), a worker and a hub on its Sentinel URL, then submits iris jobs from a few
closed-loop clients, SIGKILLs the master once ``--before`` jobs are in, and goes on until
``--after`` submissions sent after the failover are accepted. Every job acknowledged with 202
is then looked up: *lost* is a 202 whose job is unknown, *unfinished* one not ended in time.
Rounds alternate ``INFERHUB_REDIS_WAIT_REPLICAS`` 0 and 1; one JSON line per round, then the
totals per setting. On loopback a replica is microseconds behind its master, so little is lost
even without WAIT; ``--lag-ms`` cuts the replicas off (SIGSTOP, and the master drops their
links) that long before the kill, as when replication lags (a replica in another zone, a
saturated link).

    python bench/failover.py --rounds 3 --submitters 8
    python bench/failover.py --rounds 3 --submitters 8 --lag-ms 300

Bounded in count and time, loopback only. A benchmark, not a test: figures go to
docs/operations.md by hand. tests/test_sentinel.py asserts 0 lost with WAIT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sentinel import Deployment, FailoverReport, failover_run  # noqa: E402

from cli.processes import free_port, start_cli, stop, wait_ready  # noqa: E402


async def one_round(folder: Path, wait_replicas: int, args: argparse.Namespace) -> FailoverReport:
    deployment = Deployment(folder, replicas=2)
    port = free_port()
    env = {
        "INFERHUB_REDIS_URL": deployment.url(),
        "INFERHUB_MODELS": str(ROOT / "models"),
        "INFERHUB_PORT": str(port),
        "INFERHUB_GRPC_PORT": "0",
        "INFERHUB_HEARTBEAT_S": "0.5",
        "INFERHUB_POLL_DELAY_S": "0.05",
        "INFERHUB_REDIS_WAIT_REPLICAS": str(wait_replicas),
        "INFERHUB_REDIS_WAIT_TIMEOUT_S": "2",
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (folder / "stack.log").open("wb") as log:
            procs += [start_cli("worker", env=env, log=log), start_cli("serve", env=env, log=log)]
            url = f"http://127.0.0.1:{port}"
            if not wait_ready(url, 60, watch=procs):
                raise RuntimeError(f"the hub did not get ready; see {folder / 'stack.log'}")
            return await failover_run(
                url,
                deployment,
                submitters=args.submitters,
                online=args.online,
                before=args.before,
                after=args.after,
                finish_s=args.finish_s,
                lag_s=args.lag_ms / 1000,
            )
    finally:
        stop(procs)
        deployment.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="failovers per setting")
    parser.add_argument("--submitters", type=int, default=8)
    parser.add_argument("--online", type=int, default=0, help="clients of /v2 infer besides")
    parser.add_argument("--before", type=int, default=200, help="jobs accepted before the kill")
    parser.add_argument("--after", type=int, default=200, help="jobs accepted after failover")
    parser.add_argument("--finish-s", type=float, default=90, help="wait for jobs to end")
    parser.add_argument("--keep", type=Path, help="a new folder to keep the logs in")
    parser.add_argument(
        "--lag-ms",
        type=float,
        default=0,
        help="cut the replicas off this long before the kill (replication lag)",
    )
    args = parser.parse_args()
    totals: dict[int, dict[str, Any]] = {}
    with contextlib.ExitStack() as cleanup:
        tmp = args.keep or cleanup.enter_context(
            tempfile.TemporaryDirectory(prefix="inferhub-failover-")
        )
        for i in range(args.rounds):
            for wait_replicas in (0, 1):
                folder = Path(tmp) / f"round{i}-wait{wait_replicas}"
                folder.mkdir(parents=True)
                report = asyncio.run(one_round(folder, wait_replicas, args))
                figures = {"wait_replicas": wait_replicas, **report.figures()}
                print(json.dumps(figures), flush=True)
                total = totals.setdefault(wait_replicas, {"rounds": 0, "recover_s": []})
                total["rounds"] += 1
                total["recover_s"].append(figures["recover_s"])
                for name in ("accepted", "lost", "unfinished", "rerun"):
                    total[name] = total.get(name, 0) + figures[name]
    for wait_replicas, total in totals.items():
        print(json.dumps({"wait_replicas": wait_replicas, "total": total}))


if __name__ == "__main__":
    main()
