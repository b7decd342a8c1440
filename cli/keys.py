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
    from hub.auth import KeyRing, new_key

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
    if KeyRing.load(file).webhook_secret(tenant) is None:  # a new tenant
        _show_webhook_secret(file, tenant)


@app.command("webhook-secret", cls=Command)
def keys_webhook_secret(
    tenant: Annotated[
        str | None,
        typer.Option(help="the tenant whose secret to create or replace in the keys file"),
    ] = None,
    file: Annotated[
        Path, typer.Option(envvar="INFERHUB_API_KEYS_FILE", help="the keys file")
    ] = Path("inferhub-keys.toml"),
) -> None:
    """A new secret that signs webhooks: a tenant's, in the keys file (its old one stops
    working when the hub restarts), or without --tenant one for INFERHUB_WEBHOOK_SECRET."""
    from hub.webhooks.signing import new_secret

    if tenant is None:
        console.print("a webhook secret: set INFERHUB_WEBHOOK_SECRET to it on every hub")
        print(new_secret())
        return
    _show_webhook_secret(file, tenant)


def _show_webhook_secret(file: Path, tenant: str) -> None:
    from hub.auth import set_webhook_secret

    try:
        secret = set_webhook_secret(file, tenant)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    console.print(
        f"webhook secret of tenant [bold]{tenant}[/], in {file} (verify its deliveries with it; "
        "shown only now):",
        soft_wrap=True,
    )
    print(secret)
