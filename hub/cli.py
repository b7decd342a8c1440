"""The ``inferhub`` command: run the stack, and talk to a running hub."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from contract.settings import Settings
from hub.client import Client, HubError

app = typer.Typer(help="inferhub: a real-time inference hub for ONNX models.", no_args_is_help=True)
console = Console()

RedisUrl = Annotated[str | None, typer.Option(help="INFERHUB_REDIS_URL")]
Models = Annotated[Path | None, typer.Option(help="the model repository (INFERHUB_MODELS)")]
Host = Annotated[str | None, typer.Option(help="INFERHUB_HOST")]
Port = Annotated[int | None, typer.Option(help="INFERHUB_PORT")]
Url = Annotated[str, typer.Option(envvar="INFERHUB_URL", help="the hub to talk to")]


def _settings(**flags: Any) -> Settings:
    return Settings(**{k: v for k, v in flags.items() if v is not None})


class LogFormats(StrEnum):
    text = "text"
    json = "json"


LogFormat = Annotated[LogFormats | None, typer.Option(help="INFERHUB_LOG_FORMAT")]


def _logging(log_format: str = "text") -> None:
    from contract.logs import setup

    setup(log_format, logging.INFO)


KeysFile = Annotated[Path | None, typer.Option(help="INFERHUB_API_KEYS_FILE")]
Insecure = Annotated[
    bool | None, typer.Option("--insecure", help="serve beyond loopback with no API keys")
]


def _fail(message: str, code: int = 2) -> NoReturn:
    """End the command with ``message`` on one line of stderr: no markup (a keys file's
    ``[keys.…]`` is not a style), no wrapping, no traceback."""
    print(f"inferhub: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def _check_port(settings: Settings) -> None:
    from hub.processes import bind_problem

    problem = bind_problem(settings.host, settings.port)
    if problem:
        _fail(problem)


def _check_exposure(settings: Settings) -> None:
    from hub.auth import KeyRing, KeysFileError, exposure_problem

    try:
        keyring = KeyRing.load(settings.api_keys_file)
    except KeysFileError as exc:
        _fail(str(exc))
    problem = exposure_problem(settings.host, keyring, settings.insecure)
    if problem:
        _fail(problem)


@app.command()
def serve(
    redis_url: RedisUrl = None,
    host: Host = None,
    port: Port = None,
    api_keys_file: KeysFile = None,
    insecure: Insecure = None,
    log_format: LogFormat = None,
    shutdown_grace_s: Annotated[
        float | None, typer.Option(help="INFERHUB_SHUTDOWN_GRACE_S: exit within this on SIGTERM")
    ] = None,
) -> None:
    """Run the hub (HTTP, SSE and WebSocket API)."""
    import uvicorn

    from hub.app import create_app
    from hub.server import Server

    settings = _settings(
        redis_url=redis_url,
        host=host,
        port=port,
        api_keys_file=api_keys_file,
        insecure=insecure,
        log_format=log_format,
        shutdown_grace_s=shutdown_grace_s,
    )
    _logging(settings.log_format)
    _check_exposure(settings)
    _check_port(settings)
    hub = create_app(settings)
    config = uvicorn.Config(
        hub,
        host=settings.host,
        port=settings.port,
        log_config=None,  # our handlers (contract/logs.py), and our access line instead of uvicorn's
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
        # events are small JSON: compression would cost each socket ~40 KiB of zlib state
        ws_per_message_deflate=False,
    )
    Server(config, hub.state.streams, settings.shutdown_grace_s).run()


@app.command()
def worker(
    redis_url: RedisUrl = None,
    models: Models = None,
    pool: Annotated[str | None, typer.Option(help="INFERHUB_POOL")] = None,
    log_format: LogFormat = None,
) -> None:
    """Run a worker for one pool of the model repository."""
    from workers.main import run_worker

    settings = _settings(redis_url=redis_url, models=models, pool=pool, log_format=log_format)
    _logging(settings.log_format)
    run_worker(settings)


@app.command()
def up(
    redis_url: RedisUrl = None,
    models: Models = None,
    host: Host = None,
    port: Port = None,
    api_keys_file: KeysFile = None,
    insecure: Insecure = None,
    log_format: LogFormat = None,
) -> None:
    """The whole stack on this machine: Redis (embedded unless INFERHUB_REDIS_URL), a worker, the hub."""
    from hub.processes import free_port, start_cli, start_redis, stop, wait_ready

    settings = _settings(
        redis_url=redis_url,
        models=models,
        host=host,
        port=port,
        api_keys_file=api_keys_file,
        insecure=insecure,
        log_format=log_format,
    )
    _check_exposure(settings)
    _check_port(settings)
    if not settings.models.is_dir() or not any(settings.models.glob("*/config.toml")):
        console.print(
            f"[red]No models in {settings.models.resolve()}[/]: point --models (INFERHUB_MODELS) "
            "at a model repository (<name>/config.toml, <name>/1/model.onnx), or run "
            "`python scripts/build_example_models.py`."
        )
        raise typer.Exit(2)

    redis: list[Any] = []  # the embedded Redis, stopped last
    procs: list[Any] = []  # the worker and the hub
    workdir = Path(tempfile.mkdtemp(prefix="inferhub-"))
    for signum in (signal.SIGINT, signal.SIGTERM):  # either stops the whole stack
        signal.signal(signum, _interrupt)
    try:
        if "INFERHUB_REDIS_URL" not in os.environ and redis_url is None:
            redis_port = free_port()
            redis.append(start_redis(redis_port, workdir))
            settings.redis_url = f"redis://127.0.0.1:{redis_port}/0"
            console.print(f"embedded Redis on {settings.redis_url} (data in {workdir})")
        env = {
            "INFERHUB_REDIS_URL": settings.redis_url,
            "INFERHUB_MODELS": str(settings.models.resolve()),
            "INFERHUB_HOST": settings.host,
            "INFERHUB_PORT": str(settings.port),
            "INFERHUB_INSECURE": str(settings.insecure).lower(),
            "INFERHUB_LOG_FORMAT": settings.log_format,
        }
        if settings.api_keys_file is not None:
            env["INFERHUB_API_KEYS_FILE"] = str(settings.api_keys_file.resolve())
        procs.append(start_cli("worker", env=env))
        procs.append(start_cli("serve", env=env))
        base = f"http://{settings.host}:{settings.port}"
        if not wait_ready(base, 60, watch=[*redis, *procs]):
            if any(p.poll() is not None for p in [*redis, *procs]):
                console.print("[red]a process of the stack exited before the hub was ready[/]")
            else:
                console.print(f"[red]{base}/readyz did not answer ready within 60 s[/]")
            raise typer.Exit(1)
        console.print(
            f"[green]inferhub is up[/]: {base}/ (API docs {base}/docs). Ctrl-C stops everything."
        )
        while all(p.poll() is None for p in [*redis, *procs]):
            time.sleep(0.2)
        console.print("[red]a process of the stack exited; stopping the rest[/]")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        stop(procs)  # the hub and worker first, while Redis still answers them
        stop(redis)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """The benchmark (bench/load.py; its own options follow): it starts its own stack and
    prints one JSON line, with onnxruntime's in-process figure on the same model beside it.
    Example: inferhub bench --model digits --endpoint v2 --concurrency 64 --requests 5000"""
    script = Path(__file__).resolve().parent.parent / "bench" / "load.py"
    if not script.exists():
        console.print("[red]bench/ is not here: run it from a clone of the repository[/]")
        raise typer.Exit(2)
    os.execv(sys.executable, [sys.executable, str(script), *ctx.args])


keys_app = typer.Typer(help="API keys: each has a tenant and scopes (submit, read, admin).")
app.add_typer(keys_app, name="keys")


@keys_app.command("add")
def keys_add(
    tenant: Annotated[str, typer.Option(help="whose jobs these are")],
    scope: Annotated[list[str], typer.Option(help="submit, read, admin (repeatable)")] = [  # noqa: B006
        "submit",
        "read",
    ],
    file: Annotated[
        Path, typer.Option(envvar="INFERHUB_API_KEYS_FILE", help="the keys file")
    ] = Path("inferhub-keys.toml"),
) -> None:
    """Create a key, store its hash in the keys file, and print the key: the only time it is shown."""
    from hub.auth import new_key

    try:
        key = new_key(file, tenant, scope)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    console.print(f"key for tenant [bold]{tenant}[/] ({', '.join(sorted(set(scope)))}), in {file}:")
    print(key)
    console.print(
        f"serve with INFERHUB_API_KEYS_FILE={file.resolve()}; send Authorization: Bearer <key>"
    )


@app.command("models")
def list_models(url: Url = "http://127.0.0.1:8000") -> None:
    """The models the workers serve."""
    table = Table("model", "version", "ready", "inputs", "outputs")
    with _client(url) as hub:
        for m in hub.models():
            sig = m["versions"][m["latest"]]
            table.add_row(
                m["name"],
                m["latest"],
                "yes" if m["ready"] else "[red]no[/]",
                _signature(sig["inputs"]),
                _signature(sig["outputs"]),
                m["description"],
            )
    console.print(table)


@app.command("jobs")
def list_jobs(
    url: Url = "http://127.0.0.1:8000",
    model: str | None = None,
    status: str | None = None,
    limit: int = 20,
) -> None:
    """Recent jobs, newest first."""
    table = Table("id", "model", "status", "rows", "attempt", "created")
    with _client(url) as hub:
        for job in hub.jobs(model=model, status=status, limit=limit)["jobs"]:
            created = time.strftime("%H:%M:%S", time.localtime(job["created_at"]))
            table.add_row(
                job["id"],
                job["model"],
                job["status"],
                str(job["rows"]),
                str(job["attempt"]),
                created,
            )
    console.print(table)


@app.command()
def submit(
    model: str,
    data: Annotated[
        str | None, typer.Option(help="rows as JSON, e.g. '[[5.1, 3.5, 1.4, 0.2]]'")
    ] = None,
    input: Annotated[Path | None, typer.Option(help="a JSON file: rows, or a request body")] = None,
    wait: Annotated[bool, typer.Option(help="wait for the result")] = False,
    follow: Annotated[bool, typer.Option(help="show progress live until the end")] = False,
    url: Url = "http://127.0.0.1:8000",
) -> None:
    """Submit a job and print it; --wait or --follow prints the result."""
    if (data is None) == (input is None):
        console.print("[red]give exactly one of --data or --input[/]")
        raise typer.Exit(2)
    try:
        payload = orjson.loads(data if data is not None else Path(input).read_bytes())  # type: ignore[arg-type]
    except (orjson.JSONDecodeError, OSError) as exc:
        console.print(f"[red]cannot read the input: {exc}[/]")
        raise typer.Exit(2) from None
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    rows = None if inputs is not None else payload
    with _client(url) as hub:
        job = hub.submit(model, rows, inputs=inputs, wait=30 if wait else None)
        console.print(f"job [bold]{job['id']}[/] {job['status']} ({job['rows']} rows)")
        if follow:
            _follow(hub, job)
            job = hub.job(job["id"])
        if job["status"] == "succeeded":
            console.print(_result_table(job, hub.model(model).get("labels") or []))
        elif job["status"] in ("failed", "canceled"):
            console.print(f"[red]{job['status']}[/]: {job.get('error') or ''}")
            raise typer.Exit(1)


@app.command()
def watch(
    model: Annotated[list[str] | None, typer.Option(help="only these models (repeatable)")] = None,
    url: Url = "http://127.0.0.1:8000",
) -> None:
    """Print the live events of all jobs, one line each, until Ctrl-C."""
    with _client(url) as hub:
        try:
            for event in hub.watch(models=model):
                console.print(_event_line(event), highlight=False)
        except KeyboardInterrupt:
            pass


def _event_line(event: dict[str, Any]) -> str:
    if event["type"] in ("reset", "close"):
        return f"[yellow]{event['type']}[/]: {event.get('reason', '')}"
    when = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
    data = event["data"]
    if event["type"] == "progress":
        detail = f"{data['done']}/{data['total']}"
    elif event["type"] == "succeeded":
        detail = ", ".join(f"{o['name']}{o['shape']}" for o in data["outputs"])
    else:
        detail = " ".join(f"{k}={v}" for k, v in data.items())
    return f"{when} {event['job_id']} {event['model']:<14} {event['type']:<10} {detail}"


def _follow(hub: Client, job: dict[str, Any]) -> None:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("queued", total=job["rows"])
        for event in hub.follow(job["id"]):
            kind = event["type"]
            if kind == "progress":
                progress.update(task, completed=event["data"]["done"], description="running")
            elif kind == "started":
                progress.update(task, description=f"started (attempt {event['data']['attempt']})")
            elif kind == "succeeded":
                progress.update(task, completed=job["rows"], description="succeeded")
            else:
                progress.update(task, description=kind)


def _result_table(job: dict[str, Any], labels: list[str], max_rows: int = 20) -> Table:
    outputs = {o["name"]: o for o in job["outputs"]}
    table = Table("row", *outputs)
    for row in range(min(job["rows"], max_rows)):
        cells = []
        for out in outputs.values():
            width = (len(out["data"]) // out["shape"][0]) if out["shape"] else 1
            values = out["data"][row * width : (row + 1) * width]
            if out["name"] == "label" and labels and width == 1:
                cells.append(f"{labels[values[0]]} ({values[0]})")
            else:
                cells.append(
                    ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in values[:10])
                )
        table.add_row(str(row), *cells)
    if job["rows"] > max_rows:
        table.caption = f"first {max_rows} of {job['rows']} rows"
    return table


def _signature(tensors: list[dict[str, Any]]) -> str:
    return ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in tensors)


class _client:
    """A Client whose errors end the command with their message instead of a traceback."""

    def __init__(self, url: str) -> None:
        self.client = Client(url, api_key=os.environ.get("INFERHUB_API_KEY"))

    def __enter__(self) -> Client:
        return self.client

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _: object
    ) -> None:
        self.client.http.close()
        if isinstance(exc, HubError):
            console.print(f"[red]{exc.status} {exc.code}[/]: {exc.message}")
            sys.exit(1)
        if isinstance(exc, httpx.TransportError):
            console.print(f"[red]cannot reach the hub at {self.client.http.base_url}[/]: {exc}")
            sys.exit(1)


# --- inferhub status: the operator's view, from a hub's /metrics -------------------------------

Samples = dict[str, list[tuple[dict[str, str], float]]]


@app.command()
def status(
    url: Url = "http://127.0.0.1:8000",
    interval: Annotated[float, typer.Option(help="seconds between the two scrapes (rates)")] = 5.0,
    watch: Annotated[bool, typer.Option(help="refresh every --interval until Ctrl-C")] = False,
) -> None:
    """Workers, pools, queue depths and rates, read from the hub's /metrics (with a key, send
    INFERHUB_METRICS_TOKEN or an admin INFERHUB_API_KEY)."""
    from rich.live import Live

    interval = max(0.2, interval)
    # a keyed hub shows /metrics to an admin key or to its metrics token
    token = os.environ.get("INFERHUB_METRICS_TOKEN") or os.environ.get("INFERHUB_API_KEY")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, timeout=10, headers=headers) as http:
        try:
            before, at = _scrape(http), time.monotonic()
            if not watch:
                time.sleep(interval)
                console.print(_status_view(url, before, _scrape(http), time.monotonic() - at))
                return
            with Live(console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    now, after = time.monotonic(), _scrape(http)
                    live.update(_status_view(url, before, after, now - at), refresh=True)
                    before, at = after, now
        except httpx.HTTPError as exc:
            console.print(f"[red]cannot read {url}/metrics[/]: {exc}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            pass


def _scrape(http: httpx.Client) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    response = http.get("/metrics")
    response.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _by(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The sum of the samples of ``name``, by the values of ``labels``."""
    out: dict[tuple[str, ...], float] = {}
    for tags, value in samples.get(name, ()):
        key = tuple(tags.get(label, "") for label in labels)
        out[key] = out.get(key, 0.0) + value
    return out


def _rate(
    before: Samples, after: Samples, seconds: float, name: str, *labels: str
) -> dict[tuple[str, ...], float]:
    old = _by(before, name, *labels)  # a series new since then started from 0
    return {
        k: max(0.0, v - old.get(k, 0.0)) / seconds for k, v in _by(after, name, *labels).items()
    }


def _mean(after: Samples, before: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """Mean of a histogram over the interval (or since the start when nothing moved)."""
    sums, counts = _by(after, f"{name}_sum", *labels), _by(after, f"{name}_count", *labels)
    old_sums, old_counts = (
        _by(before, f"{name}_sum", *labels),
        _by(before, f"{name}_count", *labels),
    )
    out = {}
    for key, count in counts.items():
        delta = count - old_counts.get(key, 0.0)
        if delta > 0:
            out[key] = (sums[key] - old_sums.get(key, 0.0)) / delta
        elif count:
            out[key] = sums[key] / count
    return out


def _status_view(url: str, before: Samples, after: Samples, seconds: float) -> Any:
    from rich.console import Group

    one = lambda samples, name: sum(v for _, v in samples.get(name, ()))  # noqa: E731
    redis_up = one(after, "inferhub_redis_up") == 1
    events = sum(_rate(before, after, seconds, "inferhub_events_published_total").values())
    head = (
        f"[bold]{url}[/] redis {'[green]up[/]' if redis_up else '[red]unreachable[/]'}, "
        f"{one(after, 'inferhub_sse_connections'):.0f} SSE streams and "
        f"{one(after, 'inferhub_websocket_connections'):.0f} WebSockets on this hub, "
        f"{events:.1f} events/s"
    )

    done = _rate(before, after, seconds, "inferhub_worker_jobs_total", "worker", "pool", "status")
    pools = Table("pool", "workers", "queued", "running", "oldest queued", "jobs/s", title="pools")
    depth = _by(after, "inferhub_queue_depth", "pool")
    for (pool,), alive in sorted(_by(after, "inferhub_workers", "pool").items()):
        rate = sum(v for (_, p, _), v in done.items() if p == pool)
        pools.add_row(
            pool,
            f"{alive:.0f}" if alive else "[red]0[/]",
            f"{depth.get((pool,), 0):.0f}",
            f"{_by(after, 'inferhub_jobs_running', 'pool').get((pool,), 0):.0f}",
            f"{_by(after, 'inferhub_queue_oldest_age_seconds', 'pool').get((pool,), 0):.1f} s",
            f"{rate:.1f}",
        )

    workers = Table(
        "worker", "pool", "running", "jobs done", "jobs/s", "failed", "heartbeat", title="workers"
    )
    totals = _by(after, "inferhub_worker_jobs_total", "worker", "pool", "status")
    ages = _by(after, "inferhub_worker_heartbeat_age_seconds", "worker", "pool")
    for (worker_id, pool), running in sorted(
        _by(after, "inferhub_worker_running_jobs", "worker", "pool").items()
    ):
        mine = {s: v for (w, _, s), v in totals.items() if w == worker_id}
        workers.add_row(
            worker_id,
            pool,
            f"{running:.0f}",
            f"{sum(mine.values()):.0f}",
            f"{sum(v for (w, _, _), v in done.items() if w == worker_id):.1f}",
            f"{mine.get('failed', 0):.0f}",
            f"{ages.get((worker_id, pool), 0):.1f} s ago",
        )

    models = Table(
        "model",
        "succeeded/s",
        "failed/s",
        "canceled/s",
        "inference",
        "batch rows",
        title="models (all workers)",
    )
    by_model = _rate(before, after, seconds, "inferhub_worker_jobs_total", "model", "status")
    inference = _mean(after, before, "inferhub_inference_seconds", "model")
    rows = _mean(after, before, "inferhub_batch_size_rows", "model")
    for model in sorted({m for m, _ in by_model} | {m for (m,) in inference}):
        models.add_row(
            model,
            *(f"{by_model.get((model, s), 0):.1f}" for s in ("succeeded", "failed", "canceled")),
            f"{inference[(model,)] * 1000:.2f} ms" if (model,) in inference else "-",
            f"{rows[(model,)]:.1f}" if (model,) in rows else "-",
        )
    return Group(head, pools, workers, models)
