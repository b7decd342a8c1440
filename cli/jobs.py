"""Talking to a running hub: ``inferhub models``, ``jobs``, ``submit`` and ``watch``."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.common import Json, Url, console, plural, print_json, table
from cli.npzfile import NpzChunks
from contract.events import JobStatus
from contract.tensors import decode_tensor
from hub.client import Client, HubError


def list_models(
    url: Url = "http://127.0.0.1:8000",
    wide: Annotated[bool, typer.Option("--wide", help="and each model's description")] = False,
    json: Json = False,
) -> None:
    """The models the workers serve."""
    with _client(url) as hub:
        models = hub.models()
    if json:
        print_json(models)
        return
    grid = table("model", "version", "ready", "inputs", "outputs")
    for column in grid.columns:
        column.no_wrap = True
    for m in models:
        sig = m["versions"][m["latest"]]
        grid.add_row(
            m["name"],
            m["latest"],
            "yes" if m["ready"] else "[red]no[/]",
            _signature(sig["inputs"]),
            _signature(sig["outputs"]),
        )
    console.print(grid)
    if wide:  # below, where a description has the width to be read
        about = table("model", "description")
        about.columns[0].no_wrap = True
        for m in models:
            about.add_row(m["name"], m["description"])
        console.print(about)


def list_jobs(
    url: Url = "http://127.0.0.1:8000",
    model: Annotated[
        str | None, typer.Option(metavar="MODEL", help="only this model's jobs")
    ] = None,
    status: Annotated[
        JobStatus | None,
        typer.Option(
            metavar="STATE",
            help="only jobs in this state: queued, started, succeeded, failed, canceled",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(metavar="N", help="at most this many")] = 20,
    json: Json = False,
) -> None:
    """Recent jobs, newest first.

    Ids are printed whole, to paste into GET /v1/jobs/ID and the other routes."""
    with _client(url) as hub:
        page = hub.jobs(model=model, status=status, limit=limit)
    if json:
        print_json(page)
        return
    grid = table("id", "model", "status", "rows", "try", "created")
    grid.columns[0].no_wrap = True  # an id cut in two cannot be pasted
    for job in page["jobs"]:
        created = time.strftime("%H:%M:%S", time.localtime(job["created_at"]))
        grid.add_row(
            job["id"],
            job["model"],
            job["status"],
            str(job["rows"]),
            str(job["attempt"]),
            created,
        )
    console.print(grid)


def submit(
    model: Annotated[str, typer.Argument(help="the model to run", show_default=False)],
    data: Annotated[
        str | None,
        typer.Option(metavar="JSON", help="rows as JSON, e.g. '[[5.1, 3.5, 1.4, 0.2]]'"),
    ] = None,
    input: Annotated[
        Path | None, typer.Option(metavar="FILE", help="a JSON file: rows, or a request body")
    ] = None,
    wait: Annotated[
        float | None,
        typer.Option(metavar="SECONDS", help="wait up to this long for the result"),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="show progress live until the end")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE.npz",
            help="write the outputs there: with --follow chunk by chunk as they are done, "
            "else once the job succeeds",
        ),
    ] = None,
    json: Json = False,
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
    chunked = follow and out is not None  # the outputs streamed, written as they come
    with _client(url) as hub:
        job = hub.submit(model, rows, inputs=inputs, wait=wait, stream_outputs=chunked)
        if not json:
            console.print(
                f"job [bold]{job['id']}[/] {job['status']} ({plural(job['rows'], 'row')})"
            )
        written = None
        if follow:
            file = NpzChunks(out, job["rows"]) if out is not None else None
            try:
                _follow(hub, job, quiet=json, chunks=file)
            except BaseException:
                if file is not None:
                    file.abort()
                raise
            job = hub.job(job["id"])
            written = _finish(file, job)
        if out is not None and job["status"] == "succeeded":
            if not written:
                _download(hub, job, out)
            if not json:
                console.print(f"outputs written to {out}")
        if json:
            print_json(job)
        elif job["status"] == "succeeded" and job["outputs"] is None:  # large: stored once
            for tensor in job["outputs_summary"]:
                console.print(
                    f"{tensor['name']} {tensor['datatype']} {tensor['shape']} "
                    f"{tensor['bytes']:,} bytes"
                )
            console.print(f"outputs: {job['urls']['outputs']}?format=npz (or json, binary, npy)")
        elif job["status"] == "succeeded":
            console.print(_result_table(job, hub.model(model).get("labels") or []))
        elif job["status"] in ("failed", "canceled"):
            console.print(f"[red]{job['status']}[/]: {job.get('error') or ''}")
        if job["status"] in ("failed", "canceled"):
            raise typer.Exit(1)


def watch(
    model: Annotated[list[str] | None, typer.Option(help="only these models (repeatable)")] = None,
    json: Annotated[bool, typer.Option("--json", help="one JSON event per line")] = False,
    url: Url = "http://127.0.0.1:8000",
) -> None:
    """Print the live events of all jobs, one line each, until Ctrl-C."""
    with _client(url) as hub:
        try:
            for event in hub.watch(models=model):
                if json:
                    print_json(event)
                else:
                    console.print(_event_line(event), highlight=False, soft_wrap=True)
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
        shown = data.get("outputs") or data.get("outputs_summary") or []
        detail = ", ".join(f"{o['name']}{o['shape']}" for o in shown)
    else:
        detail = " ".join(f"{k}={v}" for k, v in data.items())
    return f"{when} {event['job_id']} {event['model']:<14} {event['type']:<10} {detail}"


def _follow(
    hub: Client, job: dict[str, Any], quiet: bool = False, chunks: NpzChunks | None = None
) -> None:
    """A progress bar of the job to its end; each streamed chunk's rows into ``chunks``."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=quiet) as progress:
        task = progress.add_task("queued", total=job["rows"])
        for event in hub.follow(job["id"]):
            kind = event["type"]
            if kind == "progress":
                progress.update(task, completed=event["data"]["done"], description="running")
            elif kind == "started":
                progress.update(task, description=f"started (attempt {event['data']['attempt']})")
            elif kind == "output" and chunks is not None:
                start, _ = event["data"]["rows"]
                chunks.write(start, _chunk(hub, event["data"]))
            elif kind == "succeeded":
                progress.update(task, completed=job["rows"], description="succeeded")
            else:
                progress.update(task, description=kind)


def _chunk(hub: Client, data: dict[str, Any]) -> dict[str, np.ndarray]:
    """A streamed chunk's outputs: in its event when small, else fetched from its URL."""
    if "outputs" in data:
        return {t["name"]: decode_tensor(t) for t in data["outputs"]}
    # the URL's own query (its rows) kept: httpx's params= would replace it
    answer = hub.http.get(httpx.URL(data["outputs_url"]).copy_add_param("format", "npz"))
    answer.raise_for_status()
    with np.load(io.BytesIO(answer.content)) as archive:
        return {name: archive[name] for name in archive.files}


def _finish(file: NpzChunks | None, job: dict[str, Any]) -> bool:
    """Complete the file of streamed chunks if the job succeeded with all its rows in it;
    else remove it. Whether it holds the outputs."""
    if file is None:
        return False
    if job["status"] == "succeeded" and file.written == job["rows"]:
        file.close()
        return True
    file.abort()
    return False


def _download(hub: Client, job: dict[str, Any], out: Path) -> None:
    """The whole outputs as .npz, streamed to the file."""
    with hub.http.stream("GET", job["urls"]["outputs"], params={"format": "npz"}) as answer:
        answer.raise_for_status()
        with out.open("wb") as file:
            for piece in answer.iter_bytes():
                file.write(piece)


def _result_table(job: dict[str, Any], labels: list[str], max_rows: int = 20) -> Any:
    outputs = {o["name"]: o for o in job["outputs"]}
    grid = table("row", *outputs)
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
        grid.add_row(str(row), *cells)
    if job["rows"] > max_rows:
        grid.caption = f"first {max_rows} of {job['rows']} rows"
    return grid


def _signature(tensors: list[dict[str, Any]]) -> str:
    """One tensor a line, so that a model's many outputs stay in a narrow column."""
    return "\n".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in tensors)


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
