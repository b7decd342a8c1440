"""The stack's processes: ``inferhub serve`` (a hub), ``worker``, ``up`` (Redis, a worker and a hub
as child processes, stopped together) and ``bench``."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from cli.common import console
from contract.settings import Settings

RedisUrl = Annotated[str | None, typer.Option(help="INFERHUB_REDIS_URL")]
Models = Annotated[Path | None, typer.Option(help="the model repository (INFERHUB_MODELS)")]
Host = Annotated[str | None, typer.Option(help="INFERHUB_HOST")]
Port = Annotated[int | None, typer.Option(help="INFERHUB_PORT")]
GrpcPort = Annotated[int | None, typer.Option(help="INFERHUB_GRPC_PORT (0: no gRPC)")]


def _settings(**flags: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        # each problem on its own, without pydantic's echo of the value (a URL's password)
        _fail(
            "; ".join(f"INFERHUB_{e['loc'][0]!s}".upper() + f": {e['msg']}" for e in exc.errors())
        )


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
    from cli.processes import bind_problem

    problem = bind_problem(settings.host, settings.port)
    if not problem and settings.grpc_port:
        problem = bind_problem(settings.host, settings.grpc_port, "gRPC port", "--grpc-port")
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


def serve(
    redis_url: RedisUrl = None,
    host: Host = None,
    port: Port = None,
    grpc_port: GrpcPort = None,
    api_keys_file: KeysFile = None,
    insecure: Insecure = None,
    log_format: LogFormat = None,
    shutdown_grace_s: Annotated[
        float | None, typer.Option(help="INFERHUB_SHUTDOWN_GRACE_S: exit within this on SIGTERM")
    ] = None,
) -> None:
    """Run the hub (HTTP, SSE and WebSocket API; V2 over gRPC)."""
    import uvicorn

    from hub.app import create_app
    from hub.server import Server

    settings = _settings(
        redis_url=redis_url,
        host=host,
        port=port,
        grpc_port=grpc_port,
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


def up(
    redis_url: RedisUrl = None,
    models: Models = None,
    host: Host = None,
    port: Port = None,
    grpc_port: GrpcPort = None,
    api_keys_file: KeysFile = None,
    insecure: Insecure = None,
    log_format: LogFormat = None,
) -> None:
    """Run the whole stack here: Redis, a worker and the hub.

    Redis is an embedded one unless INFERHUB_REDIS_URL (or --redis-url) names one; Ctrl-C
    stops everything. With no keys file and no INFERHUB_WEBHOOK_SECRET, the hub signs webhooks
    with the secret in ./inferhub-webhook-secret (made on the first run, then kept)."""
    from cli.processes import embedded_redis, start_cli, stop, wait_ready

    settings = _settings(
        redis_url=redis_url,
        models=models,
        host=host,
        port=port,
        grpc_port=grpc_port,
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
    # a keyless stack signs webhooks with a secret of its own, unless given one
    keyless = settings.api_keys_file is None and settings.webhook_secret is None
    webhook_secret = stack_webhook_secret() if keyless else None

    redis: list[Any] = []  # the embedded Redis, stopped last
    procs: list[Any] = []  # the worker and the hub
    workdir = Path(tempfile.mkdtemp(prefix="inferhub-"))
    for signum in (signal.SIGINT, signal.SIGTERM):  # either stops the whole stack
        signal.signal(signum, _interrupt)
    try:
        if "INFERHUB_REDIS_URL" not in os.environ and redis_url is None:
            server, settings.redis_url = embedded_redis(workdir)
            redis.append(server)
            console.print(
                f"embedded Redis on {settings.redis_url} (files in {workdir}, removed at exit)",
                soft_wrap=True,
            )
        env = {
            "INFERHUB_REDIS_URL": settings.redis_url,
            "INFERHUB_MODELS": str(settings.models.resolve()),
            "INFERHUB_HOST": settings.host,
            "INFERHUB_PORT": str(settings.port),
            "INFERHUB_GRPC_PORT": str(settings.grpc_port),
            "INFERHUB_INSECURE": str(settings.insecure).lower(),
            "INFERHUB_LOG_FORMAT": settings.log_format,
        }
        if settings.api_keys_file is not None:
            env["INFERHUB_API_KEYS_FILE"] = str(settings.api_keys_file.resolve())
        hub_env = dict(env)  # the secret is the hub's alone: workers send no webhooks
        if webhook_secret is not None:
            secret, path = webhook_secret
            console.print(f"webhooks signed with the secret in {path}", soft_wrap=True)
            hub_env["INFERHUB_WEBHOOK_SECRET"] = secret
        procs.append(start_cli("worker", env=env))
        procs.append(start_cli("serve", env=hub_env))
        base = f"http://{settings.host}:{settings.port}"
        if not wait_ready(base, 60, watch=[*redis, *procs]):
            if any(p.poll() is not None for p in [*redis, *procs]):
                console.print("[red]a process of the stack exited before the hub was ready[/]")
            else:
                console.print(f"[red]{base}/readyz did not answer ready within 60 s[/]")
            raise typer.Exit(1)
        console.print(
            f"[green]inferhub is up[/]: {base}/ (API docs {base}/docs). Ctrl-C stops everything.",
            soft_wrap=True,
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
        shutil.rmtree(workdir, ignore_errors=True)  # the embedded Redis's log; nothing is kept


STACK_WEBHOOK_SECRET = Path("inferhub-webhook-secret")


def stack_webhook_secret() -> tuple[str, Path]:
    """The secret a keyless ``up`` signs webhooks with, so that they work from the first run,
    and the file in the current folder that holds it: made on the first run (readable by its
    owner only), kept for the next, so that a receiver set up with it keeps verifying."""
    from hub.webhooks.signing import new_secret, secret_key

    path = STACK_WEBHOOK_SECRET.resolve()
    try:
        if path.exists():
            secret = path.read_text().strip()
            secret_key(secret)
            return secret, path
        secret = new_secret()
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(secret + "\n")
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        _fail(
            f"the stack's webhook secret, {path}: {reason}; remove the file for a new one, or "
            "set INFERHUB_WEBHOOK_SECRET"
        )
    return secret, path


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def bench(ctx: typer.Context) -> None:
    """Benchmark both lanes against a no-queue baseline.

    bench/lanes.py, whose own options follow: both lanes beside the no-queue baseline and
    onnxruntime in process, with their ratios and Redis commands per request. Example:
    inferhub bench --seconds 5 --only tiny-c64"""
    script = Path(__file__).resolve().parent.parent / "bench" / "lanes.py"
    if not script.exists():
        console.print("[red]bench/ is not here: run it from a clone of the repository[/]")
        raise typer.Exit(2)
    os.execv(sys.executable, [sys.executable, str(script), *ctx.args])
