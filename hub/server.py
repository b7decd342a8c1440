"""uvicorn's server, shutting down as ``hub/middleware/drain.py`` describes, with a leaner
WebSocket protocol (``hub/wsprotocol.py``)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import uvicorn

from hub.middleware.drain import Streams
from hub.wsprotocol import WebSocketProtocol

log = logging.getLogger(__name__)


class Server(uvicorn.Server):
    """uvicorn's server, shutting down in the steps of this module within ``grace_s``, its
    WebSockets served by ``hub/wsprotocol.py``."""

    def __init__(self, config: uvicorn.Config, streams: Streams, grace_s: float) -> None:
        config.ws = WebSocketProtocol  # read when the server loads the config
        super().__init__(config)
        self.streams = streams
        streams.connections = self.server_state.connections
        self.grace_s = grace_s

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)  # the lifespan's start-up, then listening
        # The collector's full passes scan every object the hub holds; while 10,000 subscribers
        # connect there were 8-9 of them, 0.6-2.1 s at the longest. Start-up's objects (108,000:
        # modules, routes, schemas) never become garbage: freeze them out of the scans; and a
        # full pass at most once per 100 middle-generation passes, not 10. Both: 1 full pass of
        # 0.35-0.51 s, the same 22 KiB per idle connection (24.5, not 22.0, at 1,000 connections:
        # their handshakes' garbage waits for the rarer full pass); bench/fanout.py --gc-stats.
        gc.collect()
        gc.freeze()
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, 100)

    async def shutdown(self, sockets: Any = None) -> None:
        deadline = time.monotonic() + self.grace_s
        for server in self.servers:
            server.close()  # stop accepting
        await self.streams.drain(timeout_s=min(2.0, self.grace_s / 2))
        # what is left of the grace period, for the requests in flight; then the lifespan
        remaining = max(0.1, deadline - time.monotonic() - 0.5)
        self.config.timeout_graceful_shutdown = remaining  # type: ignore[assignment]  # a float works
        try:
            async with asyncio.timeout(max(0.2, deadline - time.monotonic())):
                await super().shutdown(sockets)
        except TimeoutError:
            log.warning("shutdown grace of %g s spent; exiting now", self.grace_s)
