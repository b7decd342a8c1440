"""What more than one command group of the ``inferhub`` command shares: the console, the
options every client command takes, the look of tables and of ``--help``."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from typer.core import TyperArgument, TyperCommand

console = Console()

Url = Annotated[str, typer.Option(envvar="INFERHUB_URL", metavar="URL", help="the hub to talk to")]
Json = Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of a table")]


def new_app(**options: Any) -> typer.Typer:
    """A command group with plain ``--help`` (typer's rich help prints ``<bool>`` for every
    flag) and no shell-completion options."""
    return typer.Typer(rich_markup_mode=None, add_completion=False, **options)


class Command(TyperCommand):
    """A command whose usage line names its arguments as click does (``MODEL``, ``[MODEL]``)
    rather than typer's ``{model}``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:  # typer's own click Context
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.display_name_raw.upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


def table(*columns: str, **options: Any) -> Table:
    """A table that fits 80 columns and copies cleanly: no borders but a rule under the
    header, two spaces between columns."""
    return Table(
        *columns,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
        **options,
    )


def print_json(value: Any) -> None:
    """JSON on stdout, one document, no markup or wrapping."""
    print(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode(), flush=True)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
