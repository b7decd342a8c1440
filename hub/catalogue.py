"""What the workers say they serve: models (with signatures) and live workers, read from Redis.

The model list is cached for a moment so that validating a request costs no round trip.
``model_view`` is a model as clients see it (``/v1/models`` and the WebSocket's ``stats``).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.asyncio import Redis

from contract import keys
from hub.errors import HubError, not_found


class Catalogue:
    def __init__(self, redis: Redis, *, max_age_s: float = 1.0, model_ttl_s: float = 86400) -> None:
        self.redis = redis
        self.max_age_s = max_age_s
        self.model_ttl_s = model_ttl_s
        self._models: dict[str, dict[str, Any]] = {}
        self._read_at = 0.0
        self._workers: list[dict[str, Any]] = []
        self._workers_read_at = 0.0

    async def models(self) -> dict[str, dict[str, Any]]:
        if time.monotonic() - self._read_at > self.max_age_s:
            raw = await self.redis.hgetall(keys.MODELS)  # type: ignore[misc]  # redis-py: sync|async
            cutoff = time.time() - self.model_ttl_s
            entries = (orjson.loads(v) for v in raw.values())
            self._models = {e["name"]: e for e in entries if e["seen"] >= cutoff}
            self._read_at = time.monotonic()
        return self._models

    async def model(self, name: str, version: str | None = None) -> tuple[dict[str, Any], str]:
        """The model's entry and the version asked for (the latest when None)."""
        entry = (await self.models()).get(name)
        if entry is None:
            raise not_found("model", name)
        version = version or entry["latest"]
        if version not in entry["versions"]:
            raise HubError(
                404,
                "version_not_found",
                f"model '{name}' has no version '{version}'; it has {', '.join(entry['versions'])}",
            )
        return entry, version

    async def live_workers(self) -> list[dict[str, Any]]:
        """The live workers, read at most once per ``max_age_s``: a readiness check on every
        request must not cost a round trip."""
        if time.monotonic() - self._workers_read_at > self.max_age_s:
            self._workers = await self.workers()
            self._workers_read_at = time.monotonic()
        return self._workers

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


def model_view(entry: dict[str, Any], workers: list[dict[str, Any]]) -> dict[str, Any]:
    """A catalogue entry as clients see it: ready when a live worker serves it, and which."""
    serving = [w["id"] for w in workers if entry["name"] in w.get("models", ())]
    view = {k: v for k, v in entry.items() if k != "seen"}
    return {**view, "ready": bool(serving), "workers": serving}


def model_views(
    models: dict[str, dict[str, Any]], workers: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every model's view, by name."""
    return [model_view(entry, workers) for _, entry in sorted(models.items())]
