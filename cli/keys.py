"""``inferhub keys``: API keys in a keys file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import Command, console, new_app

app = new_app(help="API keys: each has a tenant and scopes (submit, read, admin).")


@app.command("add", cls=Command)
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
    scopes = ", ".join(sorted(set(scope)))
    # soft wrap: a long path folded by the terminal, not cut in two by us, stays copyable
    console.print(f"key for tenant [bold]{tenant}[/] ({scopes}), in {file}:", soft_wrap=True)
    print(key)
    console.print(
        f"serve with INFERHUB_API_KEYS_FILE={file.resolve()}; send Authorization: Bearer <key>",
        soft_wrap=True,
    )
