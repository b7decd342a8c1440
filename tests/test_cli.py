"""The command line, as a user runs it: ``inferhub submit`` against a running hub, and
``inferhub up`` bringing the whole stack up and, on Ctrl-C, down with no process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
from helpers import ROOT, wait_for

from cli.processes import SOCKET_PATH_MAX, embedded_redis, free_port, ready, stop
from cli.stack import stack_webhook_secret
from contract.connection import connect_sync
from hub.webhooks import signing


def inferhub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=ROOT,
    )


def test_submit_wait_prints_the_labelled_result(hub_url: str) -> None:
    done = inferhub(
        "submit",
        "iris",
        "--data",
        "[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]",
        "--wait",
        "5",
        "--url",
        hub_url,
    )
    assert done.returncode == 0, done.stderr
    assert "succeeded (2 rows)" in done.stdout
    assert "setosa (0)" in done.stdout and "virginica (2)" in done.stdout
    one = inferhub("submit", "iris", "--data", "[[5.1,3.5,1.4,0.2]]", "--url", hub_url)
    assert one.returncode == 0 and " (1 row)" in one.stdout, one.stdout


def test_json_output_is_the_api_answer(hub_url: str) -> None:
    job = inferhub(
        "submit", "iris", "--data", "[[5.1,3.5,1.4,0.2]]", "--wait", "5", "--json", "--url", hub_url
    )
    assert job.returncode == 0, job.stderr
    answer = orjson.loads(job.stdout)  # the whole output is one JSON document
    assert answer["status"] == "succeeded" and answer["outputs"][0]["data"] == [0]
    jobs = orjson.loads(inferhub("jobs", "--model", "iris", "--json", "--url", hub_url).stdout)
    assert answer["id"] in [j["id"] for j in jobs["jobs"]]
    models = orjson.loads(inferhub("models", "--json", "--url", hub_url).stdout)
    assert {"digits", "iris", "breast_cancer"} <= {m["name"] for m in models}
    status = inferhub("status", "--json", "--interval", "0.2", "--url", hub_url)
    view = orjson.loads(status.stdout)
    assert view["redis_up"] is True and view["interval_s"] > 0
    default = next(p for p in view["pools"] if p["pool"] == "default")
    assert default["workers"] >= 1 and default["jobs_per_s"] is not None


def test_tables_fit_80_columns_with_whole_ids(hub_url: str) -> None:
    narrow = {"COLUMNS": "80"}
    job = orjson.loads(
        inferhub("submit", "digits", "--data", str([[0.0] * 64]), "--json", "--url", hub_url).stdout
    )
    for command in (["jobs"], ["models"], ["models", "--wide"], ["status", "--interval", "0.2"]):
        shown = inferhub(*command, "--url", hub_url, env=narrow)
        assert shown.returncode == 0, shown.stderr
        too_wide = [line for line in shown.stdout.splitlines() if len(line.rstrip()) > 80]
        assert too_wide == [], (command, too_wide)
    listed = inferhub("jobs", "--model", "digits", "--url", hub_url, env=narrow).stdout
    assert any(line.startswith(job["id"] + " ") for line in listed.splitlines()), listed
    wide = inferhub("models", "--wide", "--url", hub_url, env=narrow).stdout
    assert "Handwritten digit classifier" in wide


def test_help_has_no_type_placeholders_and_every_option_a_help() -> None:
    for command in ([], ["submit"], ["jobs"], ["models"], ["status"], ["watch"], ["up"]):
        shown = inferhub(*command, "--help", env={"COLUMNS": "80"})
        assert shown.returncode == 0, shown.stderr
        assert "<bool>" not in shown.stdout and "{" not in shown.stdout, shown.stdout
    jobs = inferhub("jobs", "--help").stdout
    assert "only this model's jobs" in jobs and "only jobs in this state" in jobs
    assert "Usage: inferhub submit [OPTIONS] MODEL" in inferhub("submit", "--help").stdout


def test_submit_follow_shows_progress_to_the_end(hub_url: str, tmp_path: Path) -> None:
    rows = tmp_path / "rows.json"
    rows.write_text(str([[0.5] * 16] * 20))  # slow: 2 rows a chunk, so 10 progress events
    out = tmp_path / "outputs.npz"
    done = inferhub(
        "submit", "slow", "--input", str(rows), "--follow", "--out", str(out), "--url", hub_url
    )
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout and "20/20" in done.stdout
    assert f"outputs written to {out}" in done.stdout.replace("\n", "")
    with np.load(out) as archive:
        assert archive["y"].shape == (20, 1024)


def test_models_and_jobs_list_what_is_served_and_run(hub_url: str) -> None:
    models = inferhub("models", "--url", hub_url)
    assert models.returncode == 0 and "digits" in models.stdout and "FP32[-1, 64]" in models.stdout
    jobs = inferhub("jobs", "--url", hub_url, "--model", "iris")
    assert jobs.returncode == 0 and "iris" in jobs.stdout and "succeeded" in jobs.stdout


def test_errors_are_one_line_and_a_nonzero_exit(hub_url: str) -> None:
    unknown = inferhub("submit", "nope", "--data", "[[1]]", "--url", hub_url)
    assert unknown.returncode == 1 and "404 model_not_found" in unknown.stdout
    wrong = inferhub("submit", "iris", "--data", "[[1, 2]]", "--url", hub_url)
    assert wrong.returncode == 1 and "422 invalid_input" in wrong.stdout
    assert "Traceback" not in unknown.stdout + unknown.stderr + wrong.stdout + wrong.stderr
    away = inferhub("models", "--url", f"http://127.0.0.1:{free_port()}")
    assert away.returncode == 1 and "cannot reach the hub" in away.stdout


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def test_up_serves_then_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERHUB_")}
    env["INFERHUB_GRPC_PORT"] = str(grpc_port := free_port())
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--port", str(port), "--models", str(ROOT / "models")],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: "inferhub is up" in (tmp_path / "up.log").read_text(),
            timeout=90,
            what="inferhub up to say it is up",
        )
        assert ready(url)
        children = _children(up.pid)
        assert len(children) >= 3  # Redis, a worker, the hub
        r = httpx.post(
            f"{url}/v1/jobs",
            json={"model": "digits", "data": [[0.0] * 64]},
            headers={"Prefer": "wait=10"},
            timeout=20,
        )
        assert r.status_code == 200 and r.json()["status"] == "succeeded"
        # the embedded Redis is reached on its Unix socket: the online lane's batch and its
        # answer crossed it too
        said = (tmp_path / "up.log").read_text()
        assert "embedded Redis on unix:///" in said and "redis.sock?db=0 " in said, said
        r = httpx.post(
            f"{url}/v2/models/digits/infer",
            json={
                "inputs": [
                    {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
                ]
            },
            timeout=20,
        )
        assert r.status_code == 200 and r.json()["outputs"], r.text
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as triton:
            assert triton.is_server_live()  # the hub serves gRPC too
        said = (tmp_path / "up.log").read_text()
        # with no keys file nor INFERHUB_WEBHOOK_SECRET, the hub signs with a secret up made
        secret_file = tmp_path.resolve() / "inferhub-webhook-secret"
        assert f"webhooks signed with the secret in {secret_file}\n" in said
        assert secret_file.stat().st_mode & 0o777 == 0o600
        hook = {"url": f"http://127.0.0.1:{free_port()}/hook"}
        r = httpx.post(
            f"{url}/v1/jobs", json={"model": "iris", "data": [[0.0] * 4], "webhook": hook}
        )
        assert r.status_code == 202, r.text  # taken: the hub has a secret to sign it with
        folder = Path(said.split("(files in ", 1)[1].split(",", 1)[0])
        assert (folder / "redis.log").exists()
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
        assert not folder.exists()  # the embedded Redis's files go with it
        left = [
            p
            for p in children
            if Path(f"/proc/{p}").exists()
            and "zombie" not in (Path(f"/proc/{p}/status").read_text().lower())
        ]
        assert left == [], f"processes left behind: {left}"
    finally:
        if up.poll() is None:
            up.kill()
        log.close()


def test_up_keeps_the_webhook_secret_it_made_for_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    secret, path = stack_webhook_secret()
    assert path == tmp_path.resolve() / "inferhub-webhook-secret"
    assert path.read_text() == secret + "\n"
    assert len(signing.secret_key(secret)) == 32
    assert stack_webhook_secret() == (secret, path)


def test_up_refuses_a_webhook_secret_file_that_holds_none(tmp_path: Path) -> None:
    path = tmp_path.resolve() / "inferhub-webhook-secret"
    path.write_text("hunter2\n")
    done = subprocess.run(
        [sys.executable, "-m", "cli", "up", "--port", str(free_port()), "--grpc-port", "0"],
        env={k: v for k, v in os.environ.items() if not k.startswith("INFERHUB_")}
        | {"INFERHUB_MODELS": str(ROOT / "models")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""  # nothing started
    assert done.stderr == (
        f"inferhub: the stack's webhook secret, {path}: a webhook secret starts with 'whsec_' "
        "(inferhub keys webhook-secret); remove the file for a new one, or set "
        "INFERHUB_WEBHOOK_SECRET\n"
    )
    assert path.read_text() == "hunter2\n"  # left for the user to look at


def test_status_shows_a_first_frame_before_its_rates(hub_url: str) -> None:
    """On a terminal, the figures come at once and the rates after --interval (here longer
    than the test waits): read through a pseudo-terminal until the first frame is drawn."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: inferhub status on the terminal
        env = {**os.environ, "COLUMNS": "100"}
        os.execve(
            sys.executable,
            [sys.executable, "-m", "cli", "status", "--interval", "600", "--url", hub_url],
            env,
        )
    screen = b""
    try:
        while b"until the next scrape" not in screen or b"default" not in screen:
            ready, _, _ = select.select([fd], [], [], 60)
            assert ready, f"no first frame within a minute: {screen!r}"
            screen += os.read(fd, 65536)
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(fd)
    assert b"pools" in screen and b"workers" in screen


def test_a_wrong_setting_ends_the_command_with_one_line_that_says_what_to_fix() -> None:
    done = inferhub("serve", "--redis-url", "redis+sentinel://:s3cret@h1:26379")
    assert done.returncode == 2
    assert done.stderr.startswith("inferhub: INFERHUB_REDIS_URL: ")
    assert "redis+sentinel://[[user]:password@]host:port" in done.stderr
    assert "s3cret" not in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1


def test_an_embedded_redis_too_deep_for_a_socket_is_reached_over_tcp(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * (SOCKET_PATH_MAX - len(str(tmp_path))))
    deep.mkdir()
    server, url = embedded_redis(deep)
    try:
        assert url.startswith("redis://127.0.0.1:") and not (deep / "redis.sock").exists()
        with connect_sync(url) as client:
            assert client.ping()
    finally:
        stop([server])
    server, url = embedded_redis(tmp_path)
    try:
        assert url == f"unix://{tmp_path / 'redis.sock'}?db=0"
        with connect_sync(url) as client:
            assert client.ping()
    finally:
        stop([server])
