"""FastAPI dependencies, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from hub.catalogue import Catalogue
from hub.service import JobService
from hub.settings import Settings


async def _service(request: HTTPConnection) -> JobService:
    return request.app.state.service


async def _catalogue(request: HTTPConnection) -> Catalogue:
    return request.app.state.service.catalogue


async def _settings(request: HTTPConnection) -> Settings:
    return request.app.state.settings


async def _owner(request: HTTPConnection) -> str:
    # one tenant until API keys arrive; every job is already scoped by owner
    return "anonymous"


ServiceDep = Annotated[JobService, Depends(_service)]
CatalogueDep = Annotated[Catalogue, Depends(_catalogue)]
SettingsDep = Annotated[Settings, Depends(_settings)]
OwnerDep = Annotated[str, Depends(_owner)]
