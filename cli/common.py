"""What more than one command group of the ``inferhub`` command shares."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

console = Console()

Url = Annotated[str, typer.Option(envvar="INFERHUB_URL", help="the hub to talk to")]
