"""Results as data: a bulk job in binary both ways against onnxruntime, what Redis holds for a
large job against the packed size of its outputs, and the listing after large jobs.

    python bench/results.py                   # 8,192 x 1,024 heavy; 200,000-row digits; listing
    python bench/results.py --only bulk       # the bulk job alone

The bulk job's figures say where its time goes: the client's clock at the submit's answer and
at the last event, the record's start and end, the fetch; and the CPU seconds of the hub, the
worker and Redis beside those of onnxruntime alone for the same rows. It starts its own Redis,
hub and worker on 127.0.0.1; bounded in count and time. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import (  # noqa: E402
    Stack,
    cpu_seconds,
    make_repo,
    onnxruntime_rows_per_s,
    sample_rows,
    session_rows_per_s,
)
from contract import keys  # noqa: E402
from workers.repository import ModelVersion, load_repository  # noqa: E402

NPY = {"Content-Type": "application/x-npy"}


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def submit_and_wait(http: httpx.Client, model: str, rows: np.ndarray) -> dict[str, Any]:
    """Submit ``rows`` as an .npy body and follow the job to its end; the job, with the
    client's clock at each step in ``_clock`` (submitted, answered, ended)."""
    began = time.time()
    r = http.post("/v1/jobs", params={"model": model}, content=npy(rows), headers=NPY)
    assert r.status_code == 202, r.text
    answered = time.time()
    job_id = r.json()["id"]
    with http.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        for _ in stream.iter_bytes():
            pass  # the stream ends after the terminal event
    ended = time.time()
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    return {**job, "_clock": (began, answered, ended)}


def ceilings(version: ModelVersion, rows: np.ndarray, threads: int) -> dict[str, float]:
    return {
        "default": onnxruntime_rows_per_s(version.path, rows, threads, 1.5),
        "worker": session_rows_per_s(version.session, rows, 1.5),
    }


def bulk(http: httpx.Client, repo: Path, rows_n: int, pids: dict[str, list[int]]) -> dict[str, Any]:
    model = load_repository(repo).models["heavy"]
    version = model.versions[model.latest]
    rows = sample_rows("heavy", version.inputs[0], rows_n)
    batch = model.config.max_batch_size
    threads = model.config.onnxruntime.intra_op_num_threads
    # the ceiling measured on each side of the job (the machine's speed drifts), with
    # onnxruntime's default options and with the worker's own session (no spinning threads),
    # the higher one taken; and the CPU time each process spends on the job, on a loaded
    # machine a steadier figure than wall time
    before_ceilings = ceilings(version, rows[:batch], threads)
    cpu = time.process_time()
    ceiling_own = session_rows_per_s(version.session, rows[:batch], 2.0)
    model_cpu_per_row = (time.process_time() - cpu) / (2.0 * ceiling_own)
    before = {name: cpu_seconds(ids[0]) for name, ids in pids.items()}
    started = time.perf_counter()
    job = submit_and_wait(http, "heavy", rows)
    fetching = time.time()
    fetched = http.get(job["urls"]["outputs"], params={"format": "npy", "output": "y"})
    y = np.load(io.BytesIO(fetched.content))
    wall = time.perf_counter() - started
    fetched_at = time.time()
    spent = {name: round(cpu_seconds(ids[0]) - before[name], 2) for name, ids in pids.items()}
    after_ceilings = ceilings(version, rows[:batch], threads)
    measured = {k: (before_ceilings[k] + after_ceilings[k]) / 2 for k in before_ceilings}
    ceiling = max(measured.values())
    assert y.shape == (rows_n, 1024)
    running = job["finished_at"] - job["started_at"]
    began, answered, ended = job["_clock"]
    return {
        "rows": rows_n,
        "wall_s": round(wall, 2),
        "rows_per_s_end_to_end": round(rows_n / wall, 1),
        "rows_per_s_running": round(rows_n / running, 1),
        f"onnxruntime_rows_per_s_batch_{batch}": round(ceiling, 1),
        "onnxruntime_options": {k: round(v, 1) for k, v in measured.items()},
        "ratio_end_to_end": round(rows_n / wall / ceiling, 3),
        "ratio_running": round(rows_n / running / ceiling, 3),
        # where the wall time goes, in seconds: the client's clock and the job's record
        "phases_s": {
            "submit": round(answered - began, 3),
            "queued": round(job["started_at"] - answered, 3),  # after the 202: inputs stored
            "running": round(running, 3),
            "to_end_event": round(ended - job["finished_at"], 3),
            "fetch": round(fetched_at - fetching, 3),
            "model_alone": round(rows_n / ceiling, 3),
        },
        "cpu_s": {**spent, "model_alone": round(rows_n * model_cpu_per_row, 2)},
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of the median end-to-end ratio, with every run's ratios beside it: on a shared
    machine one run says little."""
    ranked = sorted(runs, key=lambda run: float(run["ratio_end_to_end"]))
    median = ranked[len(ranked) // 2]
    if len(runs) == 1:
        return median
    every = [[run["ratio_end_to_end"], run["ratio_running"]] for run in runs]
    return {**median, "runs_ratio_end_to_end_and_running": every}


def stored(http: httpx.Client, client: redis.Redis, repo: Path, rows_n: int) -> dict[str, Any]:
    model = load_repository(repo).models["digits"]
    rows = sample_rows("digits", model.versions[model.latest].inputs[0], rows_n)
    job = submit_and_wait(http, "digits", rows)
    packed = sum(o["bytes"] for o in job["outputs_summary"])
    usage = {
        "outputs": client.memory_usage(keys.job_outputs(job["id"])) or 0,
        "record": client.memory_usage(keys.job(job["id"])) or 0,
        "events": client.memory_usage(keys.job_events(job["id"])) or 0,
    }
    return {
        "rows": rows_n,
        "packed_output_bytes": packed,
        "redis_bytes": usage,
        "outputs_over_packed": round(usage["outputs"] / packed, 3),
        "job_over_packed": round(sum(usage.values()) / packed, 3),
    }


def listing(http: httpx.Client, repo: Path, jobs: int, rows_n: int) -> dict[str, Any]:
    model = load_repository(repo).models["digits"]
    rows = sample_rows("digits", model.versions[model.latest].inputs[0], rows_n)
    for _ in range(jobs):
        submit_and_wait(http, "digits", rows)
    http.get("/v1/jobs", params={"limit": 50})  # warm
    times, size = [], 0
    for _ in range(20):
        began = time.perf_counter()
        r = http.get("/v1/jobs", params={"limit": 50})
        times.append(time.perf_counter() - began)
        size = len(r.content)
    return {
        "jobs_of_rows": [jobs, rows_n],
        "bytes": size,
        "ms_p50": round(sorted(times)[len(times) // 2] * 1000, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bulk-rows", type=int, default=8192)
    parser.add_argument("--stored-rows", type=int, default=200_000)
    parser.add_argument("--listed-rows", type=int, default=100_000)
    parser.add_argument(
        "--only", choices=["bulk", "stored", "listing"], help="one of the three measurements"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="bulk jobs one after the other: the median's run"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="inferhub-results-") as tmp:
        repo = make_repo(Path(tmp))
        stack = Stack(repo, env={"INFERHUB_MAX_BODY_BYTES": str(512 * 2**20)})
        try:
            client = redis.Redis.from_url(stack.redis_url)
            with httpx.Client(base_url=stack.urls[0], timeout=600) as http:
                parts = {
                    "bulk": lambda: median_run(
                        [bulk(http, repo, args.bulk_rows, stack.pids()) for _ in range(args.repeat)]
                    ),
                    "stored": lambda: stored(http, client, repo, args.stored_rows),
                    "listing": lambda: listing(http, repo, 3, args.listed_rows),
                }
                result = {
                    name: measure() for name, measure in parts.items() if args.only in (None, name)
                }
            client.close()
        finally:
            stack.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
