"""The WebSocket's periodic ``stats`` message: models, queues and workers, live (docs/protocol.md).

A connection opts in with ``{"type": "stats"}``. One loop per hub process reads one cluster
snapshot (hub/metrics/cluster.py) per interval while any connection listens, builds the
message once per scope, encodes it once, and hands the same frame to every connection of that
scope:

- **admin** (an ``admin`` key, or any caller of a keyless hub): ``models``, ``pools`` and
  ``workers``, as ``GET /v1/models``, ``/v1/queues`` and ``/v1/workers`` show them (without
  the workers' ``figures``: histograms for ``/metrics``, not for a page);
  and ``online``: per model, this hub's online counters so far (requests by outcome, rows,
  batches and the requests in them), from which the page draws rates;
- **a tenant**: ``models`` only, as ``GET /v1/models`` shows them to it. Pools and workers
  tell every tenant's activity, and the HTTP routes that show them answer a tenant ``403``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson

from hub.catalogue import Catalogue, model_views
from hub.frames import text_frame
from hub.metrics import cluster

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """A message encoded once, sent as it is to every connection it is for."""

    text: str

    @cached_property
    def wire(self) -> bytes:
        """As one WebSocket text frame, header included, for the sockets written directly."""
        return text_frame(self.text.encode())


Sink = Callable[[Frame], None]


Online = Callable[[], dict[str, dict[str, float]]]


def message(
    snapshot: cluster.Snapshot, *, admin: bool, online: dict[str, dict[str, float]] | None = None
) -> dict[str, Any]:
    """The ``stats`` message of one snapshot, for one scope (see the module's docstring)."""
    out: dict[str, Any] = {"type": "stats", "ts": snapshot.at}
    if snapshot.error is not None:
        return {**out, "error": f"the deployment could not be read from Redis: {snapshot.error}"}
    out["models"] = model_views(snapshot.models, snapshot.workers)
    if admin:
        out["pools"] = [pool.view() for pool in snapshot.pools]
        out["workers"] = [
            {k: v for k, v in worker.items() if k != "figures"} for worker in snapshot.workers
        ]
        out["online"] = online or {}
    return out


class StatsFeed:
    """Every ``interval_s``, while a sink listens: one snapshot, one frame per scope, to all."""

    def __init__(self, catalogue: Catalogue, interval_s: float, online: Online = dict) -> None:
        self.catalogue = catalogue
        self.online = online
        self.interval_s = interval_s
        self._sinks: dict[Hashable, tuple[bool, Sink]] = {}
        self._latest: dict[bool, Frame] = {}  # by admin or not
        self._latest_at = -math.inf  # monotonic: when the latest snapshot was read
        self._due = -math.inf  # monotonic: when the next may be read
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sinks)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def add(self, key: Hashable, admin: bool, sink: Sink) -> None:
        """Send ``sink`` every frame of its scope from now on; the latest at once, if it is
        less than an interval old (else the next one is being read)."""
        self._sinks[key] = (admin, sink)
        if self._latest and time.monotonic() - self._latest_at < self.interval_s:
            sink(self._latest[admin])
        self._wanted.set()

    def discard(self, key: Hashable) -> None:
        self._sinks.pop(key, None)

    async def _run(self) -> None:
        while True:
            if not self._sinks:  # nobody listens: read nothing until somebody does
                self._wanted.clear()
                await self._wanted.wait()
            await asyncio.sleep(max(0.0, self._due - time.monotonic()))
            self._due = time.monotonic() + self.interval_s
            if not self._sinks:
                continue
            try:
                await self._publish()
            except Exception:  # a bug costs one interval's message, never the feed
                log.exception("the stats message failed")

    async def _publish(self) -> None:
        read_at = time.monotonic()
        snapshot = await cluster.read(self.catalogue)
        online = self.online()
        self._latest = {
            admin: Frame(orjson.dumps(message(snapshot, admin=admin, online=online)).decode())
            for admin in (True, False)
        }
        self._latest_at = read_at
        for admin, sink in list(self._sinks.values()):
            sink(self._latest[admin])
