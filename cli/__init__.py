"""The ``inferhub`` command: run the stack, and talk to a running hub.

Its own package above ``hub`` and ``workers``: it starts both (``inferhub up`` runs each as a child
process), so neither of them imports it, and ``hub`` never imports ``workers``. The commands are
registered here, in the order ``--help`` lists them."""

from __future__ import annotations

import typer

from cli import jobs, keys, stack, status

app = typer.Typer(help="inferhub: a real-time inference hub for ONNX models.", no_args_is_help=True)

app.command()(stack.serve)
app.command()(stack.worker)
app.command()(stack.up)
# bench/load.py parses its own options
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    stack.bench
)
app.add_typer(keys.app, name="keys")
app.command("models")(jobs.list_models)
app.command("jobs")(jobs.list_jobs)
app.command()(jobs.submit)
app.command()(jobs.watch)
app.command()(status.status)
