"""``/healthz`` latency while the hub is sent large hostile bodies (issue 13, item 6).

It starts its own stack (Redis, one hub with API keys, one worker) on 127.0.0.1, measures
``/healthz`` idle, then sends a bounded number of ~31 MB bodies while a separate process polls
``/healthz`` every 10 ms on a kept-alive connection (a process of its own, so that the
attackers' CPU here does not delay the polls). It prints one JSON line: the answers to the
bodies by kind and the ``/healthz`` latency percentiles, idle and under load.

    python bench/healthz_under_load.py --bodies 8 --concurrency 4

Kinds of body (``--kinds``, alternated):
  unauth      31 MB of JSON rows to POST /v1/jobs with no key (keys are configured): want 401
  bytes       28 MB of zero-length BYTES elements (binary) to the FP32 model iris: want 400
  json-bytes  28 MB of "" BYTES elements (JSON) to iris: want 400

Bounded in count and time, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import Stack, percentiles, raw_request  # noqa: E402
from hub.auth import new_key  # noqa: E402

BODY_BYTES = 31 * 10**6
BYTES_BYTES = 28 * 10**6
CHUNK = 256 * 1024


def bodies(key: str) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """Each kind's (path, body, headers)."""
    row = orjson.dumps([0.5 + i / 7 for i in range(64)])
    rows = b",".join([row] * (BODY_BYTES // (len(row) + 1)))
    unauth = b'{"model": "digits", "data": [' + rows + b"]}"
    count = BYTES_BYTES // 4
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "BYTES",
                    "shape": [count],
                    "parameters": {"binary_data_size": 4 * count},
                }
            ]
        }
    )
    auth = {"Authorization": f"Bearer {key}"}
    strings = b",".join([b'""'] * (BYTES_BYTES // 3))
    json_bytes = (
        b'{"inputs": [{"name": "input", "datatype": "BYTES", "shape": ['
        + str(BYTES_BYTES // 3).encode()
        + b'], "data": ['
        + strings
        + b"]}]}"
    )
    return {
        "unauth": ("/v1/jobs", unauth, {"Content-Type": "application/json"}),
        "bytes": (
            "/v2/models/iris/infer",
            header + bytes(4 * count),
            {**auth, "Inference-Header-Content-Length": str(len(header))},
        ),
        "json-bytes": (
            "/v2/models/iris/infer",
            json_bytes,
            {**auth, "Content-Type": "application/json"},
        ),
    }


# --- the poller, a process of its own -------------------------------------------------------


def poll_healthz(port: int, every_s: float, out: Connection) -> None:
    """GET /healthz every ``every_s`` until told to stop; send back the latencies (s)."""
    latencies: list[float] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not out.poll():
        started = time.perf_counter()
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"/healthz answered {response.status}")
        time.sleep(max(0.0, every_s - (time.perf_counter() - started)))
    conn.close()
    out.send(latencies)


def measure(port: int, seconds: float = 0.0, during: Any = None) -> tuple[list[float], Any]:
    """/healthz latencies for ``seconds``, or while the coroutine ``during`` runs (and what
    it returned)."""
    spawn = multiprocessing.get_context("spawn")
    here, there = spawn.Pipe()
    poller = spawn.Process(target=poll_healthz, args=(port, 0.01, there), daemon=True)
    poller.start()
    time.sleep(0.5)  # the poller's interpreter starts
    result = asyncio.run(during) if during is not None else time.sleep(seconds)
    here.send("stop")
    latencies: list[float] = here.recv()
    poller.join(10)
    return latencies, result


# --- the attackers ---------------------------------------------------------------------------


async def send(port: int, path: str, body: bytes, headers: dict[str, str]) -> str:
    """One request on a fresh connection; its status, or how the connection ended. The hub
    may answer before it reads the body (and then close): read while writing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    request = raw_request(f"http://127.0.0.1:{port}", path, body, headers)

    async def write() -> None:
        for at in range(0, len(request), CHUNK):
            writer.write(request[at : at + CHUNK])
            await writer.drain()

    writing = asyncio.create_task(write())
    try:
        line = await asyncio.wait_for(reader.readline(), 120)
        return line.split()[1].decode() if line else "closed"
    except (ConnectionError, TimeoutError) as exc:
        return type(exc).__name__
    finally:
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
        writer.close()


async def attack(
    port: int, kinds: list[str], made: dict[str, Any], count: int, concurrency: int
) -> dict[str, Any]:
    answers: dict[str, dict[str, int]] = {kind: {} for kind in kinds}
    taken = 0
    started = time.perf_counter()

    async def attacker() -> None:
        nonlocal taken
        while taken < count:
            kind = kinds[taken % len(kinds)]
            taken += 1
            status = await send(port, *made[kind])
            answers[kind][status] = answers[kind].get(status, 0) + 1

    await asyncio.gather(*(attacker() for _ in range(concurrency)))
    return {"answers": answers, "seconds": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bodies", type=int, default=8, help="hostile bodies in all (max 64)")
    parser.add_argument("--concurrency", "-c", type=int, default=4)
    parser.add_argument("--kinds", default="unauth,bytes", help="of: unauth, bytes, json-bytes")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle polling first")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    with tempfile.TemporaryDirectory(prefix="inferhub-bench-keys-") as tmp:
        keyfile = Path(tmp) / "keys.toml"
        key = new_key(keyfile, "bench", ["submit", "read"])
        made = bodies(key)
        stack = Stack(ROOT / "models", env={"INFERHUB_API_KEYS_FILE": str(keyfile)})
        try:
            port = stack.ports[0]
            idle, _ = measure(port, args.idle)
            loaded, outcome = measure(
                port, during=attack(port, kinds, made, min(args.bodies, 64), args.concurrency)
            )
            result = {
                "bodies": {k: len(made[k][1]) for k in kinds},
                **outcome,
                "healthz_idle_ms": {"n": len(idle), **percentiles(idle)},
                "healthz_loaded_ms": {"n": len(loaded), **percentiles(loaded)},
            }
        finally:
            stack.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
