"""Operations: metrics, logs, graceful shutdown, Compose, and two hubs with two workers.

Real processes throughout: hubs and workers are ``inferhub serve|worker`` on the module's Redis
database (JSON logs to files), next to an in-process hub for the metrics.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from helpers import ROOT, Samples, parse, scrape, value, wait_for
from httpx_sse import connect_sse
from stack import Stack, Stacks
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from contract import keys
from contract.logs import ACCESS, JOBS, bound, handler, job_line, note_job
from hub.middleware.request_log import access_line

# --- the stack: two workers, two hubs ----------------------------------------------------------


@pytest.fixture(scope="module")
def stack(stacks: Stacks) -> Iterator[Stack]:
    """The module's stack: two workers and two hubs, all logging JSON."""
    with stacks("operations", workers=2, hubs=2, log_format="json") as made:
        first = made.hubs()[0].url
        wait_for(
            lambda: value(scrape(first), "inferhub_workers") == 2,
            timeout=30,
            what="two live workers",
        )
        yield made


def hub_urls(stack: Stack) -> list[str]:
    return [hub.url for hub in stack.hubs()]


# --- metrics -------------------------------------------------------------------------------------


def test_metrics_appear_and_move_after_a_job(client: Any) -> None:
    def scrape() -> Samples:
        r = client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        return parse(r.text)

    before = scrape()
    assert value(before, "inferhub_redis_up") == 1
    assert value(before, "inferhub_workers", pool="default") >= 1
    assert "inferhub_queue_depth" in before and "inferhub_queue_oldest_age_seconds" in before
    assert "inferhub_sse_connections" in before and "inferhub_websocket_connections" in before

    r = client.post(
        "/v1/jobs",
        json={"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]] * 300},  # 2 chunks: progress
        headers={"Prefer": "wait=30"},
    )
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    after = scrape()

    def moved(name: str, by: float = 1, **labels: str) -> bool:
        return value(after, name, **labels) - value(before, name, **labels) >= by

    assert moved("inferhub_jobs_submitted_total", model="iris")
    assert moved("inferhub_jobs_succeeded_total", model="iris")
    for name in ("queue_wait", "run", "end_to_end"):
        assert moved(f"inferhub_job_{name}_seconds_count", model="iris"), name
    for kind in ("queued", "started", "progress", "succeeded"):
        assert moved("inferhub_events_published_total", type=kind), kind
    assert moved("inferhub_events_delivered_total", by=4)
    assert moved("inferhub_http_requests_total", method="POST", route="/v1/jobs", status="200")

    # the worker's own figures arrive with its next heartbeat
    def worker_moved() -> Samples | None:
        now = scrape()
        iris_ok = {"model": "iris", "status": "succeeded"}
        done = value(now, "inferhub_worker_jobs_total", **iris_ok)
        return now if done > value(before, "inferhub_worker_jobs_total", **iris_ok) else None

    now = wait_for(worker_moved, timeout=10, what="the worker's figures to move")
    for name in ("inferhub_inference_seconds", "inferhub_batch_size_rows"):
        assert value(now, f"{name}_count", model="iris") > value(
            before, f"{name}_count", model="iris"
        )
        assert value(now, f"{name}_bucket", model="iris", le="+Inf") == value(
            now, f"{name}_count", model="iris"
        )


def test_two_hubs_two_workers_serve_one_job_stream_with_nothing_lost(stack: Stack) -> None:
    """Jobs submitted through both hubs, each followed (SSE) through the other one."""
    redis, hubs = stack.redis, hub_urls(stack)
    jobs: list[tuple[str, int]] = []  # (job id, index of the hub that accepted it)
    with httpx.Client(timeout=30) as http:
        for i in range(12):
            rows = 600 if i % 3 == 0 else 2  # 600 rows: three chunks, three progress events
            body = {"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]] * rows}
            r = http.post(f"{hubs[i % 2]}/v1/jobs", json=body)
            assert r.status_code == 202, r.text
            jobs.append((r.json()["id"], i % 2))

    followed: dict[str, list[dict[str, Any]]] = {}

    def follow(job_id: str, hub: int) -> None:
        url = f"{hubs[1 - hub]}/v1/jobs/{job_id}/events"
        with httpx.Client(timeout=30) as http, connect_sse(http, "GET", url) as source:
            followed[job_id] = [orjson.loads(m.data) for m in source.iter_sse() if m.data]

    threads = [threading.Thread(target=follow, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    workers = set()
    for job_id, _ in jobs:
        events = followed[job_id]
        types = [e["type"] for e in events]
        assert types[:2] == ["queued", "started"] and types[-1] == "succeeded", types
        assert set(types[2:-1]) <= {"progress"}
        stored = [eid.decode() for eid, _ in redis.xrange(keys.job_events(job_id))]
        assert [e["id"] for e in events] == stored  # every event, in order, none twice
        workers.add(events[1]["data"]["worker"])
    assert workers  # the job stream was served by the stack's workers

    # each job is counted once, by the hub that accepted it: the sums over hubs are exact
    def totals() -> tuple[float, float]:
        scrapes = [scrape(url) for url in hubs]
        return (
            sum(value(s, "inferhub_jobs_submitted_total", model="iris") for s in scrapes),
            sum(value(s, "inferhub_jobs_succeeded_total", model="iris") for s in scrapes),
        )

    wait_for(lambda: totals() == (12, 12), timeout=10, what=f"12 jobs counted once: {totals()}")


# --- logs ----------------------------------------------------------------------------------------


def test_log_lines_carry_request_and_job_ids_from_hub_to_worker(stack: Stack) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    cases = {
        "req-operations-1": {"X-Request-ID": "req-operations-1"},
        trace: {"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    }
    submitted = {}
    for request_id, headers in cases.items():
        r = httpx.post(
            f"{hub_urls(stack)[0]}/v1/jobs",
            json={"model": "digits", "data": [[0.0] * 64]},
            headers={**headers, "Prefer": "wait=30"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.headers["X-Request-ID"] == request_id
        submitted[request_id] = r.json()["id"]

    def lines_of(names: list[str], request_id: str) -> list[dict[str, Any]]:
        return [
            line
            for n in names
            for line in stack.named(n).log_lines()
            if line.get("request_id") == request_id
        ]

    for request_id, job_id in submitted.items():
        # the access line is written once the response has been sent: the client can be first
        def access_lines(rid: str = request_id) -> list[dict[str, Any]]:
            return [x for x in lines_of(["hub0"], rid) if x["logger"] == "inferhub.access"]

        access = wait_for(access_lines, timeout=10, what="the hub's access line")
        hub = lines_of(["hub0"], request_id)
        assert [(x["method"], x["path"], x["status"]) for x in access] == [
            ("POST", "/v1/jobs", 200)
        ]
        assert access[0]["job_id"] == job_id
        assert {(x["message"], x["job_id"]) for x in hub if x["logger"] == "inferhub.jobs"} == {
            ("job queued", job_id)
        }

        def worker_lines(rid: str = request_id) -> list[dict[str, Any]]:
            found = lines_of(["worker0", "worker1"], rid)
            return found if len(found) >= 2 else []

        worker = wait_for(worker_lines, timeout=10, what="the worker's job lines")
        assert [(x["message"], x["job_id"]) for x in worker] == [
            ("job started", job_id),
            ("job succeeded", job_id),
        ]
    for name in ("hub0", "hub1", "worker0", "worker1"):  # every line of every log is JSON
        lines = stack.named(name).log_lines()
        assert all({"ts", "level", "logger", "message"} <= set(x) for x in lines)


def test_text_log_lines_show_the_ids() -> None:
    out = io.StringIO()
    logger = logging.getLogger("inferhub.test-text")
    logger.propagate = False
    logger.addHandler(handler("text", out))
    logger.setLevel(logging.INFO)
    with bound(request_id="r-1"):
        logger.info("job queued", extra={"job_id": "j-1", "model": "iris"})
    logger.info("no ids")
    first, second = out.getvalue().splitlines()
    assert re.fullmatch(
        r"\S+ \S+ INFO inferhub.test-text: job queued request_id=r-1 job_id=j-1", first
    )
    assert second.endswith("inferhub.test-text: no ids")

    json_out = io.StringIO()
    logger.handlers = [handler("json", json_out)]
    with bound(request_id="r-2", job_id="j-2"):
        logger.warning("job failed", extra={"error": "boom"})
    line = orjson.loads(json_out.getvalue())
    assert line["request_id"] == "r-2" and line["job_id"] == "j-2" and line["error"] == "boom"
    assert line["level"] == "warning" and line["logger"] == "inferhub.test-text"


def _own(logger: logging.Logger) -> Iterator[None]:
    """``logger`` as a process's ``setup`` leaves it, on a handler of the test's own: its
    lines go there alone (not to the root's, which pytest's capture holds)."""
    saved = logger.handlers, logger.propagate, logger.level
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield
    logger.handlers, logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


@pytest.fixture
def jobs_logger() -> Iterator[None]:
    yield from _own(JOBS)


@pytest.fixture
def access_logger() -> Iterator[None]:
    yield from _own(ACCESS)


@contextlib.contextmanager
def records_made() -> Iterator[list[int]]:
    """Counts the LogRecords made inside: the list's one item, once the block is over."""
    made = logging.getLogRecordFactory()
    count = [0]

    def counted(*args: Any, **kwargs: Any) -> logging.LogRecord:
        count[0] += 1
        return made(*args, **kwargs)

    logging.setLogRecordFactory(counted)
    try:
        yield count
    finally:
        logging.setLogRecordFactory(made)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_job_line_is_the_line_logging_writes(jobs_logger: None, log_format: str) -> None:
    """``job_line`` writes to the sole handler without a record (a job's hot path): the same
    line as ``JOBS.info`` would, the time aside; a field given beats the context's, and a
    context field of its own (``_jobs``) is not shown."""
    out = io.StringIO()
    JOBS.handlers = [handler(log_format, out)]
    fields = {"event": "started", "model": "iris", "attempt": 2, "job_id": "j-given"}
    with records_made() as records:
        for context in ({}, {"request_id": "r-1", "job_id": "j-ctx", "_jobs": ["x"], "pool": "p"}):
            with bound(**context):
                job_line("job started", **fields)
                JOBS.info("job started", extra=fields)
    assert records == [2]  # JOBS.info's: job_line made none
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    if log_format == "text":
        # the time: 2026-12-07 21:05:08,922
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
        assert all(re.match(stamp, line) for line in lines)
        bare = [line[24:] for line in lines]
        assert bare[0] == bare[1] == "INFO inferhub.jobs: job started job_id=j-given"
        assert bare[2] == bare[3] == "INFO inferhub.jobs: job started request_id=r-1 job_id=j-given"
    else:
        parsed = [orjson.loads(line) for line in lines]
        for line in parsed:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line.pop("ts"))
        head = [("level", "info"), ("logger", "inferhub.jobs"), ("message", "job started")]
        assert [list(line.items()) for line in parsed[:2]] == [[*head, *fields.items()]] * 2
        assert list(parsed[2].items()) == list(parsed[3].items())
        assert parsed[2] == {
            "level": "info",
            "logger": "inferhub.jobs",
            "message": "job started",
            **fields,
            "request_id": "r-1",
            "pool": "p",
        }


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_request_line_is_written_as_a_job_line(access_logger: None, log_format: str) -> None:
    """A request's access line (one per ``/v1/jobs`` submission) takes ``job_line``'s way to
    the sole handler, with no record: the line ``logging`` wrote for it before."""
    out = io.StringIO()
    ACCESS.handlers = [handler(log_format, out)]
    scope = {"method": "POST", "path": "/v1/jobs", "client": ("127.0.0.1", 5555)}
    with records_made() as records, bound(request_id="r-1") as context:
        note_job("j-1")
        access_line(scope, 202, None, 0.01234, context)
    assert records == [0]
    (line,) = out.getvalue().splitlines()
    if log_format == "text":
        want = "INFO inferhub.access: POST /v1/jobs 202 12.3ms request_id=r-1 job_id=j-1"
        assert line[24:] == want
    else:
        parsed = orjson.loads(line)
        parsed.pop("ts")
        assert parsed == {
            "level": "info",
            "logger": "inferhub.access",
            "message": "POST /v1/jobs 202 12.3ms",
            "method": "POST",
            "path": "/v1/jobs",
            "status": 202,
            "duration_ms": 12.34,
            "client": "127.0.0.1:5555",
            "job_id": "j-1",
            "request_id": "r-1",
        }


def test_a_job_line_goes_through_logging_to_other_handlers(jobs_logger: None) -> None:
    """A handler of one's own beside the process's (a test's caplog, a log shipper): the line
    is a record, as ever, that both get; below INFO nothing is written."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    out = io.StringIO()
    JOBS.handlers = [handler("text", out), Keep()]
    with bound(request_id="r-1"):
        job_line("job queued", event="queued", job_id="j-1")
    assert [(r.getMessage(), r.__dict__["job_id"], r.__dict__["request_id"]) for r in records] == [
        ("job queued", "j-1", "r-1")
    ]
    assert out.getvalue().rstrip().endswith("job queued request_id=r-1 job_id=j-1")
    JOBS.setLevel(logging.WARNING)
    job_line("job queued", event="queued", job_id="j-2")
    assert len(records) == 1 and "j-2" not in out.getvalue()


# --- graceful shutdown ---------------------------------------------------------------------------


def test_sigterm_ends_sse_with_retry_and_websockets_with_1001_then_exits(
    transient: Stack, client: Any, orphan_model: str
) -> None:
    """A hub with an SSE stream, a WebSocket and a request waiting for a job that cannot run
    (its pool has no worker): SIGTERM ends each as docs/operations.md says, and the hub exits."""
    grace = 3
    graceful = transient.hub("graceful", shutdown_grace_s=grace)
    url, hub = graceful.url, graceful.process
    waiting: dict[str, Any] = {}
    sse: dict[str, Any] = {"lines": []}
    try:
        wait_for(lambda: httpx.get(f"{url}/v1/models/{orphan_model}").status_code == 200)

        def wait_request() -> None:
            waiting["response"] = httpx.post(
                f"{url}/v1/jobs",
                json={"model": orphan_model, "data": [[5.1, 3.5, 1.4, 0.2]]},
                headers={"Prefer": "wait=60"},
                timeout=60,
            )

        def read_sse() -> None:
            with (
                httpx.Client(timeout=30) as http,
                http.stream("GET", f"{url}/v1/events", params={"model": "iris"}) as response,
            ):
                sse["status"] = response.status_code
                sse["lines"].extend(response.iter_lines())
                sse["ended"] = True

        threads = [threading.Thread(target=f) for f in (wait_request, read_sse)]
        for t in threads:
            t.start()
        with ws_connect(url.replace("http", "ws") + "/v1/ws") as ws:
            ws.send(orjson.dumps({"type": "subscribe", "ref": 1, "model": "iris"}).decode())
            assert orjson.loads(ws.recv(timeout=10))["type"] == "accepted"

            def all_open() -> bool:
                m = scrape(url)
                return (
                    value(m, "inferhub_sse_connections") == 1
                    and value(m, "inferhub_websocket_connections") == 1
                    and value(m, "inferhub_jobs_tracked") == 1  # the waiting request's job
                )

            wait_for(all_open, timeout=10, what="the SSE stream, WebSocket and waiting request")
            hub.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=grace + 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert "shutting down" in closed.value.rcvd.reason
        hub.wait(timeout=grace + 5)  # the grace, plus a margin for the interpreter's exit
        for t in threads:
            t.join(10)
        # the SSE stream: told to retry (and why), then ended cleanly
        assert sse["status"] == 200 and sse.get("ended"), sse
        assert "retry: 1000\nevent: close\ndata: " in "\n".join(sse["lines"])
        # the waiting request: 503 when the grace was spent, saying where its job is
        cut = waiting["response"]
        assert cut.status_code == 503 and cut.headers["Retry-After"] == "1", cut.text
        assert cut.json()["error"]["code"] == "shutting_down"
        job_id = cut.headers["Location"].rsplit("/", 1)[1]
        with pytest.raises(httpx.ConnectError):  # nothing listens there any more
            httpx.get(f"{url}/healthz", timeout=2)
        lines = graceful.log_lines()
        assert any("closing 1 SSE stream(s) and 1 WebSocket(s)" in x["message"] for x in lines)
    finally:
        graceful.stop()
    # the job lives on in Redis: another hub finds it (and here cancels it)
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"


# --- Compose and image ---------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_spec() -> None:
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert tool, "install the test extra: check-jsonschema"
    done = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_stages_run_the_scripts_of_ci() -> None:
    """There is no Docker engine here: the image's steps are the scripts .ci/run runs, so that
    each CI run proves them. Test stage: .ci/run itself; runtime: .ci/install, no extra."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "bash .ci/system-packages" in ci and "bash .ci/install test" in ci
    stages: dict[str, list[str]] = {}
    stage = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            stage = line.split(" AS ")[1] if " AS " in line else "runtime"
            stages[stage] = []
        elif line.startswith(("RUN ", "COPY ", "USER ")):
            stages[stage].append(line)
    assert stages["test"] == ["COPY . .", "RUN bash .ci/run"]
    runs = [line for line in stages["runtime"] if line.startswith("RUN ")]
    assert runs == [
        "RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin inferhub",
        "RUN bash .ci/install",
    ]
    assert "COPY models models" in stages["runtime"] and "USER inferhub" in stages["runtime"]
