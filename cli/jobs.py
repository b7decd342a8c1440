"""Talking to a running hub: ``inferhub models``, ``jobs``, ``submit`` and ``watch``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import Url, console
from hub.client import Client, HubError


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
        if job["status"] == "succeeded" and job["outputs"] is None:  # large: stored once
            for out in job["outputs_summary"]:
                console.print(
                    f"{out['name']} {out['datatype']} {out['shape']} {out['bytes']:,} bytes"
                )
            console.print(f"outputs: {job['urls']['outputs']}?format=npz (or json, binary, npy)")
        elif job["status"] == "succeeded":
            console.print(_result_table(job, hub.model(model).get("labels") or []))
        elif job["status"] in ("failed", "canceled"):
            console.print(f"[red]{job['status']}[/]: {job.get('error') or ''}")
            raise typer.Exit(1)


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
        shown = data.get("outputs") or data.get("outputs_summary") or []
        detail = ", ".join(f"{o['name']}{o['shape']}" for o in shown)
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
