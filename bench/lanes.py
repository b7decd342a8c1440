"""Both lanes of inferhub beside the two references, on the same models, in one run.

For each scenario it drives a closed loop (one row per request, V2 JSON) against inferhub's
online lane (``/v2 infer``), the no-queue baseline (bench/baseline.py: FastAPI calling
onnxruntime in the event loop) and, for the jobs lane, ``/v1/jobs`` with ``Prefer: wait``, in
turns (four windows each, so that a drift of the machine's speed falls on all alike); it
measures onnxruntime in process on the same model, counts the Redis commands per request
(``INFO commandstats`` before and after) and the CPU each server process used per request
(steadier than rows/s on a shared machine), and prints the ratios.

    python bench/lanes.py                     # every scenario, ~10 s a target
    python bench/lanes.py --seconds 5 --only tiny-c64
    python bench/lanes.py --only heavy-c32 --profile /tmp/spy   # py-spy of hub and worker
    python bench/lanes.py --only tiny-c64 --profile /tmp/spy --profiled jobs
    inferhub bench                            # the same

It starts its own Redis, hub, worker and baseline on 127.0.0.1; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import (  # noqa: E402
    Stack,
    build_body,
    closed_loop,
    make_repo,
    onnxruntime_rows_per_s,
    percentiles,
    rss_mib,
    sample_rows,
)
from cli.processes import free_port, stop, wait_ready  # noqa: E402
from workers.repository import load_repository  # noqa: E402

ROUNDS = 4
"""Windows per target and scenario, taken in turns (``measure``)."""


@dataclass
class Totals:
    """One target's figures summed over its windows."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    wall: float = 0.0  # the closed loop's own
    elapsed: float = 0.0  # with the CPU readings around it, for the cores idle
    idle: float = 0.0
    loadgen: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    commands: dict[str, float] = field(default_factory=dict)
    batches: float = 0.0
    batched: float = 0.0


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    concurrency: int


SCENARIOS = (
    Scenario("tiny-c1", "digits", 1),
    Scenario("tiny-c64", "digits", 64),
    Scenario("heavy-c32", "heavy", 32),
)


def redis_calls(client: redis.Redis) -> dict[str, int]:
    """Commands Redis has run so far, by name (those inside scripts too)."""
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}


def per_request(before: dict[str, int], after: dict[str, int], requests: int) -> dict[str, float]:
    """Commands per request between two counts, the most frequent first (less the INFO)."""
    counts = {k: n - before.get(k, 0) - (k == "info") for k, n in after.items()}
    ranked = sorted(((n / max(requests, 1), k) for k, n in counts.items()), reverse=True)
    return {k: round(n, 2) for n, k in ranked if round(n, 2) > 0}


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far, from /proc."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime: clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def idle_s() -> float:
    """Seconds the machine's cores have been idle so far, summed (/proc/stat): the load
    generator, the servers and anything else running leave this much unused."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")  # idle, iowait


def online_batches(url: str) -> tuple[float, float]:
    """The hub's online batches and the requests in them so far (its /metrics)."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    counts = {"inferhub_online_batches_total": 0.0, "inferhub_online_batched_requests_total": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in counts:
            counts[name] += float(line.rsplit(" ", 1)[1])
    return counts["inferhub_online_batches_total"], counts["inferhub_online_batched_requests_total"]


def bodies(model: str, endpoint: str, rows: Any) -> list[tuple[str, bytes, dict[str, str]]]:
    return [
        build_body(endpoint, model, "x" if model == "heavy" else "input", r[None]) for r in rows
    ]


def profilers(
    into: Path | None, scenario: str, pids: dict[str, list[int]], seconds: float
) -> list[subprocess.Popen[bytes]]:
    """py-spy on a lane's hub and worker for ``seconds`` (a tool, not a project dependency:
    ``pip install py-spy``), as raw stacks with counts in ``into``; none if None."""
    if into is None:
        return []
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    into.mkdir(parents=True, exist_ok=True)
    record = [spy, "record", "--format", "raw", "--duration", str(int(seconds))]
    return [
        subprocess.Popen(
            [*record, "--pid", str(pid), "-o", str(into / f"{scenario}-{role}-{pid}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for role in ("hub", "worker")
        for pid in pids[role]
    ]


def measure(
    stack: Stack,
    baseline_url: str,
    baseline_pid: int,
    scenario: Scenario,
    repo: Path,
    seconds: float,
    profile: Path | None = None,
    profiled: str = "online",
) -> dict[str, Any]:
    model = load_repository(repo).models[scenario.model]
    version = model.versions[model.latest]
    rows = sample_rows(
        scenario.model, version.inputs[0], 50_000 if scenario.model != "heavy" else 5_000
    )
    counter = redis.Redis.from_url(stack.redis_url)
    result: dict[str, Any] = {"scenario": scenario.name, "model": scenario.model}
    targets = [("baseline", baseline_url, "v2"), ("online", stack.urls[0], "v2")]
    if scenario.model != "heavy":
        targets.append(("jobs", stack.urls[0], "v1"))
    requests = {endpoint: bodies(scenario.model, endpoint, rows) for _, _, endpoint in targets}
    for _, url, endpoint in targets:  # warm up
        asyncio.run(closed_loop([url], requests[endpoint][:2000], scenario.concurrency, 1.0))
    # the targets take turns, ROUNDS windows each, so that a drift of the machine's speed
    # during the scenario falls on all of them alike; a profile wants one window of its own
    rounds = 1 if profile else ROUNDS
    totals = {name: Totals() for name, _, _ in targets}
    for _ in range(rounds):
        for name, url, endpoint in targets:
            # the CPU per request reads truer than rows/s on a shared machine
            pids = stack.pids() if name != "baseline" else {"hub": [baseline_pid]}
            spies = profilers(
                profile if name == profiled else None, f"{scenario.name}-{name}", pids, seconds
            )
            total = totals[name]
            before, cpu_before = redis_calls(counter), {k: cpu_s(v) for k, v in pids.items()}
            loadgen, idle_before, began = sum(os.times()[:2]), idle_s(), time.monotonic()
            batches = online_batches(stack.urls[0])
            latencies, _, errors, wall = asyncio.run(
                closed_loop([url], requests[endpoint], scenario.concurrency, seconds / rounds)
            )
            total.idle += idle_s() - idle_before
            total.elapsed += time.monotonic() - began
            total.loadgen += sum(os.times()[:2]) - loadgen
            for spy in spies:
                spy.wait(timeout=seconds + 30)
            for k, v in pids.items():
                total.cpu[k] = total.cpu.get(k, 0.0) + cpu_s(v) - cpu_before[k]
            for k, n in per_request(before, redis_calls(counter), 1).items():
                total.commands[k] = total.commands.get(k, 0.0) + n
            total.latencies += latencies
            total.errors += errors
            total.wall += wall
            sent, batched = (
                b - a for a, b in zip(batches, online_batches(stack.urls[0]), strict=True)
            )
            total.batches += sent
            total.batched += batched
    for name, total in totals.items():
        served = max(len(total.latencies), 1)
        figures: dict[str, Any] = {
            "requests": len(total.latencies),
            "errors": total.errors,
            "rows_per_s": round(len(total.latencies) / total.wall, 1),
            "latency_ms": percentiles(total.latencies),
        }
        cpu = {k: round(1e6 * v / served) for k, v in total.cpu.items()}
        figures["server_cpu_us_per_request"] = cpu.pop("hub")
        cpu["loadgen"] = round(1e6 * total.loadgen / served)  # this process, the client
        figures["cpu_us_per_request_beside"] = cpu  # the worker's, Redis's and the client's
        figures["cores_idle"] = round(total.idle / total.elapsed, 2)  # of the machine's
        if name == "online":
            figures["requests_per_batch"] = round(total.batched / max(total.batches, 1), 1)
        commands = {k: round(n / served, 2) for k, n in total.commands.items()}
        ranked = dict(sorted(commands.items(), key=lambda kv: -kv[1]))
        figures["redis_commands"] = {k: n for k, n in ranked.items() if n > 0}
        figures["redis_commands_per_request"] = round(sum(total.commands.values()) / served, 2)
        result[name] = figures
    threads = model.config.onnxruntime.intra_op_num_threads
    result["onnxruntime"] = {
        f"batch_{n}": round(onnxruntime_rows_per_s(version.path, rows[:n], threads), 1)
        for n in (1, 32, 128)
    }
    base, online = result["baseline"], result["online"]
    result["ratios"] = {
        "online/baseline rows/s": round(online["rows_per_s"] / base["rows_per_s"], 3),
        "online/baseline p50": round(online["latency_ms"]["p50"] / base["latency_ms"]["p50"], 3),
        "online/onnxruntime b32": round(
            online["rows_per_s"] / result["onnxruntime"]["batch_32"], 4
        ),
    }
    if "jobs" in result:
        result["ratios"]["jobs/baseline rows/s"] = round(
            result["jobs"]["rows_per_s"] / base["rows_per_s"], 3
        )
    counter.close()
    return result


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'scenario':<10} {'target':<9} {'rows/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'redis cmd/req':>13} {'server cpu us/req':>17}"
    ]
    for r in results:
        for target in ("baseline", "online", "jobs"):
            if target in r:
                f = r[target]
                lines.append(
                    f"{r['scenario']:<10} {target:<9} {f['rows_per_s']:>9,.0f} "
                    f"{f['latency_ms']['p50']:>8.2f} {f['latency_ms']['p99']:>8.2f} "
                    f"{f['redis_commands_per_request']:>13.2f} "
                    f"{f['server_cpu_us_per_request']:>17,}"
                )
                top = ", ".join(f"{k} {v:g}" for k, v in list(f["redis_commands"].items())[:8])
                if top:
                    lines.append(f"{'':<10} {target} per request: {top}")
                beside = ", ".join(f"{k} {v:,}" for k, v in f["cpu_us_per_request_beside"].items())
                if beside:
                    lines.append(
                        f"{'':<10} {target} cpu us/req beside the hub: {beside}; "
                        f"cores idle {f['cores_idle']:g}"
                        + (f"; {f['requests_per_batch']:g} a batch" if target == "online" else "")
                    )
        ort_figures = ", ".join(f"{k} {v:,.0f}" for k, v in r["onnxruntime"].items())
        lines.append(f"{r['scenario']:<10} onnxruntime in process rows/s: {ort_figures}")
        lines.append(
            f"{r['scenario']:<10} ratios: "
            + ", ".join(f"{k} {v:g}" for k, v in r["ratios"].items())
        )
    return "\n".join(lines)


def idle(stack: Stack, seconds: float) -> dict[str, Any]:
    client = redis.Redis.from_url(stack.redis_url)
    time.sleep(2)  # start-up and the scenarios' tails settle
    before = redis_calls(client)
    time.sleep(seconds)
    per_s = sum(per_request(before, redis_calls(client), 1).values()) / seconds
    client.close()
    pids = stack.pids()
    return {
        "redis_commands_per_s": round(per_s, 2),
        "rss_mib": {k: round(sum(rss_mib(p) for p in v), 1) for k, v in pids.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="per target and scenario")
    parser.add_argument("--only", choices=[s.name for s in SCENARIOS], action="append")
    parser.add_argument("--idle", type=float, default=5, help="idle figures over N s; 0: skip")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy a lane's hub and worker into this folder (raw stacks)",
    )
    parser.add_argument(
        "--profiled",
        choices=["online", "jobs"],
        default="online",
        help="the lane --profile records (jobs: /v1/jobs, in the tiny scenarios)",
    )
    args = parser.parse_args(argv)
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
    with tempfile.TemporaryDirectory(prefix="inferhub-lanes-") as tmp:
        repo = make_repo(Path(tmp))
        stack = Stack(repo)
        port = free_port()
        baseline = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "baseline.py"),
                "--models",
                str(repo),
                "--port",
                str(port),
            ]
        )
        try:
            url = f"http://127.0.0.1:{port}"
            if not wait_ready(url, 60, watch=[baseline]):
                raise RuntimeError("the baseline did not start")
            idle_figures = idle(stack, args.idle) if args.idle else None
            results = [
                measure(
                    stack, url, baseline.pid, s, repo, args.seconds, args.profile, args.profiled
                )
                for s in scenarios
            ]
        finally:
            stop([baseline])
            stack.close()
    if args.json:
        print(json.dumps({"scenarios": results, "idle": idle_figures}))
        return
    print(table(results))
    if idle_figures:
        print(f"idle: {json.dumps(idle_figures)}")


if __name__ == "__main__":
    main()
