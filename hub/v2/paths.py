"""A V2 model route at both of its paths, as two operations of the OpenAPI document.

``/v2/models/{model}<suffix>`` serves the latest version and has no ``version`` parameter;
``/v2/models/{model}/versions/{version}<suffix>`` has ``version`` as a required, non-nullable
path parameter. One endpoint with ``version: str | None = None`` serves both, so the
document says what each path takes (a generated client then has one call for each).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

LATEST = "/v2/models/{model}"
VERSIONED = "/v2/models/{model}/versions/{version}"


def model_route(
    router: APIRouter, method: str, suffix: str, summary: str, **options: Any
) -> Callable[[Any], Any]:
    """Register the decorated endpoint (which takes ``version: str | None``) at both paths."""

    def register(endpoint: Any) -> Any:
        hints = typing.get_type_hints(endpoint, include_extras=True)
        params = [
            p.replace(annotation=hints.get(p.name, p.annotation), kind=p.KEYWORD_ONLY)
            for p in inspect.signature(endpoint).parameters.values()
        ]
        returns = hints.get("return", inspect.Signature.empty)

        async def at_latest(**kwargs: Any) -> Any:
            return await endpoint(**kwargs, version=None)

        async def at_version(**kwargs: Any) -> Any:
            return await endpoint(**kwargs)

        at_latest.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [p for p in params if p.name != "version"], return_annotation=returns
        )
        at_version.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                p.replace(annotation=str, default=p.empty) if p.name == "version" else p
                for p in params
            ],
            return_annotation=returns,
        )
        for path, call, name, said in (
            (LATEST, at_latest, endpoint.__name__, summary),
            (VERSIONED, at_version, f"{endpoint.__name__}_version", f"{summary} (one version)"),
        ):
            at = path + suffix
            router.add_api_route(at, call, methods=[method], summary=said, name=name, **options)
        return endpoint

    return register
