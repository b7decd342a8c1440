"""The ``inferhub`` command: run the stack, and talk to a running hub."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hub.client import Client, HubError
from hub.settings import Settings

app = typer.Typer(help="inferhub: a real-time inference hub for ONNX models.", no_args_is_help=True)
console = Console()

RedisUrl = Annotated[str | None, typer.Option(help="INFERHUB_REDIS_URL")]
Models = Annotated[Path | None, typer.Option(help="the model repository (INFERHUB_MODELS)")]
Host = Annotated[str | None, typer.Option(help="INFERHUB_HOST")]
Port = Annotated[int | None, typer.Option(help="INFERHUB_PORT")]
Url = Annotated[str, typer.Option(envvar="INFERHUB_URL", help="the hub to talk to")]


def _settings(**flags: Any) -> Settings:
    return Settings(**{k: v for k, v in flags.items() if v is not None})


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # arq logs every job with its arguments (our raw tensors): costly and unreadable
    logging.getLogger("arq.worker").setLevel(logging.WARNING)


KeysFile = Annotated[Path | None, typer.Option(help="INFERHUB_API_KEYS_FILE")]
Insecure = Annotated[
    bool | None, typer.Option("--insecure", help="serve beyond loopback with no API keys")
]


def _check_exposure(settings: Settings) -> None:
    from hub.auth import KeyRing, exposure_problem

    problem = exposure_problem(
        settings.host, KeyRing.load(settings.api_keys_file), settings.insecure
    )
    if problem:
        console.print(f"[red]{problem}[/]")
        raise typer.Exit(2)


@app.command()
def serve(
    redis_url: RedisUrl = None,
    host: Host = None,
    port: Port = None,
    api_keys_file: KeysFile = None,
    insecure: Insecure = None,
) -> None:
    """Run the hub (HTTP, SSE and WebSocket API)."""
    import uvicorn

    from hub.app import create_app

    _logging()
    settings = _settings(
        redis_url=redis_url, host=host, port=port, api_keys_file=api_keys_file, insecure=insecure
    )
    _check_exposure(settings)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


@app.command()
def worker(
    redis_url: RedisUrl = None,
    models: Models = None,
    pool: Annotated[str | None, typer.Option(help="INFERHUB_POOL")] = None,
) -> None:
    """Run a worker for one pool of the model repository."""
    from workers.main import run_worker

    _logging()
    run_worker(_settings(redis_url=redis_url, models=models, pool=pool))


@app.command()
def up(
    redis_url: RedisUrl = None,
    models: Models = None,
    host: Host = None,
    port: Port = None,
    api_keys_file: KeysFile = None,
    insecure: Insecure = None,
) -> None:
    """The whole stack on this machine: Redis (embedded unless INFERHUB_REDIS_URL), a worker, the hub."""
    from hub.processes import free_port, start_cli, start_redis, stop

    settings = _settings(
        redis_url=redis_url,
        models=models,
        host=host,
        port=port,
        api_keys_file=api_keys_file,
        insecure=insecure,
    )
    _check_exposure(settings)
    if not settings.models.is_dir() or not any(settings.models.glob("*/config.toml")):
        console.print(
            f"[red]No models in {settings.models.resolve()}[/]: point --models (INFERHUB_MODELS) "
            "at a model repository (<name>/config.toml, <name>/1/model.onnx), or run "
            "`python scripts/build_example_models.py`."
        )
        raise typer.Exit(2)

    procs = []
    workdir = Path(tempfile.mkdtemp(prefix="inferhub-"))
    for signum in (signal.SIGINT, signal.SIGTERM):  # either stops the whole stack
        signal.signal(signum, _interrupt)
    try:
        if "INFERHUB_REDIS_URL" not in os.environ and redis_url is None:
            redis_port = free_port()
            procs.append(start_redis(redis_port, workdir))
            settings.redis_url = f"redis://127.0.0.1:{redis_port}/0"
            console.print(f"embedded Redis on {settings.redis_url} (data in {workdir})")
        env = {
            "INFERHUB_REDIS_URL": settings.redis_url,
            "INFERHUB_MODELS": str(settings.models.resolve()),
            "INFERHUB_HOST": settings.host,
            "INFERHUB_PORT": str(settings.port),
            "INFERHUB_INSECURE": str(settings.insecure).lower(),
        }
        if settings.api_keys_file is not None:
            env["INFERHUB_API_KEYS_FILE"] = str(settings.api_keys_file.resolve())
        procs.append(start_cli("worker", env=env))
        procs.append(start_cli("serve", env=env))
        base = f"http://{settings.host}:{settings.port}"
        _wait_ready(base, procs)
        console.print(
            f"[green]inferhub is up[/]: {base}/ (API docs {base}/docs). Ctrl-C stops everything."
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.2)
        console.print("[red]a process of the stack exited; stopping the rest[/]")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        stop(procs)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _wait_ready(base: str, procs: list[Any], limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise typer.Exit(1)
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    console.print(f"[yellow]{base}/readyz is not ready after {limit_s:g} s[/]")


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
        self.client = Client(url)

    def __enter__(self) -> Client:
        return self.client

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _: object
    ) -> bool:
        self.client.http.close()
        if isinstance(exc, HubError):
            console.print(f"[red]{exc.status} {exc.code}[/]: {exc.message}")
            sys.exit(1)
        if isinstance(exc, httpx.TransportError):
            console.print(f"[red]cannot reach the hub at {self.client.http.base_url}[/]: {exc}")
            sys.exit(1)
        return False
