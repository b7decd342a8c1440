"""The ``inferhub`` command: run the stack, and talk to a running hub.

Its own package above ``hub`` and ``workers``: it starts both (``inferhub up`` runs each as a child
process), so neither of them imports it, and ``hub`` never imports ``workers``. The commands are
registered here, in the order ``--help`` lists them."""

from __future__ import annotations

from cli import jobs, keys, stack, status
from cli.common import Command, new_app

app = new_app(help="inferhub: a real-time inference hub for ONNX models.", no_args_is_help=True)

app.command(cls=Command)(stack.serve)
app.command(cls=Command)(stack.worker)
app.command(cls=Command)(stack.up)
# bench/load.py parses its own options
app.command(
    cls=Command, context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)(stack.bench)
app.add_typer(keys.app, name="keys")
app.command("models", cls=Command)(jobs.list_models)
app.command("jobs", cls=Command)(jobs.list_jobs)
app.command(cls=Command)(jobs.submit)
app.command(cls=Command)(jobs.watch)
app.command(cls=Command)(status.status)
