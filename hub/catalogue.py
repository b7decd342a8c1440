"""What the workers say they serve: models (with signatures) and live workers, read from Redis.

The model list is cached for a moment so that validating a request costs no round trip.
``model_view`` is a model as clients see it (``/v1/models`` and the WebSocket's ``stats``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from redis.asyncio import Redis

from contract import keys
from contract.errors import NotFound

T = TypeVar("T")


class Cached(Generic[T]):
    """A value read at most once per ``max_age_s``; requests that find it stale while it is
    being read wait for that one read instead of each sending their own."""

    def __init__(self, read: Callable[[], Awaitable[T]], max_age_s: float) -> None:
        self.read = read
        self.max_age_s = max_age_s
        self._value: T | None = None
        self._read_at = -math.inf
        self._reading: asyncio.Task[T] | None = None

    async def get(self) -> T:
        if self._value is not None and time.monotonic() - self._read_at <= self.max_age_s:
            return self._value
        if self._reading is None:
            self._reading = asyncio.ensure_future(self.read())
        reading = self._reading
        try:
            self._value = await asyncio.shield(reading)
            self._read_at = time.monotonic()
        finally:
            if self._reading is reading and reading.done():
                self._reading = None
        return self._value

    def forget(self) -> None:
        self._read_at = -math.inf


@dataclass(frozen=True)
class Known:
    served: dict[str, dict[str, Any]]
    unloaded: dict[str, dict[str, Any] | None]


class Catalogue:
    def __init__(self, redis: Redis, *, max_age_s: float = 1.0, model_ttl_s: float = 86400) -> None:
        self.redis = redis
        self.model_ttl_s = model_ttl_s
        self._models: Cached[Known] = Cached(self._read_models, max_age_s)
        # a readiness check on every request must not cost a round trip
        self._live = Cached(self.workers, max_age_s)

    async def models(self) -> dict[str, dict[str, Any]]:
        """The models served (those unloaded left out), by name."""
        return (await self._models.get()).served

    async def unloaded(self) -> dict[str, dict[str, Any] | None]:
        """The models unloaded through the repository extension, with their last entry."""
        return (await self._models.get()).unloaded

    def invalidate(self) -> None:
        """Read Redis again at the next question (this hub just changed what is served)."""
        self._models.forget()
        self._live.forget()

    async def _read_models(self) -> Known:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.MODELS)
            pipe.hkeys(keys.REPOSITORY)
            raw, unloaded = await pipe.execute()
        cutoff = time.time() - self.model_ttl_s
        entries = (orjson.loads(v) for v in raw.values())
        fresh = {e["name"]: e for e in entries if e["seen"] >= cutoff}
        names = {n.decode() for n in unloaded}
        return Known(
            served={n: e for n, e in fresh.items() if n not in names},
            unloaded={n: fresh.get(n) for n in sorted(names)},
        )

    async def model(self, name: str, version: str | None = None) -> tuple[dict[str, Any], str]:
        """The model's entry and the version asked for (the latest when None)."""
        entry = (await self.models()).get(name)
        if entry is None and name in await self.unloaded():
            raise NotFound(
                f"model '{name}' is unloaded: POST /v2/repository/models/{name}/load serves it "
                "again",
                "model_not_found",
            )
        if entry is None:
            raise NotFound(f"model '{name}' does not exist", "model_not_found")
        version = version or entry["latest"]
        if version not in entry["versions"]:
            raise NotFound(
                f"model '{name}' has no version '{version}'; it has {', '.join(entry['versions'])}",
                "version_not_found",
            )
        return entry, version

    async def live_workers(self) -> list[dict[str, Any]]:
        """The live workers, read at most once per ``max_age_s``."""
        return await self._live.get()

    async def serving(self, model: str) -> list[str]:
        """The ids of the live workers that serve the model."""
        return serving(model, await self.live_workers())

    async def workers(self, include_stopped: bool = False) -> list[dict[str, Any]]:
        """Live workers (and, when asked, those seen in the last hour that stopped)."""
        ids = await self.redis.zrangebyscore(keys.WORKERS, time.time() - 3600, "+inf")
        if not ids:
            return []
        records = await self.redis.mget([keys.worker(i.decode()) for i in ids])
        out = []
        for worker_id, raw in zip(ids, records, strict=True):
            if raw is not None:
                out.append({**orjson.loads(raw), "alive": True})
            elif include_stopped:
                out.append({"id": worker_id.decode(), "alive": False})
        return out


def serving(model: str, workers: Iterable[Mapping[str, Any]]) -> list[str]:
    """The ids of the workers (of those given) that serve the model."""
    return [w["id"] for w in workers if model in w.get("models", ())]


def model_view(entry: dict[str, Any], workers: list[dict[str, Any]]) -> dict[str, Any]:
    """A catalogue entry as clients see it: ready when a live worker serves it, and which."""
    ids = serving(entry["name"], workers)
    view = {k: v for k, v in entry.items() if k != "seen"}
    return {**view, "ready": bool(ids), "workers": ids}


def model_views(
    models: dict[str, dict[str, Any]], workers: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every model's view, by name."""
    return [model_view(entry, workers) for _, entry in sorted(models.items())]
