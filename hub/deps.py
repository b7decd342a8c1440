"""FastAPI dependencies, as ``Annotated`` aliases: the service, settings, and who is calling."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection
from starlette.types import Scope

from contract.settings import Settings
from hub.auth import Principal, bearer, redeem_ticket, unauthorized
from hub.catalogue import Catalogue
from hub.service import JobService


async def _service(conn: HTTPConnection) -> JobService:
    return conn.app.state.service


async def _catalogue(conn: HTTPConnection) -> Catalogue:
    return conn.app.state.service.catalogue


async def _settings(conn: HTTPConnection) -> Settings:
    return conn.app.state.settings


async def authenticate(conn: HTTPConnection, *, tickets: bool = False) -> Principal:
    """The caller, from ``Authorization: Bearer <key>`` (or ``?ticket=`` where ``tickets``)."""
    principal = bearer(conn.app.state.keyring, first_header(conn.scope, b"authorization"))
    if principal is not None:
        return principal
    ticket = conn.query_params.get("ticket") if tickets else None
    if ticket:
        principal = await redeem_ticket(conn.app.state.service.store.redis, ticket)
        if principal is None:
            raise unauthorized("the ticket is not valid: it is used once, within a minute")
        return principal
    how = "send Authorization: Bearer <key>"
    raise unauthorized(how + (", or ?ticket= from POST /v1/tickets" if tickets else ""))


def first_header(scope: Scope, name: bytes) -> str | None:
    """A request's header (``name`` in lower case, as ASGI gives them) as starlette's
    ``Headers.get`` reads it, the first of its kind; None when absent. A plain scan: a hot
    route asks for three or four headers a request is mostly without, and each miss of
    ``Headers.get`` raises and catches a KeyError (3 µs for the four of a V2 inference)."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _needs(scope: str, tickets: bool = False) -> Callable[[HTTPConnection], Awaitable[Principal]]:
    async def caller(conn: HTTPConnection) -> Principal:
        return (await authenticate(conn, tickets=tickets)).need(scope)

    return caller


ServiceDep = Annotated[JobService, Depends(_service)]
CatalogueDep = Annotated[Catalogue, Depends(_catalogue)]
SettingsDep = Annotated[Settings, Depends(_settings)]
CallerDep = Annotated[Principal, Depends(authenticate)]
SubmitterDep = Annotated[Principal, Depends(_needs("submit"))]
ReaderDep = Annotated[Principal, Depends(_needs("read"))]
AdminDep = Annotated[Principal, Depends(_needs("admin"))]
StreamReaderDep = Annotated[Principal, Depends(_needs("read", tickets=True))]
